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
from monitoring.monitor_app import TelemetryHandler
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


def _handler(table: FakeTable, sink: FakeSink, seeks: list[tuple[int, int]] | None = None) -> TelemetryHandler:
    entry = ModelRegistry(DEMO_REGISTRY).get("fraud-mlp")
    core = MonitorCore(windows=WindowSpec(50_000), hysteresis=Hysteresis(2, 2),   # 5 batches a window
                       profiles=lambda m, v: entry.reference_profile)

    async def seek(partition: int, offset: int) -> None:
        assert seeks is not None, "unexpected rewind"
        seeks.append((partition, offset))

    return TelemetryHandler(core, table, sink, MonitorMetrics(CollectorRegistry()), seek)  # type: ignore[arg-type]


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


def test_a_commit_ahead_of_the_restored_state_rewinds_to_it_and_skips_nothing() -> None:
    """The group's committed offset got past the last state on the changelog (the monitor was
    killed after a commit its state write had not reached): the restarted handler reads the
    first record past the state, asks to read again from the state's offset + 1, drops what
    was fetched before the seek took effect, and ends with the windows of a straight run."""
    records = _records(16)
    straight = FakeSink()

    async def straight_run() -> None:
        handler = _handler(FakeTable(), straight)
        for off, value in enumerate(records):
            await handler.handle(0, off, value)

    asyncio.run(straight_run())
    sink, table, seeks = FakeSink(), FakeTable(), []

    async def first_life() -> None:
        handler = _handler(table, sink)
        for off, value in enumerate(records[:8]):
            await handler.handle(0, off, value)

    async def second_life() -> None:
        restored = FakeTable({"0": table.delivered["0"]})
        handler = _handler(restored, sink, seeks)
        for off in (10, 11, 12):                 # committed offset 10, and two more already fetched
            await handler.handle(0, off, records[off])
        assert seeks == [(0, 8)] and restored["0"]["offset"] == 7
        for off in range(8, 16):                  # the re-read
            await handler.handle(0, off, records[off])

    asyncio.run(first_life())
    asyncio.run(second_life())
    assert sorted(sink.windows) == sorted(straight.windows)
    assert [sink.windows[w]["batches"] for w in sorted(sink.windows)] == [5, 5, 5]
    assert sink.windows == straight.windows


def test_a_restart_at_or_before_the_restored_state_reads_on_without_rewinding() -> None:
    records = _records(8)
    table = FakeTable()

    async def run() -> None:
        first = _handler(table, FakeSink())
        for off, value in enumerate(records[:6]):
            await first.handle(0, off, value)
        again = _handler(FakeTable(dict(table.delivered)), FakeSink())   # no seek allowed
        for off in range(3, 8):
            await again.handle(0, off, records[off])
        assert again.table["0"]["offset"] == 7

    asyncio.run(run())


def test_a_reread_that_starts_past_the_state_is_sought_again() -> None:
    """The seek raced the fetch loop: the re-read begins at 10, not 8; the handler seeks again
    and applies nothing until 8 comes."""
    records = _records(12)
    table, seeks = FakeTable(), []

    async def run() -> None:
        first = _handler(table, FakeSink())
        for off, value in enumerate(records[:8]):
            await first.handle(0, off, value)
        again = _handler(FakeTable({"0": table["0"]}), FakeSink(), seeks)
        for off in (10, 11, 10, 11, 8, 9, 10, 11):    # fetched; a late re-read; the re-read from 8
            await again.handle(0, off, records[off])
        assert seeks == [(0, 8), (0, 8)]
        assert again.table["0"]["offset"] == 11

    asyncio.run(run())
