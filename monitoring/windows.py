"""Windows over telemetry (pure logic): assignment, merging by addition, closing by watermark.

A window is identified by its start (event-time ms, or an event index for count
windows). Accumulators are plain JSON-safe dicts so they can live in a Faust table.
Invariant: merging is addition, so the result of a window does not depend on the order
its batches arrived in, only on the set of batches (the monitor dedupes replays).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["time", "count"]


@dataclass(frozen=True)
class WindowSpec:
    """Tumbling (``slide`` = None) or sliding windows of ``size`` ms (``time``) or events (``count``)."""

    size: int
    kind: Kind = "time"
    slide: int | None = None
    lateness: int = 0

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ValueError(f"window size must be > 0, got {self.size}")
        if self.slide is not None and not 0 < self.slide <= self.size:
            raise ValueError(f"slide must be in (0, size], got {self.slide}")
        if self.kind not in ("time", "count"):
            raise ValueError(f"window kind must be 'time' or 'count', got {self.kind!r}")

    def assign(self, position: int) -> list[int]:
        """Starts of every window containing ``position`` (one for tumbling windows)."""
        step = self.slide or self.size
        last = position - position % step
        starts = []
        start = last
        while start > position - self.size:
            starts.append(start)
            start -= step
        return sorted(starts)

    def end(self, start: int) -> int:
        return start + self.size

    def closable(self, start: int, watermark: int) -> bool:
        """A window closes once the watermark (max position seen minus lateness) reaches its end."""
        return self.end(start) <= watermark - self.lateness


def empty_accumulator() -> dict[str, Any]:
    return {"n": 0, "n_sampled": 0, "batches": 0, "features": {}, "categoricals": {}, "score": [], "shadow": {}}


def _add_lists(a: list[int], b: list[int]) -> list[int]:
    if not a:
        return list(b)
    if len(a) != len(b):
        raise ValueError(f"cannot merge histograms of {len(a)} and {len(b)} bins")
    return [x + y for x, y in zip(a, b)]


def merge(acc: dict[str, Any], summary: Mapping[str, Any]) -> dict[str, Any]:
    """A new accumulator: ``acc`` plus one telemetry summary (counts add)."""
    out = {
        "n": acc["n"] + int(summary["n"]),
        "n_sampled": acc["n_sampled"] + int(summary.get("n_sampled", summary["n"])),
        "batches": acc["batches"] + 1,
        "features": dict(acc["features"]),
        "categoricals": dict(acc["categoricals"]),
        "score": _add_lists(acc["score"], list(summary.get("score_counts") or [])) if summary.get("score_counts") else acc["score"],
        "shadow": dict(acc["shadow"]),
    }
    for name, counts in summary.get("feature_counts", {}).items():
        out["features"][name] = _add_lists(out["features"].get(name, []), list(counts))
    for name, counts in summary.get("categorical_counts", {}).items():
        out["categoricals"][name] = _add_lists(out["categoricals"].get(name, []), list(counts))
    shadow = summary.get("shadow")
    if shadow:
        key = shadow["model"]
        prev = out["shadow"].get(key, {"version": shadow["version"], "n_pairs": 0, "agree": 0, "diff": []})
        out["shadow"][key] = {"version": shadow["version"], "n_pairs": prev["n_pairs"] + int(shadow["n_pairs"]),
                              "agree": prev["agree"] + int(shadow["agree"]),
                              "diff": _add_lists(prev["diff"], list(shadow["diff_counts"]))}
    return out
