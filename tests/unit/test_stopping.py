"""A SIGTERM ends a scorer process within its budget even while the main thread is stuck in C."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

STUCK_IN_C = textwrap.dedent("""
    import ctypes, sys, threading
    from streamscore.stopping import StopSignals
    stops = StopSignals(budget_s=3.0)
    stops.install()
    stops.on_stop = lambda: print("on_stop", flush=True)
    print("ready", flush=True)
    libc = ctypes.CDLL(None)
    mutex = ctypes.create_string_buffer(64)       # zeroed: PTHREAD_MUTEX_INITIALIZER
    libc.pthread_mutex_lock(mutex)
    libc.pthread_mutex_lock(mutex)                # a C call that never returns, signals or not
""")

STARTING = textwrap.dedent("""
    import time
    from streamscore.stopping import StopSignals, StoppedDuringStartup
    stops = StopSignals(budget_s=30.0)
    try:
        stops.install()
        print("ready", flush=True)
        while True:
            try:                                  # building the scorer: libraries catch broadly
                time.sleep(0.01)                  # (onnxruntime's import turns Exception into ImportError)
            except Exception:
                print("swallowed by the library", flush=True)
    except StoppedDuringStartup:
        print("stopped during startup", flush=True)
""")

# a C extension's module init (onnxruntime's) turns whatever its import raised into an ImportError
CONVERTED = textwrap.dedent("""
    import time
    from streamscore.stopping import StopSignals, build_unless_stopped
    stops = StopSignals(budget_s=30.0)

    def build():
        stops.install()
        print("ready", flush=True)
        try:
            while True:
                time.sleep(0.01)
        except BaseException as exc:
            raise ImportError("initialization failed") from None

    print("built" if build_unless_stopped(stops, build) is not None else "stopped during startup", flush=True)
""")


def _run_until_ready(code: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_sigterm_reaches_the_scorer_and_the_backstop_while_the_main_thread_is_stuck_in_c() -> None:
    proc = _run_until_ready(STUCK_IN_C)
    time.sleep(0.2)                               # let the main thread enter the C call
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    took = time.monotonic() - sent
    assert "on_stop" in out                       # the scorer was told at once, from the watcher thread
    assert proc.returncode == 0                   # and the backstop ended the process cleanly
    assert took < 3.0 + 5.0, took                 # within its budget (slack for a busy machine)
    assert "stop took longer than stop_timeout_s=3s" in err
    assert "pthread_mutex_lock" in err or "line 11" in err   # the stuck frame's stack was dumped


def test_sigterm_before_the_scorer_exists_is_a_clean_startup_stop() -> None:
    proc = _run_until_ready(STARTING)
    proc.send_signal(signal.SIGTERM)
    out, _err = proc.communicate(timeout=30)
    assert "stopped during startup" in out and "swallowed" not in out
    assert proc.returncode == 0


def test_a_stop_that_a_library_turned_into_its_own_error_is_still_a_clean_startup_stop() -> None:
    """Seen under a CPU hog: a scorer child SIGTERMed while importing onnxruntime exited 2 with
    "onnxruntime is not installed"."""
    proc = _run_until_ready(CONVERTED)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert "stopped during startup" in out, (out, err)
    assert proc.returncode == 0


def test_a_start_up_error_without_a_stop_is_still_an_error() -> None:
    import pytest

    from streamscore.stopping import StopSignals, build_unless_stopped

    def fail() -> None:
        raise ImportError("onnxruntime is not installed")

    with pytest.raises(ImportError):
        build_unless_stopped(StopSignals(budget_s=30.0), fail)


def test_a_second_signal_does_not_arm_a_second_backstop() -> None:
    from streamscore.stopping import StopSignals

    calls: list[int] = []
    stops = StopSignals(budget_s=600.0)
    stops.on_stop = lambda: calls.append(1)
    assert stops.request(signal.SIGTERM) and stops.request(signal.SIGINT)
    first = stops.backstop
    assert first is not None and calls == [1, 1]
    stops.request(signal.SIGTERM)
    assert stops.backstop is first
    first.cancel()
