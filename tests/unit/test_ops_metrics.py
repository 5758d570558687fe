"""monitoring.metrics: names, labels and bucket math, read back from the exposition text."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from monitoring.metrics import (E2E_BUCKETS, BulkHistogram, GpuMetrics, MetricsServer, ScorerMetrics,
                                metrics_port_for, start_metrics_server)


def _samples(registry: CollectorRegistry) -> list[tuple[str, dict[str, str], float]]:
    text = generate_latest(registry).decode()
    return [(s.name, dict(s.labels), s.value) for fam in text_string_to_metric_families(text) for s in fam.samples]


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    hits = [v for n, lab, v in _samples(registry) if n == name and all(lab.get(k) == x for k, x in labels.items())]
    assert len(hits) == 1, (name, labels, hits)
    return hits[0]


@pytest.fixture
def reg() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(reg: CollectorRegistry) -> ScorerMetrics:
    return ScorerMetrics(registry=reg, instance="scorer-0")


def test_counters_carry_pipeline_direction_reason_and_instance(reg: CollectorRegistry, metrics: ScorerMetrics) -> None:
    metrics.batch_consumed("fraud", 2000)
    metrics.batch_consumed("fraud", 48)
    metrics.batch_produced("fraud", 2040)
    metrics.dead_letters("fraud", "decode", 5)
    metrics.dead_letters("fraud", "model_error", 3)
    metrics.delivery_error("fraud")
    metrics.model_swap("fraud", True)
    metrics.model_swap("fraud", False)
    assert _value(reg, "streamscore_events_total", pipeline="fraud", direction="in", instance="scorer-0") == 2048
    assert _value(reg, "streamscore_events_total", pipeline="fraud", direction="out") == 2040
    assert _value(reg, "streamscore_dead_letters_total", pipeline="fraud", reason="decode") == 5
    assert _value(reg, "streamscore_dead_letters_total", pipeline="fraud", reason="model_error") == 3
    assert _value(reg, "streamscore_delivery_errors_total", pipeline="fraud") == 1
    assert _value(reg, "streamscore_model_swaps_total", pipeline="fraud", result="ok") == 1
    assert _value(reg, "streamscore_model_swaps_total", pipeline="fraud", result="failed") == 1
    assert all(lab.get("instance") == "scorer-0" for n, lab, _ in _samples(reg) if n.startswith("streamscore_"))


def test_batch_model_stage_and_queue_metrics(reg: CollectorRegistry, metrics: ScorerMetrics) -> None:
    metrics.batch_closed("fraud", 2048, 0.003, "size")
    metrics.batch_closed("fraud", 100, 0.02, "latency")
    metrics.model_latency("fraud", "fraud-mlp", 0.004, 2048)
    metrics.stage_latency("decode", 0.002)
    metrics.queue_depth("model", 3)
    assert _value(reg, "streamscore_batches_total", pipeline="fraud", reason="size") == 1
    assert _value(reg, "streamscore_batches_total", pipeline="fraud", reason="latency") == 1
    assert _value(reg, "streamscore_batch_size_count", pipeline="fraud") == 2
    assert _value(reg, "streamscore_batch_size_sum", pipeline="fraud") == 2148
    assert _value(reg, "streamscore_batch_size_bucket", pipeline="fraud", le="2048.0") == 2
    assert _value(reg, "streamscore_batch_size_bucket", pipeline="fraud", le="1024.0") == 1
    assert _value(reg, "streamscore_batch_wait_seconds_count", pipeline="fraud") == 2
    assert _value(reg, "streamscore_model_latency_seconds_count", pipeline="fraud", model="fraud-mlp") == 1
    assert _value(reg, "streamscore_model_rows_total", pipeline="fraud", model="fraud-mlp") == 2048
    assert _value(reg, "streamscore_stage_latency_seconds_count", stage="decode") == 1
    assert _value(reg, "streamscore_queue_depth", stage="model") == 3
    metrics.queue_depth("model", 0)
    assert _value(reg, "streamscore_queue_depth", stage="model") == 0


def test_bulk_histogram_equals_observing_one_by_one() -> None:
    rng = np.random.default_rng(3)
    values = np.concatenate([
        rng.lognormal(mean=-4, sigma=2, size=20_000),         # ~18 ms median, long tail past 10 s
        np.asarray(E2E_BUCKETS),                              # exactly on a bound: counted in that bucket
        np.asarray(E2E_BUCKETS) + 1e-12,                      # just above: the next bucket
        [-0.5, 0.0, 1e6],                                     # clock skew, zero, beyond every bound
    ])
    ref_reg, bulk_reg = CollectorRegistry(), CollectorRegistry()
    ref = Histogram("lat_seconds", "x", ["pipeline"], buckets=E2E_BUCKETS, registry=ref_reg)
    for v in values.tolist():
        ref.labels("p").observe(v)
    bulk = BulkHistogram("lat_seconds", "x", ["pipeline"], E2E_BUCKETS)
    bulk_reg.register(bulk)
    for chunk in np.array_split(values, 11):                 # several batches accumulate
        bulk.observe(("p",), chunk)

    def hist(reg: CollectorRegistry) -> dict[tuple[str, str], float]:
        return {(n, lab.get("le", "")): v for n, lab, v in _samples(reg) if n.startswith("lat_seconds")
                and not n.endswith("_created")}

    got, want = hist(bulk_reg), hist(ref_reg)
    assert set(got) == set(want)
    for key, v in want.items():
        assert got[key] == pytest.approx(v, rel=1e-9), key
    assert got[("lat_seconds_count", "")] == len(values)


def test_e2e_latency_buckets_resolve_1ms_to_10s_and_drop_nan(reg: CollectorRegistry, metrics: ScorerMetrics) -> None:
    assert E2E_BUCKETS[0] == 0.001 and E2E_BUCKETS[-1] == 10.0
    assert list(E2E_BUCKETS) == sorted(E2E_BUCKETS)
    metrics.e2e_latency("fraud", np.array([0.0005, 0.004, 0.004, 12.0, np.nan]))
    metrics.e2e_latency("fraud", np.array([], dtype=np.float64))
    assert _value(reg, "streamscore_e2e_latency_seconds_count", pipeline="fraud", instance="scorer-0") == 4
    assert _value(reg, "streamscore_e2e_latency_seconds_bucket", pipeline="fraud", le="0.001") == 1
    assert _value(reg, "streamscore_e2e_latency_seconds_bucket", pipeline="fraud", le="0.005") == 3
    assert _value(reg, "streamscore_e2e_latency_seconds_bucket", pipeline="fraud", le="10.0") == 3
    assert _value(reg, "streamscore_e2e_latency_seconds_bucket", pipeline="fraud", le="+Inf") == 4
    assert _value(reg, "streamscore_e2e_latency_seconds_sum", pipeline="fraud") == pytest.approx(12.0085)


def _stats(parts: dict[str, dict[str, Any]]) -> str:
    return json.dumps({"name": "c", "type": "consumer", "replyq": 2, "topics": {"tx": {"topic": "tx", "partitions": parts}}})


def test_consumer_stats_lag_per_assigned_partition(reg: CollectorRegistry, metrics: ScorerMetrics) -> None:
    metrics.consumer_stats(_stats({
        "0": {"partition": 0, "desired": True, "fetch_state": "active", "consumer_lag": 120, "fetchq_cnt": 40, "fetchq_size": 4000},
        "1": {"partition": 1, "desired": True, "fetch_state": "active", "consumer_lag": 0, "fetchq_cnt": 0, "fetchq_size": 0},
        "2": {"partition": 2, "desired": False, "fetch_state": "none", "consumer_lag": -1},
        "-1": {"partition": -1, "consumer_lag": -1},
    }))
    assert _value(reg, "streamscore_consumer_lag", topic="tx", partition="0") == 120
    assert _value(reg, "streamscore_consumer_lag", topic="tx", partition="1") == 0
    assert _value(reg, "streamscore_consumer_fetchq_messages", topic="tx", partition="0") == 40
    assert _value(reg, "streamscore_consumer_fetchq_bytes", topic="tx", partition="0") == 4000
    assert _value(reg, "streamscore_consumer_replyq", instance="scorer-0") == 2
    assert not [1 for n, lab, _ in _samples(reg) if n == "streamscore_consumer_lag" and lab["partition"] in ("2", "-1")]
    # after a rebalance partition 0 is gone from the snapshot, and from the gauges
    metrics.consumer_stats(_stats({"1": {"desired": True, "fetch_state": "active", "consumer_lag": 7}}))
    lags = {lab["partition"]: v for n, lab, v in _samples(reg) if n == "streamscore_consumer_lag"}
    assert lags == {"1": 7}
    metrics.consumer_stats("not json")                     # logged, never raised into librdkafka
    assert _value(reg, "streamscore_consumer_lag", partition="1") == 7


def test_model_info_swap_removes_previous_version(reg: CollectorRegistry, metrics: ScorerMetrics) -> None:
    metrics.model_info("fraud", "fraud-mlp", "1", "primary")
    metrics.model_info("fraud", "fraud-mlp-torch", "3", "shadow")
    metrics.model_info("fraud", "fraud-mlp", "2", "primary")
    info = sorted((lab["model"], lab["version"], lab["variant"]) for n, lab, v in _samples(reg)
                  if n == "streamscore_model_info" and v == 1)
    assert info == [("fraud-mlp", "2", "primary"), ("fraud-mlp-torch", "3", "shadow")]


def test_default_instance_is_the_hostname(reg: CollectorRegistry) -> None:
    import socket

    m = ScorerMetrics(registry=reg)
    m.batch_consumed("p", 1)
    assert _value(reg, "streamscore_events_total", pipeline="p")  # one series
    assert {lab["instance"] for n, lab, _ in _samples(reg) if n == "streamscore_events_total"} == {socket.gethostname()}


def test_metrics_server_serves_the_registry_on_a_free_port(reg: CollectorRegistry, metrics: ScorerMetrics) -> None:
    metrics.batch_consumed("fraud", 7)
    server = MetricsServer(0, reg, host="127.0.0.1")
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5).read().decode()
    finally:
        server.close()
    assert 'streamscore_events_total{direction="in",instance="scorer-0",pipeline="fraud"} 7.0' in body
    port = start_metrics_server(0, CollectorRegistry(), host="127.0.0.1")
    assert port > 0


def test_metrics_port_per_process() -> None:
    assert [metrics_port_for(9300, i) for i in range(3)] == [9300, 9301, 9302]
    assert metrics_port_for(None, 2) is None
    assert metrics_port_for(0, 2) == 0


def test_gpu_metrics_absent_without_a_gpu(reg: CollectorRegistry) -> None:
    gpu = GpuMetrics(registry=reg)
    try:
        names = {n for n, _, _ in _samples(reg)}
        if gpu.available:
            assert "streamscore_gpu_memory_total_bytes" in names
        else:
            assert not any(n.startswith("streamscore_gpu_") for n in names)
    finally:
        gpu.close()
