"""``serve --processes N``'s supervisor with real child processes (small Python scripts, no broker)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from monitoring.metrics import SupervisorMetrics
from streamscore.supervisor import Supervisor, exit_reason, next_backoff, shell_code

# Fails with 3 on its first run (no marker yet); later runs wait for SIGTERM and exit 0.
FLAKY = """
import pathlib, signal, sys, time
marker = pathlib.Path(sys.argv[1])
if not marker.exists():
    marker.write_text("x")
    sys.exit(3)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
end = time.monotonic() + 60
while time.monotonic() < end:
    time.sleep(0.05)
sys.exit(4)
"""
# Serves until SIGTERM / SIGINT (exit 0); ``<argv[1]>.<pid>`` says its handlers are installed.
SERVE = """
import os, pathlib, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
pathlib.Path(f"{sys.argv[1]}.{os.getpid()}").write_text("ready")
time.sleep(60)
sys.exit(4)
"""


def _wait(cond, timeout: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def _run(sup: Supervisor) -> tuple[threading.Thread, list[int]]:
    out: list[int] = []
    t = threading.Thread(target=lambda: out.append(sup.run()), daemon=True)
    t.start()
    return t, out


def test_abnormal_exit_is_restarted_and_counted_then_stop_forwards(tmp_path: Path) -> None:
    reg = CollectorRegistry()
    metrics = SupervisorMetrics(registry=reg, instance="sv")
    sup = Supervisor([("c-0", [sys.executable, "-c", FLAKY, str(tmp_path / "m0")]),
                      ("c-1", [sys.executable, "-c", SERVE, str(tmp_path / "ready")])],
                     on_restart=metrics.child_restarted, backoff_s=0.1)
    t, out = _run(sup)
    assert _wait(lambda: sup.restarts["c-0"] == 1 and sup.pids()["c-0"] is not None)
    assert sup.restarts["c-1"] == 0
    assert reg.get_sample_value("streamscore_child_restarts_total",
                                {"instance": "sv", "child": "c-0", "reason": "exit 3"}) == 1.0
    time.sleep(0.5)
    assert t.is_alive(), "the parent exits only when asked"
    sup.request_stop(signal.SIGTERM)
    t.join(20)
    assert out == [0]
    assert sup.pids() == {"c-0": None, "c-1": None}


def test_killed_child_comes_back_and_clean_exits_are_final(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    sup = Supervisor([("c-0", [sys.executable, "-c", SERVE, str(ready)]),
                      ("c-1", [sys.executable, "-c", "import sys; sys.exit(0)"])], backoff_s=0.1)
    t, out = _run(sup)
    assert _wait(lambda: sup.pids()["c-0"] is not None)
    first = sup.pids()["c-0"]
    assert first is not None and _wait(lambda: Path(f"{ready}.{first}").exists())
    os.kill(first, signal.SIGKILL)
    assert _wait(lambda: sup.pids()["c-0"] not in (None, first))
    second = sup.pids()["c-0"]
    assert _wait(lambda: Path(f"{ready}.{second}").exists())
    assert sup.restarts == {"c-0": 1, "c-1": 0}     # c-1 exited 0: done, never restarted
    sup.request_stop(signal.SIGINT)
    t.join(20)
    assert out == [0]


def test_stop_ends_a_child_waiting_for_its_restart_and_reports_its_failure(tmp_path: Path) -> None:
    sup = Supervisor([("c-0", [sys.executable, "-c", "import sys; sys.exit(5)"])], backoff_s=30.0)
    t, out = _run(sup)
    assert _wait(lambda: sup.pids()["c-0"] is None and t.is_alive())
    time.sleep(0.3)
    sup.request_stop()
    t.join(10)
    assert out == [5] and sup.restarts == {"c-0": 0}


def test_a_child_stopped_while_still_starting_is_a_clean_stop_not_a_failure(tmp_path: Path) -> None:
    """The forwarded SIGTERM reaches a child before it installed its handlers (a restarted scorer
    still importing on a busy machine): it dies of SIGTERM, which is the stop asked for, so the
    parent exits 0, not 143. A SIGTERM from elsewhere, with no stop asked, is still a failure."""
    started = tmp_path / "started"
    slow = f"import pathlib, sys, time; pathlib.Path({str(started)!r} + '.' + str(__import__('os').getpid())).touch(); time.sleep(60)"
    sup = Supervisor([("c-0", [sys.executable, "-c", slow]),
                      ("c-1", [sys.executable, "-c", SERVE, str(tmp_path / "ready")])], backoff_s=0.1)
    t, out = _run(sup)
    assert _wait(lambda: sup.pids()["c-0"] is not None)
    first = sup.pids()["c-0"]
    assert first is not None and _wait(lambda: Path(f"{started}.{first}").exists())
    os.kill(first, signal.SIGTERM)                   # not from the supervisor: restarted
    assert _wait(lambda: sup.pids()["c-0"] not in (None, first))
    assert sup.restarts["c-0"] == 1
    second = sup.pids()["c-0"]
    c1 = sup.pids()["c-1"]
    assert second is not None and _wait(lambda: Path(f"{started}.{second}").exists())
    assert c1 is not None and _wait(lambda: Path(f"{tmp_path / 'ready'}.{c1}").exists())
    sup.request_stop(signal.SIGTERM)                 # c-0 has no handler: dies of it
    t.join(20)
    assert out == [0]
    assert sup.restarts == {"c-0": 1, "c-1": 0}


def test_backoff_doubles_on_quick_failures_and_resets_after_a_stable_run() -> None:
    kw = dict(initial=1.0, maximum=8.0, stable_s=60.0)
    delays, d = [], 0.0
    for _ in range(6):
        d = next_backoff(d, 2.0, **kw)
        delays.append(d)
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert next_backoff(8.0, 61.0, **kw) == 1.0


def test_exit_reasons_and_shell_codes() -> None:
    assert exit_reason(3) == "exit 3" and exit_reason(-9) == "SIGKILL"
    assert shell_code(-15) == 143 and shell_code(2) == 2
