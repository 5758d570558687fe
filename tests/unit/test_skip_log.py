"""How the monitor reports the records it skips: bounded lines, every skip counted (no services)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from prometheus_client import CollectorRegistry

from monitoring.monitor_metrics import MonitorMetrics
from monitoring.skip_log import SkipLog
from tests.unit.test_monitor_handler import FakeSink, FakeTable, _handler


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _skip_log(caplog: pytest.LogCaptureFixture) -> tuple[SkipLog, MonitorMetrics, Clock]:
    caplog.set_level(logging.WARNING)
    metrics, clock = MonitorMetrics(CollectorRegistry()), Clock()
    return SkipLog(logging.getLogger("skips"), metrics.skipped, first=3, interval_s=10, clock=clock), metrics, clock


def test_thirty_thousand_skips_write_the_first_few_lines_and_count_them_all(caplog: pytest.LogCaptureFixture) -> None:
    skips, metrics, clock = _skip_log(caplog)
    for i in range(30_000):
        clock.now = i * 1e-4                # 3 s of skips: no summary falls due
        skips.skip("gt", f"preds/0/{i}", "not Avro")
    assert len(caplog.records) == 3
    assert "preds/0/0: not Avro" in caplog.records[0].getMessage()
    assert "summed up every 10 s" in caplog.records[2].getMessage()
    assert metrics.skipped.labels("gt")._value.get() == 30_000


def test_skips_past_the_first_are_summed_up_once_per_interval_with_the_newest_reason(
        caplog: pytest.LogCaptureFixture) -> None:
    skips, _, clock = _skip_log(caplog)
    for i in range(3 + 7):
        skips.skip("gt", f"preds/0/{i}", f"reason {i}")
    skips.flush("gt")
    assert len(caplog.records) == 3                     # not yet due
    clock.now = 10.0
    skips.flush("gt")
    assert caplog.records[-1].getMessage() == "skipped 7 more gt records (10 in all); the newest at preds/0/9: reason 9"
    skips.flush("gt", force=True)
    assert len(caplog.records) == 4                     # nothing held since


def test_each_stream_gets_its_own_first_lines(caplog: pytest.LogCaptureFixture) -> None:
    skips, metrics, _ = _skip_log(caplog)
    for stream in ("a", "b"):
        for i in range(5):
            skips.skip(stream, f"t/0/{i}", "bad")
    assert [r.getMessage().split(" record")[0] for r in caplog.records] == ["skipping a"] * 3 + ["skipping b"] * 3
    assert metrics.skipped.labels("a")._value.get() == metrics.skipped.labels("b")._value.get() == 5


def test_undecodable_telemetry_is_counted_not_logged_per_record(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    handler = _handler(FakeTable(), FakeSink())

    async def run() -> None:
        for off in range(100):
            await handler.handle(0, off, b"\x00not telemetry")

    asyncio.run(run())
    assert handler.metrics.skipped.labels("telemetry")._value.get() == 100
    assert sum("skipping telemetry record" in r.getMessage() for r in caplog.records) == 5
