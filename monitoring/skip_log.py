"""Warnings for records the monitor skips, bounded in volume.

A topic written in a format the monitor cannot read (the wrong serializer, another registry)
makes every record a skip: one warning line each buried the first one under tens of thousands
(a walk of the README met 30,000). Per stream, the first ``first`` skips are logged whole; after
that, at most one line per ``interval_s`` says how many more were skipped and the newest reason.
Every skip is counted in ``streamscore_monitor_skipped_records{stream}`` whether logged or not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


class SkipCounter(Protocol):
    def labels(self, stream: str) -> "SkipCounter": ...

    def inc(self, amount: float = 1) -> None: ...


@dataclass
class _Stream:
    seen: int = 0
    held: int = 0                 # skips since the last line written
    last_reason: str = ""
    last_line: float = field(default=float("-inf"))


class SkipLog:
    def __init__(self, log: logging.Logger, counter: SkipCounter, *, first: int = 5, interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.log, self.counter, self.first, self.interval_s, self.clock = log, counter, first, interval_s, clock
        self._streams: dict[str, _Stream] = {}

    def skip(self, stream: str, where: str, reason: object) -> None:
        """One skipped record of ``stream`` at ``where`` (topic/partition/offset), for ``reason``."""
        self.counter.labels(stream).inc()
        s = self._streams.setdefault(stream, _Stream())
        s.seen += 1
        if s.seen <= self.first:
            tail = "" if s.seen < self.first else (
                f" (further skips of {stream} are summed up every {self.interval_s:g} s; all are counted in "
                "streamscore_monitor_skipped_records)")
            self.log.warning("skipping %s record at %s: %s%s", stream, where, reason, tail)
            s.last_line = self.clock()
            return
        s.held += 1
        s.last_reason = f"at {where}: {reason}"
        self.flush(stream)

    def flush(self, stream: str | None = None, *, force: bool = False) -> None:
        """Write the summary line of ``stream`` (every stream when None) if one is due (or ``force``)."""
        now = self.clock()
        for name in [stream] if stream is not None else list(self._streams):
            s = self._streams.get(name)
            if s is None or not s.held or (not force and now - s.last_line < self.interval_s):
                continue
            self.log.warning("skipped %d more %s records (%d in all); the newest %s",
                             s.held, name, s.seen, s.last_reason)
            s.held, s.last_line = 0, now
