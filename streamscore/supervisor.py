"""``serve --processes N``: N scoring children kept running until the parent is asked to stop.

Invariants:
- A child that exits abnormally (non-zero code or killed by a signal) while no stop was
  asked is started again with the same argv (the same instance name, so the same
  ``transactional.id`` fences its predecessor), after a backoff that doubles on every quick
  failure (``backoff_s`` .. ``max_backoff_s``) and starts over once a child ran ``stable_s``.
- A child that exits with 0 by itself (``--max-seconds``) is done and is not restarted.
- SIGTERM / SIGINT to the parent are forwarded to every running child; no child is started
  after that, and the parent returns once all have exited (a child still running
  ``stop_grace_s`` after the stop is SIGKILLed). The parent's code is the worst child's.
- A child that dies of the very signal forwarded to it stopped as asked: it was still starting
  (a scorer's handlers are installed once its interpreter has imported them, seconds after
  the spawn on a busy machine) and had consumed nothing. It counts as a clean exit (0).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

log = logging.getLogger(__name__)


class Process(Protocol):
    pid: int

    def poll(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...

    def wait(self, timeout: float | None = None) -> int: ...


Spawn = Callable[[Sequence[str]], Process]


def exit_reason(code: int) -> str:
    """``exit 3`` or the signal's name (``SIGKILL``) for a negative Popen return code."""
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit {code}"


def shell_code(code: int) -> int:
    """A Popen return code as a shell exit status (a signal ``n`` is 128 + n)."""
    return 128 - code if code < 0 else code


def next_backoff(previous: float, ran_s: float, *, initial: float, maximum: float, stable_s: float) -> float:
    """The wait before restarting a child that failed after running ``ran_s`` seconds."""
    if ran_s >= stable_s or previous <= 0:
        return initial
    return min(maximum, previous * 2)


@dataclass
class _Child:
    name: str
    argv: list[str]
    proc: Process | None = None
    started_at: float = 0.0
    backoff: float = 0.0
    restart_at: float | None = None      # when a failed child is due to start again
    last_code: int | None = None
    restarts: int = 0
    forwarded: int | None = None         # the stop signal sent to the running process


@dataclass
class Supervisor:
    children: list[tuple[str, list[str]]]
    spawn: Spawn = field(default=lambda argv: subprocess.Popen(list(argv)))
    on_restart: Callable[[str, str], None] = lambda _name, _reason: None
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    stable_s: float = 60.0
    stop_grace_s: float = 60.0
    poll_s: float = 0.2

    def __post_init__(self) -> None:
        self._kids = [_Child(name, list(argv)) for name, argv in self.children]
        self._stop = threading.Event()
        self._stop_at: float | None = None
        self._lock = threading.RLock()   # request_stop may run in a signal handler inside run()'s lock

    @property
    def restarts(self) -> dict[str, int]:
        return {k.name: k.restarts for k in self._kids}

    def pids(self) -> dict[str, int | None]:
        return {k.name: (k.proc.pid if k.proc is not None and k.proc.poll() is None else None) for k in self._kids}

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """Forward ``signum`` to every running child; start nothing from now on (safe from a signal handler)."""
        with self._lock:
            if self._stop_at is None:
                self._stop_at = time.monotonic()
            self._stop.set()
            for k in self._kids:
                if k.proc is not None and k.proc.poll() is None:
                    k.forwarded = signum
                    k.proc.send_signal(signum)

    def _start(self, k: _Child) -> None:
        k.proc = self.spawn(k.argv)
        k.started_at = time.monotonic()
        k.restart_at = None
        k.forwarded = None
        log.info("started %s (pid %d)", k.name, k.proc.pid)

    def _reap(self, k: _Child, now: float) -> None:
        """A child that just exited: done, or due for a restart after its backoff."""
        assert k.proc is not None
        code = k.proc.poll()
        if code is None:
            return
        k.proc, k.last_code = None, code
        if k.forwarded is not None and code == -k.forwarded:
            log.info("%s stopped by %s while starting (before its handlers were installed)",
                     k.name, exit_reason(code))
            k.last_code = 0
            return
        if code == 0 or self._stop.is_set():
            log.info("%s exited (%s)", k.name, exit_reason(code))
            return
        k.backoff = next_backoff(k.backoff, now - k.started_at, initial=self.backoff_s,
                                 maximum=self.max_backoff_s, stable_s=self.stable_s)
        k.restart_at = now + k.backoff
        log.warning("%s exited abnormally (%s); restarting in %.1fs", k.name, exit_reason(code), k.backoff)

    def run(self) -> int:
        """Start every child and supervise until all are done; the worst exit code as a shell status."""
        with self._lock:
            for k in self._kids:
                self._start(k)
        while True:
            now = time.monotonic()
            with self._lock:
                for k in self._kids:
                    if k.proc is not None:
                        self._reap(k, now)
                    if k.proc is None and k.restart_at is not None and now >= k.restart_at and not self._stop.is_set():
                        reason = exit_reason(k.last_code or 0)
                        self._start(k)
                        k.restarts += 1
                        self.on_restart(k.name, reason)
                running = [k for k in self._kids if k.proc is not None]
                pending = [k for k in self._kids if k.restart_at is not None and not self._stop.is_set()]
                if not running and not pending:
                    break
                if self._stop_at is not None and now - self._stop_at > self.stop_grace_s:
                    for k in running:
                        log.error("%s still running %.0fs after the stop: SIGKILL", k.name, self.stop_grace_s)
                        assert k.proc is not None
                        k.proc.kill()
            time.sleep(self.poll_s)
        return max((shell_code(k.last_code or 0) for k in self._kids), default=0)
