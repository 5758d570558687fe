"""Who produces a scored batch: the sink thread, or the source thread that scored it.

At low and moderate load the source thread scores small batches itself (``Scorer._dispatch``);
producing them there too saves handing each one to the sink thread. Order is kept only if every
earlier batch is already produced, so the gate counts batches, each counter with one writer:

- ``from_source``: batches the source thread put in the sink queue (its writer: the source thread);
- ``from_model``: batches the model thread put there (the model thread);
- ``done``: batches the sink thread finished (the sink thread).

Equal sums (``from_source + from_model == done``) mean the sink stage holds nothing. ``lock``
serialises producing and the commit protocol's sink-side calls between the two threads.

1. The sink thread takes a batch from its queue and, under ``lock``, produces it, calls
   ``finished()``, then serves the commit protocol (``tick``, every 20 ms at the latest).
2. The source thread, holding a batch it scored itself, calls ``emit_inline(step)``: it waits
   up to ``wait_s`` for ``lock`` and for the sink stage to hold nothing, then runs ``step`` under
   ``lock`` and returns True. Past ``wait_s`` it returns False without running ``step``, and the
   caller queues the batch (``queued_by_source()`` first, then the put).

Why wait rather than queue at once: the sink thread holds ``lock`` for each ``tick``, so a batch
that finds it busy for a moment went to the sink queue, and every later batch had to follow it
there until the sink stage drained. Producing on the sink thread while the source thread decodes
and scores the next batch means two threads taking turns at the GIL on two busy cores: a 2-ms
emit took 10-50 ms, the sink fell behind, and runs of 70 batches went that way (10k events/s,
the p99 of those seconds 80-170 ms). Waiting (at most ``wait_s``) keeps one thread doing the work.
The bound keeps a slow commit (a transaction's, in exactly-once mode) from stalling consumption.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class SinkGate:
    def __init__(self, wait_s: float) -> None:
        if wait_s < 0:
            raise ValueError(f"wait_s must be >= 0, got {wait_s}")
        self.wait_s = wait_s
        self.lock = threading.Lock()
        self._drained = threading.Condition(self.lock)
        self.from_source = 0
        self.from_model = 0
        self.done = 0

    def holds_nothing(self) -> bool:
        """The sink stage holds no batch (read without the lock: exact only for the source thread,
        the one writer that could add one after the read)."""
        return self.from_source + self.from_model == self.done

    def queued_by_source(self) -> None:
        self.from_source += 1

    def queued_by_model(self) -> None:
        self.from_model += 1

    def finished(self) -> None:
        """The sink thread finished a batch; the caller holds ``lock``."""
        self.done += 1
        self._drained.notify()

    def emit_inline(self, step: Callable[[], None]) -> bool:
        """Run ``step`` under ``lock`` once the sink stage holds nothing, waiting ``wait_s`` at most
        (step 2 of the module doc); False: nothing was run."""
        end = time.monotonic() + self.wait_s
        if not self.lock.acquire(timeout=self.wait_s):
            return False
        try:
            if not self._drained.wait_for(self.holds_nothing, timeout=max(0.0, end - time.monotonic())):
                return False
            step()
        finally:
            self.lock.release()
        return True
