"""monitoring.dashboard.scrape and state: metrics parsing, rates, quantiles, Redis field typing."""

from __future__ import annotations

import math

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from monitoring.dashboard.scrape import MetricsPoller, Sample, bucket_quantile, parse_metrics
from monitoring.dashboard.state import _typed
from monitoring.metrics import ScorerMetrics


def _text(events_in: int, lag: int = 0) -> str:
    reg = CollectorRegistry()
    m = ScorerMetrics(registry=reg, instance="s")
    m.batch_consumed("a", events_in)
    m.batch_produced("a", events_in - 1)
    m.dead_letters("a", "decode", 1)
    m.e2e_latency("a", np.full(100, 0.004))
    m.consumer_stats('{"topics": {"tx": {"partitions": {"0": {"consumer_lag": %d}}}}}' % lag)
    return generate_latest(reg).decode()


def test_parse_sums_targets() -> None:
    s = Sample(t=0)
    parse_metrics(_text(100, lag=5), s)
    parse_metrics(_text(50, lag=7), s)
    assert (s.events_in, s.events_out, s.dead_letters) == (150, 148, 2)
    assert s.lag == {"tx[0]": 12}
    assert s.e2e_buckets[math.inf] == 200 and s.e2e_buckets[0.005] == 200 and s.e2e_buckets[0.0025] == 0


def test_bucket_quantile_matches_prometheus_interpolation() -> None:
    buckets = {0.1: 0.0, 0.5: 90.0, 1.0: 100.0, math.inf: 100.0}
    assert bucket_quantile(0.99, buckets) == pytest.approx(0.95)
    assert bucket_quantile(0.5, buckets) == pytest.approx(0.1 + 0.4 * 50 / 90)
    assert bucket_quantile(0.99, {1.0: 0.0, math.inf: 0.0}) is None
    assert bucket_quantile(0.99, {1.0: 5.0, math.inf: 10.0}) == 1.0     # in +Inf: the highest finite bound


def test_poller_rates_from_successive_scrapes_and_counter_reset() -> None:
    totals = iter([1000, 3000, 5000, 100])          # the last scrape follows a process restart
    clock = iter([10.0, 11.0, 12.0, 13.0])
    poller = MetricsPoller(["http://x/metrics"], fetch=lambda url, timeout: _text(next(totals)),
                           clock=lambda: next(clock))
    assert poller.snapshot()["events_in_per_s"] is None
    for _ in range(3):
        poller.poll_once()
    snap = poller.snapshot(window_s=5.0)
    assert snap["events_in_per_s"] == pytest.approx(2000.0)
    assert [h["in_per_s"] for h in snap["history"]] == [2000.0, 2000.0]
    assert snap["targets"] == [{"url": "http://x/metrics", "up": True}]
    poller.poll_once()
    assert poller.snapshot(window_s=0.5)["history"][-1]["in_per_s"] == 0.0   # never negative


def test_poller_reports_a_down_target() -> None:
    def boom(url: str, timeout: float) -> str:
        raise OSError("connection refused")

    poller = MetricsPoller(["http://down/metrics"], fetch=boom, clock=lambda: 1.0)
    poller.poll_once()
    (target,) = poller.snapshot()["targets"]
    assert target["up"] is False and "refused" in target["error"]


def test_redis_fields_are_typed() -> None:
    got = _typed({"model": "m", "version": "12", "value": "0.31", "n": "5000", "chi2": "nan", "status": "drift",
                  "reference": "[0.5, 0.5]", "edges": '["a", "b"]', "current": "not json"})
    assert got["version"] == "12" and got["value"] == 0.31 and got["n"] == 5000 and math.isnan(got["chi2"])
    assert got["reference"] == [0.5, 0.5] and got["edges"] == ["a", "b"] and got["current"] == []
