"""The monitor's per-record handler at a crash: what reaches the state changelog, and when (no services).

A fake table stands for the changelog-backed one: every set is a changelog record whose
delivery is a future; "restarting" builds a new handler on the last delivered state, and the
records after the committed offset are read again, as Faust does after a SIGKILL.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from models import DEMO_REGISTRY
from models.demo_data import generate
from models.registry import ModelRegistry
from monitoring.alerts import Hysteresis
from monitoring.monitor_app import TelemetryHandler, resume_offsets
from monitoring.monitor_core import MonitorCore
from monitoring.monitor_metrics import MonitorMetrics
from monitoring.telemetry import TelemetryBuilder
from monitoring.windows import WindowSpec


class Killed(BaseException):
    """The process dying (SIGKILL) in the middle of a Redis write."""


class FakeTable(dict[str, Any]):
    """Each set sends one changelog record; ``delivered`` is the state a restart restores."""

    def __init__(self, restored: dict[str, Any] | None = None, *, auto_deliver: bool = True) -> None:
        super().__init__(restored or {})
        self.delivered = dict(restored or {})
        self.auto_deliver = auto_deliver
        self.writes: list[asyncio.Future[object]] = []
        self.last_write: asyncio.Future[object] | None = None

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(lambda f: f.exception() is None and self.delivered.__setitem__(key, value))
        if self.auto_deliver:
            fut.set_result(None)
        self.writes.append(fut)
        self.last_write = fut


class FakeSink:
    def __init__(self, kill_at_window: int | None = None) -> None:
        self.windows: dict[int, dict[str, Any]] = {}
        self.kill_at_window = kill_at_window

    def write_window(self, result: dict[str, Any]) -> int:
        if len(self.windows) == self.kill_at_window:
            raise Killed()
        self.windows[result["window_start"]] = result
        return 0

    def heartbeat(self) -> None:
        pass


def _records(n: int) -> list[bytes]:
    entry = ModelRegistry(DEMO_REGISTRY).get("fraud-mlp")
    tb = TelemetryBuilder(pipeline="p", model=entry.name, version=entry.version,
                          reference_profile=entry.reference_profile, feature_names=list(entry.input_spec.names),
                          threshold=entry.decision_threshold)
    return [tb.encode(tb.summarize(cols, None, event_time_ms=cols["event_time"]))
            for cols in (generate(1000, seed=4, start=b * 1000) for b in range(n))]


def _handler(table: FakeTable, sink: FakeSink) -> TelemetryHandler:
    entry = ModelRegistry(DEMO_REGISTRY).get("fraud-mlp")
    core = MonitorCore(windows=WindowSpec(50_000), hysteresis=Hysteresis(2, 2),   # 5 batches a window
                       profiles=lambda m, v: entry.reference_profile)
    return TelemetryHandler(core, table, sink, MonitorMetrics(CollectorRegistry()))  # type: ignore[arg-type]


def test_crash_between_state_and_redis_write_loses_no_window() -> None:
    """Record 5 closes window 0; the process dies while writing it to Redis. After the restart
    (committed offset 3, say) the window must still be written: the record may not count as a
    replay of a state change whose Redis writes never happened."""
    records = _records(11)
    sink = FakeSink(kill_at_window=0)
    table = FakeTable()

    async def first_life() -> None:
        handler = _handler(table, sink)
        for off, value in enumerate(records[:6]):
            await handler.handle(0, off, value)

    with pytest.raises(Killed):
        asyncio.run(first_life())
    assert sink.windows == {}
    sink.kill_at_window = None

    async def second_life() -> None:
        handler = _handler(FakeTable(table.delivered), sink)
        for off, value in enumerate(records[3:], start=3):
            await handler.handle(0, off, value)

    asyncio.run(second_life())
    assert len(sink.windows) == 2, sorted(sink.windows)
    assert [w["batches"] for w in sink.windows.values()] == [5, 5]


def test_record_is_done_only_when_its_state_is_on_the_changelog() -> None:
    """The agent acks a record when ``handle`` returns, and Faust may then commit past it; so
    ``handle`` waits for the changelog write (and writes again when it failed)."""
    records = _records(1)
    table = FakeTable(auto_deliver=False)

    async def run() -> None:
        task = asyncio.ensure_future(_handler(table, FakeSink()).handle(0, 0, records[0]))
        for _ in range(50):
            await asyncio.sleep(0)
        assert not task.done() and len(table.writes) == 1
        table.writes[0].set_exception(RuntimeError("request timed out"))
        for _ in range(50):
            await asyncio.sleep(0)
            if len(table.writes) == 2:
                break
        else:
            await asyncio.sleep(0.5)   # the retry's backoff
        assert not task.done() and len(table.writes) == 2
        table.writes[1].set_result(None)
        await asyncio.wait_for(task, 5)
        assert table.delivered["0"]["offset"] == 0

    asyncio.run(run())


def test_after_recovery_reading_resumes_after_each_restored_state() -> None:
    """The offsets committed when a recovery completes (before Faust seeks to the committed
    ones): the record after each restored state; a partition with no state is left alone."""
    assert resume_offsets({0: {"offset": 7}, 1: None, 3: {"offset": 0}}) == {0: 8, 3: 1}
    assert resume_offsets({}) == {}


def test_a_start_past_the_restored_state_is_reported_as_skipped_records(caplog: pytest.LogCaptureFixture) -> None:
    records = _records(12)
    table = FakeTable()

    async def run() -> tuple[TelemetryHandler, TelemetryHandler]:
        first = _handler(table, FakeSink())
        for off, value in enumerate(records[:8]):
            await first.handle(0, off, value)
        resumed = _handler(FakeTable({"0": table["0"]}), FakeSink())
        await resumed.handle(0, 8, records[8])              # where the recovery commit puts it
        skipped = _handler(FakeTable({"0": table["0"]}), FakeSink())
        await skipped.handle(0, 10, records[10])            # a commit that did not take
        return resumed, skipped

    resumed, skipped = asyncio.run(run())
    assert resumed.metrics.skipped_starts._value.get() == 0
    assert skipped.metrics.skipped_starts._value.get() == 1
    assert "offsets 8..9 were skipped" in caplog.text
