"""How a scorer process hears SIGTERM/SIGINT and makes sure it ends within ``stop_timeout_s``.

Python runs a signal handler only on the main thread, between two bytecodes. A main thread
inside a C call never gets there: a ``consume()`` whose rebalance callback waits on a group
coordinator that was just killed, say. A stop must not depend on it, so:

1. ``StopSignals.install()`` (on the main thread, before anything is built) installs the
   Python handler and points ``signal.set_wakeup_fd`` at a pipe. The interpreter's C-level
   handler writes the signal number into that pipe the moment the signal arrives, whatever
   the main thread is doing.
2. A daemon thread reads the pipe and, on the first SIGTERM/SIGINT, arms the backstop (3)
   and calls the ``on_stop`` the caller gave (``Scorer.stop``: set an event, signal-safe).
   The Python handler does the same when the main thread gets to it; whichever comes first
   acts, the other is a no-op. During startup, before there is a scorer to stop, the Python
   handler raises ``StoppedDuringStartup`` on the main thread (nothing consumed yet).
3. The backstop: a timer that, ``stop_timeout_s - 0.5`` s after the stop was asked for,
   dumps every thread's stack and exits 0. Every blocking call of the scorer is bounded to
   fit the budget; this is for the call that still outlives it. Nothing is lost that way:
   offsets move only after outputs are acknowledged (or committed in a transaction), so
   whatever was not committed is replayed by the partitions' next owner.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import threading
from types import FrameType
from typing import Callable, TypeVar

log = logging.getLogger("streamscore")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
T = TypeVar("T")


class StoppedDuringStartup(BaseException):
    """SIGTERM/SIGINT arrived before the scorer was built. A BaseException, as KeyboardInterrupt
    is: raised wherever the main thread is (an ``import onnxruntime`` inside a model loader's
    ``except Exception``, say), it must not turn into that code's error."""


def arm_stop_backstop(budget_s: float) -> threading.Timer:
    """Exit 0 (stacks first) if the process is still here ``budget_s`` from now."""
    def hard_exit() -> None:
        log.error("stop took longer than stop_timeout_s=%.0fs: exiting without a clean close "
                  "(uncommitted work is replayed by the next owner); stacks follow", budget_s)
        faulthandler.dump_traceback(all_threads=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    timer = threading.Timer(max(0.5, budget_s - 0.5), hard_exit)
    timer.daemon = True
    timer.start()
    return timer


class StopSignals:
    """Steps 1-3 of the module docstring; ``on_stop`` is set once the scorer exists."""

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        self.on_stop: Callable[[], None] | None = None
        self.backstop: threading.Timer | None = None
        self._lock = threading.RLock()       # a second signal can interrupt the first handler

    def install(self) -> None:
        """Main thread only (``signal.signal`` and ``set_wakeup_fd`` require it)."""
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_main_thread)
        r, w = os.pipe()
        os.set_blocking(w, False)          # the C handler must never block on a full pipe
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        threading.Thread(target=self._watch, args=(r,), name="stop-signals", daemon=True).start()

    def request(self, signum: int) -> bool:
        """Arm the backstop and stop the scorer, once; False when there is no scorer yet."""
        with self._lock:
            if self.backstop is None:
                log.info("signal %d: finishing in-flight batches", signum)
                self.backstop = arm_stop_backstop(self.budget_s)
            on_stop = self.on_stop
        if on_stop is None:
            return False
        on_stop()
        return True

    def _on_main_thread(self, signum: int, _frame: FrameType | None) -> None:
        if not self.request(signum):
            raise StoppedDuringStartup()      # nothing consumed yet: nothing to finish

    def _watch(self, fd: int) -> None:
        while True:
            for signum in os.read(fd, 64):
                if signum in STOP_SIGNALS:
                    self.request(signum)


def build_unless_stopped(stops: StopSignals, build: Callable[[], T]) -> T | None:
    """``build()`` (installing ``stops`` is part of it), or None when a stop signal came while it ran.

    The signal raises ``StoppedDuringStartup`` wherever the main thread is, but a C extension's
    module init can turn it into its own error (onnxruntime's, imported by a model loader, becomes
    an ``ImportError`` and then "onnxruntime is not installed"). So once a stop was asked for, an
    error while building is the stop's doing, not a failed start: exit 0, as for a clean stop."""
    try:
        return build()
    except StoppedDuringStartup:
        return None
    except Exception as exc:
        if stops.backstop is None:      # no stop asked for: a real start-up error
            raise
        log.info("a stop while starting interrupted it (%s: %s)", type(exc).__name__, exc)
        return None
