"""The sink gate: the source thread produces a batch it scored itself once the sink stage is drained."""

from __future__ import annotations

import threading

import pytest

from consumers.sink_gate import SinkGate


def _in_thread(fn: object) -> threading.Thread:
    t = threading.Thread(target=fn, daemon=True)   # type: ignore[arg-type]
    t.start()
    return t


def test_a_batch_waits_out_the_sink_threads_tick_and_is_emitted_inline() -> None:
    gate = SinkGate(wait_s=10.0)
    holding, release = threading.Event(), threading.Event()
    order: list[str] = []

    def tick() -> None:             # the sink thread serving the commit protocol under the lock
        with gate.lock:
            holding.set()
            release.wait(10)
            order.append("tick")

    t = _in_thread(tick)
    assert holding.wait(10)
    threading.Timer(0.05, release.set).start()
    assert gate.emit_inline(lambda: order.append("emit")), "the tick was short: no hand-over"
    t.join(10)
    assert order == ["tick", "emit"]


def test_a_batch_is_emitted_only_after_every_earlier_batch_the_sink_held() -> None:
    gate = SinkGate(wait_s=10.0)
    order: list[str] = []
    gate.queued_by_model()          # an earlier batch is in the sink queue
    assert not gate.holds_nothing()

    def sink() -> None:
        with gate.lock:
            order.append("earlier")
            gate.finished()

    threading.Timer(0.05, lambda: _in_thread(sink)).start()
    assert gate.emit_inline(lambda: order.append("this one"))
    assert order == ["earlier", "this one"] and gate.holds_nothing()


def test_past_the_wait_nothing_is_run_and_the_caller_queues_the_batch() -> None:
    ran: list[str] = []
    busy = SinkGate(wait_s=0.05)
    busy.lock.acquire()             # a slow commit holds the lock past the wait
    try:
        assert not busy.emit_inline(lambda: ran.append("x"))
    finally:
        busy.lock.release()
    behind = SinkGate(wait_s=0.05)
    behind.queued_by_source()       # a batch the sink thread never finishes within the wait
    assert not behind.emit_inline(lambda: ran.append("x"))
    assert ran == [] and not behind.lock.locked(), "the lock is given back when the wait runs out"


def test_an_idle_gate_runs_the_step_at_once_and_a_negative_wait_is_refused() -> None:
    gate = SinkGate(wait_s=0.0)
    ran: list[int] = []
    assert gate.emit_inline(lambda: ran.append(1)) and ran == [1]
    with pytest.raises(ValueError, match="wait_s"):
        SinkGate(wait_s=-1)
