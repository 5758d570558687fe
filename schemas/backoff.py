"""Capped exponential waits for a service that does not answer (the schema registry, a lookup store)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Backoff:
    """One outage: ``pause()`` waits the current delay (doubling up to ``max_s``) and returns False
    once ``stop`` is set; ``started`` is when the first failure was seen (None: no failure yet)."""

    def __init__(self, stop: threading.Event, *, max_s: float, first_s: float = 0.05,
                 on_wait: Callable[[float], None] | None = None) -> None:
        self.stop = stop
        self.max_s = max_s
        self.delay = first_s
        self.on_wait = on_wait
        self.started: float | None = None

    def failed(self) -> bool:
        """Note a failure; True on the first one of the outage (the moment to log it)."""
        first = self.started is None
        if first:
            self.started = time.monotonic()
        return first

    def waited_s(self) -> float:
        return 0.0 if self.started is None else time.monotonic() - self.started

    def pause(self) -> bool:
        if self.on_wait is not None:
            self.on_wait(self.delay)
        stopped = self.stop.wait(self.delay)
        self.delay = min(self.delay * 2, self.max_s)
        return not stopped
