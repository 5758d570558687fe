"""The composition root: everything a scoring process needs is built here and passed in."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient

from consumers.batcher import AdaptiveBatcher
from consumers.kafka_client import (CONSUMER_DEFAULTS, PRODUCER_DEFAULTS, ensure_topics, make_consumer,
                                    make_producer, merged, partition_count)
from consumers.runtime import ActiveModel, ModelSlot, PipelineRuntime
from consumers.scorer import Scorer
from schemas.errors import ConfigError
from sinks.kafka_sink import KafkaSink
from streamscore.config import PipelineConfig, PipelineFile

log = logging.getLogger(__name__)


def registry_for(cfg: PipelineFile) -> Any:
    from models import DEMO_REGISTRY
    from models.registry import ModelRegistry

    root = Path(cfg.registry) if cfg.registry else DEMO_REGISTRY
    if not root.is_dir():
        raise ConfigError(f"registry: directory {root} does not exist")
    return ModelRegistry(root)


def load_active(registry: Any, p: PipelineConfig, *, version: str | None = None, variant: str = "primary") -> ActiveModel:
    entry = registry.get(p.model.name, version or p.model.version, stage=p.model.stage)
    model = registry.load(entry, device=p.model.device)
    threshold = p.decision_threshold if p.decision_threshold is not None else entry.decision_threshold
    return ActiveModel(model=model, assembler=entry.input_spec, threshold=threshold, variant=variant)


def build_runtime(cfg: PipelineFile, p: PipelineConfig, registry: Any, admin: AdminClient) -> PipelineRuntime:
    from schemas.columnar import BatchDecoder, BatchEncoder
    from schemas.registry import SchemaRegistry

    schemas = SchemaRegistry.default()
    try:
        reader = schemas.schema(p.input.schema_name)
    except Exception as exc:
        raise ConfigError(f"pipelines[{p.name}].input.schema: {exc}") from exc
    active = load_active(registry, p)
    validate: dict[str, Any] = {}
    field_names = {f["name"] for f in reader["fields"]}
    if p.input.validate_finite:
        validate["finite"] = [n for n in active.assembler.names if n in field_names]
    if p.input.ranges:
        unknown = sorted(set(p.input.ranges) - field_names)
        if unknown:
            raise ConfigError(f"pipelines[{p.name}].input.ranges: unknown fields {unknown}; "
                              f"valid: {sorted(field_names)}")
        validate["ranges"] = {k: list(v) for k, v in p.input.ranges.items()}
    decoder = BatchDecoder(reader, schemas, fmt=p.input.format, validate=validate or None)
    encoder = BatchEncoder(schemas.schema("prediction"), schemas.id_for("prediction"))
    in_parts = partition_count(admin, p.input.topic)
    out_parts = partition_count(admin, p.output.topic)
    return PipelineRuntime(
        name=p.name, input_topic=p.input.topic, output_topic=p.output.topic, dlq_topic=p.input.dlq_topic,
        decoder=decoder, encoder=encoder, slot=ModelSlot(active), partitioning=p.output.partitioning,
        out_partitions=out_parts if in_parts else 0, max_message_bytes=p.input.max_message_bytes,
    )


def prepare_topics(cfg: PipelineFile, *, partitions: int = 4) -> None:
    """Create the output and dead-letter topics (with the input's partition count) if missing."""
    admin = AdminClient(cfg.kafka.client_settings())
    want: dict[str, int] = {}
    for p in cfg.pipelines:
        n = partition_count(admin, p.input.topic) or partitions
        want[p.input.topic] = n
        want[p.output.topic] = n
        want[p.input.dlq_topic] = n
    ensure_topics(cfg.kafka.client_settings(), want)


@dataclass
class Process:
    scorer: Scorer
    cfg: PipelineFile


def build_scorer(cfg: PipelineFile, *, instance: str | None = None, index: int = 0) -> Scorer:
    from monitoring.metrics import GpuMetrics, ScorerMetrics, metrics_port_for, start_metrics_server

    prepare_topics(cfg)
    base = cfg.kafka.client_settings()
    admin = AdminClient(base)
    registry = registry_for(cfg)
    runtimes = [build_runtime(cfg, p, registry, admin) for p in cfg.pipelines]
    consumer_conf = merged(CONSUMER_DEFAULTS, base, {"group.id": cfg.group_id,
                                                     "auto.commit.interval.ms": cfg.commit_interval_ms})
    if instance:
        consumer_conf["client.id"] = instance
    producer_conf = merged(PRODUCER_DEFAULTS, base, {})
    if cfg.delivery == "exactly_once":
        # Offsets travel inside the transaction; input written by transactions is read once committed.
        consumer_conf.update({"enable.auto.commit": False, "isolation.level": "read_committed"})
        # A stable id per process slot: a restarted slot fences its predecessor's open transaction.
        producer_conf.update({"transactional.id": f"streamscore-{cfg.group_id}-{instance or 'scorer'}",
                              "transaction.timeout.ms": 10000, "message.timeout.ms": 10000})
    consumer_conf.update(cfg.kafka.consumer)
    producer_conf.update(cfg.kafka.producer)
    metrics = ScorerMetrics(instance=instance or "")
    port = metrics_port_for(cfg.metrics_port, index)
    if port is not None:
        bound = start_metrics_server(port, host=cfg.metrics_host)
        log.info("metrics on http://%s:%d/metrics", cfg.metrics_host, bound)
    consumer_conf.setdefault("statistics.interval.ms", 5000)
    consumer_conf["stats_cb"] = metrics.consumer_stats      # consumer lag per partition
    if any(p.model.device.startswith("cuda") for p in cfg.pipelines):
        GpuMetrics(instance=instance or "")
    for rt in runtimes:
        a = rt.slot.active
        metrics.model_info(rt.name, a.model.name, str(a.model.version), a.variant)
    b = cfg.pipelines[0].batching
    batcher = AdaptiveBatcher(max_size=b.max_size, max_wait_s=b.max_wait_ms / 1000.0,
                              latency_target_s=None if b.latency_target_ms is None else b.latency_target_ms / 1000.0)
    return Scorer(consumer=make_consumer(consumer_conf), sink=KafkaSink(make_producer(producer_conf)),
                  pipelines=runtimes, batcher=batcher, queue_depth=cfg.queue_depth, delivery=cfg.delivery,
                  make_producer=lambda: make_producer(producer_conf),
                  commit_interval_s=cfg.commit_interval_ms / 1000.0, metrics=metrics)
