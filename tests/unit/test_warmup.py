"""Warm-up: synthetic batches of every size through decode, features, model and encode; nothing produced."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from consumers.runtime import PipelineRuntime
from consumers.warmup import DrySink, warm_sizes, warm_up
from monitoring.metrics import ScorerMetrics
from streamscore.app import batcher_for, build_runtime, registry_for
from streamscore.config import PipelineFile


def _runtime(**pipeline: Any) -> tuple[PipelineRuntime, Any]:
    cfg = PipelineFile.model_validate({
        "kafka": {"bootstrap_servers": "127.0.0.1:1"}, "group_id": "g",
        "pipelines": [{"name": "fraud", "input": {"topic": "in"}, "model": {"name": "fraud-mlp"},
                       "output": {"topic": "out"}, **pipeline}]})
    p = cfg.pipelines[0]
    rt = build_runtime(cfg, p, registry_for(cfg), None, [], ScorerMetrics(registry=CollectorRegistry()))  # type: ignore[arg-type]
    return rt, batcher_for(p)


def test_warm_sizes_cover_every_bucket_up_to_max() -> None:
    assert warm_sizes(1) == [1]
    assert warm_sizes(100) == [1, 4, 16, 64, 100]
    assert warm_sizes(64) == [1, 4, 16, 64]


def test_warm_up_scores_every_size_seeds_the_cost_model_and_produces_nothing() -> None:
    rt, batcher = _runtime(batching={"max_size": 256})
    sink = DrySink()
    assert batcher.cost_fit() == (0.0, 0.0)
    scored = warm_up(rt, batcher, sink)
    assert scored == sum(warm_sizes(256)), "every synthetic row decoded, scored and encoded"
    fixed, per_row = batcher.cost_fit()
    assert fixed + per_row * 256 > 0, "the batcher's cost model is seeded from the warm-up's model calls"
    assert sink.records >= 2 * scored, "both passes reached the sink's encoding path"
    assert batcher.stats.batches == 0 and batcher.rows == 0, "no batch was opened or closed"
    assert rt.counters == {"in": 0, "out": 0, "dead": 0, "shadow_errors": 0}


def test_no_warm_up_without_a_schema_id(monkeypatch: pytest.MonkeyPatch) -> None:
    rt, batcher = _runtime(batching={"max_size": 16})
    monkeypatch.setattr(rt.decoder.registry, "find", lambda _schema: None)
    assert warm_up(rt, batcher, DrySink()) == 0
    assert batcher.cost_fit() == (0.0, 0.0)


def test_no_warm_up_for_a_pipeline_with_lookups() -> None:
    """Synthetic keys must never reach the user's feature store (nor wait on it when it is down)."""
    rt, batcher = _runtime(batching={"max_size": 16}, lookups=[{
        "name": "acct", "redis": {"url": "redis://127.0.0.1:1/0", "key": "acct:{account_id}", "fields": ["limit"]},
        "defaults": {"limit": 1.0}}])
    assert rt.lookups is not None
    sink = DrySink()
    assert warm_up(rt, batcher, sink) == 0
    assert sink.records == 0 and batcher.cost_fit() == (0.0, 0.0)


def test_no_warm_up_for_a_pipeline_with_aggregates() -> None:
    """Synthetic events must never enter the per-partition state (nor its changelog)."""
    rt, batcher = _runtime(batching={"max_size": 16},
                           aggregates=[{"name": "n_10m", "key": "account_id", "op": "count", "window": "10m"}])
    assert rt.aggregates is not None and rt.aggregates.topic == "g-fraud-aggregates-changelog"
    sink = DrySink()
    assert warm_up(rt, batcher, sink) == 0
    assert sink.records == 0 and batcher.cost_fit() == (0.0, 0.0)
