"""When to close a micro-batch.

A batch closes on the first of: ``max_size`` rows; ``max_wait`` since its FIRST row
arrived; by need — the caller has drained every row already fetched and the next stage is
idle, so waiting could only add latency, never make the next stage cheaper (at high load
the next stage is busy, and batches keep growing to amortise per-batch costs; off unless
``close_by_need``); or the latency rule — when the rows already waiting would miss the latency
target if we waited for more. The rule uses two running estimates: the arrival rate
(rows/s) and the model's cost (a fixed part plus a per-row part, fitted from observed
batches). Waiting is worth it only while the oldest row's age, plus the time to gather
the rows we expect next, plus the model time for the bigger batch, stays inside the
target.

The batcher is plain logic with injected time: it never sleeps and never touches Kafka.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

CloseReason = Literal["size", "wait", "need", "latency", "flush"]


@dataclass
class _Ewma:
    alpha: float
    value: float | None = None

    def update(self, x: float) -> float:
        self.value = x if self.value is None else self.value + self.alpha * (x - self.value)
        return self.value


@dataclass
class BatchStats:
    """What the batcher reports about itself (exported as metrics by the caller)."""

    batches: int = 0
    rows: int = 0
    closed_by: dict[str, int] = field(default_factory=lambda: {"size": 0, "wait": 0, "need": 0, "latency": 0, "flush": 0})
    last_wait_s: float = 0.0


class AdaptiveBatcher:
    def __init__(
        self,
        *,
        max_size: int,
        max_wait_s: float,
        latency_target_s: float | None = None,
        overhead_s: float = 0.001,
        close_by_need: bool = False,
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be >= 1")
        if max_wait_s < 0:
            raise ValueError("max_wait_s must be >= 0")
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self.latency_target_s = latency_target_s
        self.overhead_s = overhead_s         # encode/produce/ack time not covered by the model fit
        self.close_by_need = close_by_need
        self._rows = 0
        self._first_at: float | None = None
        self._oldest_age_at_first = 0.0
        self._rate = _Ewma(0.2)              # rows per second
        self._last_arrival: float | None = None
        self._obs: deque[tuple[int, float]] = deque(maxlen=64)   # (rows, seconds) of recent model calls
        self._cost: tuple[float, float] = (0.0, 0.0)              # fitted (fixed s, per-row s)
        self.stats = BatchStats()

    # -- arrivals ----------------------------------------------------------------------
    def add(self, rows: int, now: float, *, oldest_age_s: float = 0.0) -> None:
        """``rows`` arrived at ``now``; ``oldest_age_s`` is how old the oldest of them already is."""
        if rows <= 0:
            return
        if self._last_arrival is not None and now > self._last_arrival:
            self._rate.update(rows / (now - self._last_arrival))
        self._last_arrival = now
        if self._first_at is None:
            self._first_at = now
            self._oldest_age_at_first = max(0.0, oldest_age_s)
        self._rows += rows

    @property
    def rows(self) -> int:
        return self._rows

    # -- the closing rules ---------------------------------------------------------------
    def should_close(self, now: float, *, drained: bool = False, next_idle: bool = False) -> CloseReason | None:
        """Why the open batch closes now, or None. ``drained``: the caller holds no fetched row
        it has not added; ``next_idle``: the stage the batch goes to has nothing to do."""
        if self._rows == 0 or self._first_at is None:
            return None
        if self._rows >= self.max_size:
            return "size"
        waited = now - self._first_at
        if waited >= self.max_wait_s:
            return "wait"
        if self.close_by_need and drained and next_idle:
            return "need"
        if self.latency_target_s is not None and self._would_miss_target(now):
            return "latency"
        return None

    def _would_miss_target(self, now: float) -> bool:
        assert self._first_at is not None
        age = self._oldest_age_at_first + (now - self._first_at)
        rate = self._rate.value or 0.0
        # Rows we would gain by waiting one more slice of time; no rate estimate -> be prompt.
        slice_s = min(self.max_wait_s - (now - self._first_at), 0.001)
        expected = self._rows + rate * slice_s
        finish = age + slice_s + self.model_cost(int(min(expected, self.max_size))) + self.overhead_s
        return finish > self.latency_target_s  # type: ignore[operator]

    def time_left(self, now: float) -> float:
        """How long the caller may wait for more rows before asking again."""
        if self._first_at is None:
            return self.max_wait_s
        left = self.max_wait_s - (now - self._first_at)
        if self.latency_target_s is not None:
            age = self._oldest_age_at_first + (now - self._first_at)
            budget = self.latency_target_s - age - self.model_cost(self.max_size) - self.overhead_s
            left = min(left, budget)
        return max(0.0, left)

    def cost_fit(self) -> tuple[float, float]:
        """The fitted model cost: (fixed seconds per batch, seconds per row)."""
        return self._cost

    def model_cost(self, rows: int) -> float:
        fixed, per_row = self._cost
        return fixed + per_row * rows

    # -- bookkeeping ---------------------------------------------------------------------
    def close(self, now: float, reason: CloseReason) -> int:
        """Close the open batch; returns its size and resets for the next one."""
        size = self._rows
        self.stats.batches += 1
        self.stats.rows += size
        self.stats.closed_by[reason] = self.stats.closed_by.get(reason, 0) + 1
        self.stats.last_wait_s = 0.0 if self._first_at is None else now - self._first_at
        self._rows = 0
        self._first_at = None
        self._oldest_age_at_first = 0.0
        return size

    def observe_model(self, rows: int, seconds: float) -> None:
        """Feed back one model call's duration; the cost line is refitted over recent calls."""
        if rows <= 0 or seconds < 0:
            return
        self._obs.append((rows, seconds))
        n = len(self._obs)
        xs = [r for r, _ in self._obs]
        ys = [t for _, t in self._obs]
        mx, my = sum(xs) / n, sum(ys) / n
        var = sum((x - mx) ** 2 for x in xs)
        if var > 0:
            slope = max(0.0, sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var)
            self._cost = (max(0.0, my - slope * mx), slope)
        else:  # one batch size seen so far: attribute it all to rows (conservative for bigger batches)
            self._cost = (0.0, my / mx)
