"""Progress of a backfill: events done / total, events/s, ETA."""

from __future__ import annotations

import sys
import time
from typing import Any, Callable


class Progress:
    """events done / total, events/s and ETA: one redrawn line on a terminal, a line every 5 s otherwise."""

    def __init__(self, *, total: int, done: int, emit: Callable[[str, bool], None] | None) -> None:
        self.total, self.done, self.start_done = total, done, done
        self.t0 = time.monotonic()
        self.last = 0.0
        self.emit = emit

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.emit is not None and now - self.last >= 0.5:
            self.last = now
            self.emit(self.line(now), False)

    def line(self, now: float) -> str:
        took = max(now - self.t0, 1e-9)
        rate = (self.done - self.start_done) / took
        left = max(0, self.total - self.done)
        eta = left / rate if rate > 0 else float("inf")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta_s = "--" if eta == float("inf") else f"{eta:,.0f}s"
        return f"backfill {self.done:,}/{self.total:,} events ({pct:5.1f}%)  {rate:,.0f} events/s  ETA {eta_s}"

    def finish(self) -> None:
        if self.emit is not None:
            self.emit(self.line(time.monotonic()), True)


def terminal_progress(stream: Any = None) -> Callable[[str, bool], None]:
    """A progress printer for ``stream`` (stderr): redraws in place on a TTY, else a line every 5 s."""
    out = stream or sys.stderr
    tty = out.isatty()
    last = [0.0]

    def emit(line: str, final: bool) -> None:
        if tty:
            out.write("\r" + line + ("\n" if final else ""))
            out.flush()
        elif final or time.monotonic() - last[0] >= 5.0:
            last[0] = time.monotonic()
            print(line, file=out, flush=True)

    return emit
