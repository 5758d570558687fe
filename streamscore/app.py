"""The composition root: everything a scoring process needs is built here and passed in."""

from __future__ import annotations

import logging
import threading
import types
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from confluent_kafka.admin import AdminClient

from consumers.batcher import AdaptiveBatcher
from consumers.kafka_client import (CONSUMER_DEFAULTS, PRODUCER_DEFAULTS, STATS_INTERVAL_MS, ClientConf, connection_error,
                                    ensure_topics, make_admin, make_consumer, make_producer, merged, partition_count,
                                    topic_max_message_bytes)
from consumers.runtime import ActiveModel, ModelSlot, PipelineRuntime, Runner, ScoringModel, Variant
from consumers.scorer import Scorer
from schemas.errors import ConfigError
from sinks.kafka_sink import KafkaSink
from streamscore.config import ModelRef, PipelineConfig, PipelineFile
from streamscore.contract import field_mapping, reader_schema, register_output, registry_client

if TYPE_CHECKING:   # imported where used, so a process loads only the backends it needs
    from models.base import Model
    from models.hotswap import RegistryWatcher
    from models.registry import ModelEntry, ModelRegistry, ModelSource
    from models.routing import RouteSpec
    from schemas.registry import SchemaRegistry
    from streamscore.contract import FieldMapping

AvroSchema = dict[str, Any]     # a parsed Avro record schema (JSON)


class RuntimeMetrics(Protocol):
    """What building a pipeline reports (``monitoring.metrics.ScorerMetrics``; backfill: no-ops)."""

    def decode_fallback(self, pipeline: str) -> None: ...
    def registry_wait(self, pipeline: str, seconds: float) -> None: ...
    def model_swap(self, pipeline: str, ok: bool) -> None: ...
    def model_info(self, pipeline: str, model: str, version: str, variant: str) -> None: ...
    def lookup_wait(self, pipeline: str, lookup: str, seconds: float) -> None: ...
    def lookup_keys(self, pipeline: str, lookup: str, fetched: int, cached: int, missing: int) -> None: ...
    def aggregate_state(self, pipeline: str, keys: int, nbytes: int) -> None: ...
    def aggregate_restore(self, pipeline: str, records: int, seconds: float) -> None: ...

log = logging.getLogger(__name__)


def _model(p: PipelineConfig) -> ModelRef:
    if p.model is None:
        raise ConfigError(f"pipelines[{p.name}].model: required for a scoring pipeline")
    return p.model


def scoring_pipeline(cfg: PipelineFile, name: str | None, command: str) -> PipelineConfig:
    """The pipeline ``--pipeline NAME`` names (default: the file's first scoring pipeline)."""
    for p in cfg.pipelines:
        if p.name == name or (name is None and p.kind == "score"):
            if p.kind != "score":
                raise ConfigError(f"{command}: pipeline {p.name!r} is kind {p.kind!r}; {command} needs kind: score")
            return p
    if name is None:
        raise ConfigError(f"{command}: the pipeline file has no scoring pipeline")
    raise ConfigError(f"--pipeline: no pipeline {name!r}; valid: {[p.name for p in cfg.pipelines]}")


def registry_for(cfg: PipelineFile) -> ModelSource:
    from models import DEMO_REGISTRY
    from models.registry import ModelRegistry

    if cfg.registry and cfg.registry.startswith("mlflow+"):
        from models.mlflow_registry import MlflowRegistry

        return MlflowRegistry(cfg.registry)
    root = Path(cfg.registry) if cfg.registry else DEMO_REGISTRY
    if all(p.kind == "embed" for p in cfg.pipelines):
        return ModelRegistry(root)
    return ModelRegistry.existing(root)


def load_active(registry: ModelSource, p: PipelineConfig, *, name: str | None = None, version: str | None = None,
                variant: Variant = "primary") -> tuple[ModelEntry, ActiveModel]:
    entry = registry.get(name or _model(p).name, version or (_model(p).version if name in (None, _model(p).name) else None),
                         stage=_model(p).stage)
    entry = with_overrides(p, entry)
    model = registry.load(entry, device=_model(p).device)
    return entry, active_for(p, entry, model, variant)


def with_overrides(p: PipelineConfig, entry: ModelEntry) -> ModelEntry:
    """The entry as this pipeline runs it: ``model.features`` replaces the entry's features
    (for the pipeline's own model, not for other arms' or shadows' models)."""
    import dataclasses

    from models.base import InputSpec

    ref = _model(p)
    if ref.features is None or entry.name != base_name(ref.name):
        return entry
    spec = InputSpec.from_dict({"input_name": entry.input_spec.input_name, "features": ref.features})
    return dataclasses.replace(entry, input_spec=spec)


def base_name(ref: str) -> str:
    """The model's name in a reference that may carry an MLflow ``@alias`` or ``/version``."""
    return ref.split("@", 1)[0].rsplit("/", 1)[0] if ("@" in ref or "/" in ref) else ref


def runner_for(p: PipelineConfig, entry: ModelEntry, model: Model, threshold: float) -> Runner:
    """Features (or the pre hook), the model, the post hook and the output heads of one version."""
    from models.runner import ModelRunner, load_hook

    ref = _model(p)
    own = entry.name == base_name(ref.name)
    pre = (ref.pre if own else None) or entry.hooks.get("pre")
    post = (ref.post if own else None) or entry.hooks.get("post")
    return ModelRunner(model, input_spec=entry.input_spec, output_spec=entry.outputs, threshold=threshold,
                       pre=load_hook(pre, ref.hook_path) if pre else None,
                       post=load_hook(post, ref.hook_path) if post else None,
                       pre_name=pre or "", post_name=post or "", labels=tuple(getattr(model, "labels", ())))


def active_for(p: PipelineConfig, entry: ModelEntry, model: Model, variant: Variant) -> ActiveModel:
    """What the scorer holds for one model version: the model, its runner, threshold, telemetry."""
    threshold = p.decision_threshold if p.decision_threshold is not None else entry.decision_threshold
    telemetry = None
    if p.telemetry.enabled and entry.reference_profile and variant != "shadow":
        from monitoring.telemetry import TelemetryBuilder

        telemetry = TelemetryBuilder(pipeline=p.name, model=entry.name, version=str(entry.version),
                                     reference_profile=entry.reference_profile,
                                     feature_names=list(entry.input_spec.names), threshold=threshold,
                                     categorical=list(entry.reference_profile.get("categoricals", {})),
                                     sample=p.telemetry.sample)
    return ActiveModel(model=model, assembler=entry.input_spec, threshold=threshold, variant=variant,
                       telemetry=telemetry, runner=runner_for(p, entry, model, threshold))


def route_for(p: PipelineConfig) -> RouteSpec:
    from models.routing import Arm, RouteSpec

    if p.route is not None:
        return RouteSpec.from_dict(p.route)
    return RouteSpec(mode="single", arms=(Arm(_model(p).name, _model(p).version),))


def input_rules(p: PipelineConfig, mapping: FieldMapping,
                features: Sequence[str]) -> dict[str, list[str] | dict[str, list[float]]]:
    """The decoder's record validation: finite model features, and the configured value ranges."""
    validate: dict[str, list[str] | dict[str, list[float]]] = {}
    field_names = set(mapping.leaves)
    if p.input.validate_finite:
        validate["finite"] = [n for n in features if n in mapping.float_fields]
    if p.input.ranges:
        unknown = sorted(set(p.input.ranges) - field_names)
        if unknown:
            raise ConfigError(f"pipelines[{p.name}].input.ranges: unknown fields {unknown}; "
                              f"valid: {sorted(field_names)}")
        validate["ranges"] = {k: list(v) for k, v in p.input.ranges.items()}
    return validate


def check_config(cfg: PipelineFile) -> str:
    """What ``serve`` resolves before it touches a broker, without touching one: the registry,
    every arm's and shadow's model (sha256 and smoke check, then closed), the reader schemas (a schema
    registry's too, read only), the field mapping, the input rules and an embedder's head. Returns one line; raises ``StreamscoreError``."""
    from models.registry import ModelRegistry
    from schemas.registry import SchemaRegistry

    registry = registry_for(cfg)
    schemas = SchemaRegistry.default()
    schemas.schema("prediction")
    quiet = types.SimpleNamespace(registry_wait=lambda *_: None)   # no metrics in a check
    done = []
    for p in cfg.pipelines:
        reader = reader_schema(p, schemas, registry_client(cfg, p, quiet, None))
        if p.kind == "embed":
            if p.embedder.head:
                from models.text import LabelHead

                LabelHead.load(Path(p.embedder.head))
            done.append(f"{p.name} (embed)")
            continue
        spec = route_for(p)
        models = []
        features: Sequence[str] = ()
        refs = [(a.name, a.version) for a in spec.arms] + [(s.name, s.version) for s in spec.shadow]
        for name, version in refs:
            entry, active = load_active(registry, p, name=name, version=version)
            active.model.close()
            features = features or entry.input_spec.names
            models.append(f"{entry.name}:{entry.version}")
        input_rules(p, field_mapping(p, reader), features)
        aggregate_engine(p, field_mapping(p, reader).leaves)
        done.append(f"{p.name} ({', '.join(models)})")
    where = registry.root if isinstance(registry, ModelRegistry) else cfg.registry
    return f"config OK: {len(done)} pipeline(s): {'; '.join(done)}; registry {where}"


def build_runtime(cfg: PipelineFile, p: PipelineConfig, registry: ModelSource, admin: AdminClient,
                  watchers: list[RegistryWatcher], metrics: RuntimeMetrics,
                  registry_stop: threading.Event | None = None) -> PipelineRuntime:
    from models.routing import Router
    from schemas.columnar import BatchEncoder
    from schemas.prediction import OutputSpec
    from schemas.registry import SchemaRegistry

    schemas = SchemaRegistry.default()
    client = registry_client(cfg, p, metrics, registry_stop)
    reader = reader_schema(p, schemas, client)
    if p.kind == "embed":
        return build_embed_runtime(p, schemas, reader, admin)
    spec = route_for(p)
    arms: list[ModelSlot] = []
    entries: list[Any] = []
    for arm in spec.arms:
        entry, active = load_active(registry, p, name=arm.name, version=arm.version, variant=arm.variant)
        slot = ModelSlot(active)
        arms.append(slot)
        entries.append(entry)
        if _model(p).hot_swap and arm.version is None and (arm.name != _model(p).name or _model(p).version is None):
            watchers.append(_watch(registry, p, slot, entry, arm.variant, metrics, ref=arm.name))
    shadows = []
    for sh in spec.shadow:
        entry, active = load_active(registry, p, name=sh.name, version=sh.version, variant="shadow")
        shadows.append(ModelSlot(active))
        entries.append(entry)
    outputs: OutputSpec = entries[0].outputs
    for e in entries[1:]:
        if e.outputs.fields() != outputs.fields():
            raise ConfigError(f"pipelines[{p.name}]: {e.name}:{e.version} gives prediction fields {e.outputs.fields()}, "
                              f"{entries[0].name}:{entries[0].version} gives {outputs.fields()}; "
                              f"every model of a pipeline writes the same record")
    mapping = field_mapping(p, reader)
    shadow_topic = (p.output.shadow_topic or f"{p.output.topic}.shadow") if shadows else None
    out_schema, out_id = register_output(p, mapping, schemas, client, shadow_topic, outputs=outputs)
    # the decoder's finite check applies to plain features; declarative ones have defaults and report their rows
    finite = arms[0].active.assembler.names if entries[0].input_spec.plain else ()
    decoder = build_decoder(p, reader, client or schemas, finite, metrics=metrics)
    encoder = BatchEncoder(out_schema, out_id)
    if p.output.include_features and (_model(p).pre or any(e.hooks.get("pre") for e in entries)):
        raise ConfigError(f"pipelines[{p.name}].output.include_features: a pre hook builds the model inputs; "
                          f"include_features needs declarative features")
    return PipelineRuntime(
        name=p.name, input_topic=p.input.topic, output_topic=p.output.topic, dlq_topic=p.input.dlq_topic,
        decoder=decoder, encoder=encoder, slot=arms[0], arms=arms,
        router=Router(spec) if len(arms) > 1 else None, shadows=shadows,
        shadow_topic=shadow_topic,
        telemetry_topic=p.telemetry.topic if p.telemetry.enabled else None,
        partitioning=p.output.partitioning,
        max_message_bytes=p.input.max_message_bytes, output_headers=p.output.headers,
        id_field=p.input.id_field, time_field=mapping.time_field, time_scale=mapping.time_scale,
        carry=mapping.carry, include_features=p.output.include_features,
        lookups=lookups_for(p, mapping.leaves, metrics, registry_stop or threading.Event()),
        aggregates=aggregates_for(cfg, p, mapping.leaves, metrics),
    )


def changelog_topic(cfg: PipelineFile, p: PipelineConfig) -> str:
    """The compacted topic a pipeline's aggregate state is kept in."""
    import re

    name = p.aggregate_state.changelog_topic or f"{cfg.group_id}-{p.name}-aggregates-changelog"
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def aggregate_engine(p: PipelineConfig, fields: Any) -> Any:
    """The pipeline's aggregate engine, its key and value fields checked against the input (None: no aggregates)."""
    if not p.aggregates:
        return None
    from models.aggregates import AggregateEngine, parse_window

    for a in p.aggregates:
        where = f"pipelines[{p.name}].aggregates[{a.name}]"
        for what, name in (("key", a.key), ("field", a.field)):
            if name is not None and name not in fields:
                raise ConfigError(f"{where}.{what}: {name!r} is not in the input schema; valid: {sorted(fields)}")
        if a.name in fields:
            raise ConfigError(f"{where}: the name {a.name!r} clashes with an input field")
    return AggregateEngine([a.spec() for a in p.aggregates], grace_ms=parse_window(p.aggregate_state.grace))


def aggregates_for(cfg: PipelineFile, p: PipelineConfig, fields: Any, metrics: RuntimeMetrics) -> Any:
    """The pipeline's aggregate state, restored from its changelog on assignment (None when it has none)."""
    engine = aggregate_engine(p, fields)
    if engine is None:
        return None
    from consumers.changelog import AggregateState, ChangelogReader

    conf = merged(cfg.kafka.client_settings(), {}, {
        "group.id": f"{cfg.group_id}-changelog-restore", "enable.auto.commit": False, "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        # exactly-once: only the records of committed batches are state
        "isolation.level": "read_committed" if cfg.delivery == "exactly_once" else "read_uncommitted"})
    return AggregateState(engine, ChangelogReader(lambda: make_consumer(conf)), topic=changelog_topic(cfg, p),
                          pipeline=p.name, metrics=metrics)


def lookups_for(p: PipelineConfig, fields: Any, metrics: RuntimeMetrics, stop: threading.Event) -> Any:
    """The pipeline's online feature lookups (None when it has none: the scorer's path is unchanged)."""
    if not p.lookups:
        return None
    from models.lookups import Lookup, Lookups, RedisHashStore
    from streamscore.config import redis_url_from_env

    out = []
    for lk in p.lookups:
        spec = lk.spec()
        if spec.key_field not in fields:
            raise ConfigError(f"pipelines[{p.name}].lookups[{lk.name}].redis.key: field {spec.key_field!r} is not "
                              f"in the input schema; valid: {sorted(fields)}")
        clash = sorted(set(spec.columns()) & set(fields))
        if clash:
            raise ConfigError(f"pipelines[{p.name}].lookups[{lk.name}]: columns {clash} clash with input fields")
        url = lk.redis.url.get_secret_value() if lk.redis.url is not None else redis_url_from_env()
        store = RedisHashStore(url, timeout_s=lk.redis.timeout_ms / 1000.0)
        out.append(Lookup(spec, store, pipeline=p.name, metrics=metrics, stop=stop, max_wait_s=lk.redis.max_wait_s))
    return Lookups(out)


def build_decoder(p: PipelineConfig, reader: dict[str, Any], source: Any, feature_names: tuple[str, ...], *,
                  metrics: Any, fmt: Literal["avro", "json"] | None = None) -> Any:
    """The pipeline's input decoder with its validation rules (``fmt`` overrides ``input.format``)."""
    from schemas.columnar import BatchDecoder

    validate = input_rules(p, field_mapping(p, reader), feature_names)
    return BatchDecoder(reader, source, fmt=fmt or p.input.format, validate=validate or None,
                        on_fallback=lambda _id: metrics.decode_fallback(p.name))


def build_embed_runtime(p: PipelineConfig, schemas: SchemaRegistry, reader: AvroSchema,
                        admin: AdminClient) -> PipelineRuntime:
    """TextEvent -> all-MiniLM-L6-v2 sentence embeddings (+ optional label) -> Embedding records."""
    from models.text import LabelHead, MiniLMEmbedder
    from schemas.columnar import BatchDecoder, BatchEncoder

    e = p.embedder
    head = LabelHead.load(Path(e.head)) if e.head else None
    embedder = MiniLMEmbedder(device=e.device, dtype=e.dtype, max_length=e.max_length, batch_size=e.batch_size,
                              head=head)
    embedder.load()
    active = ActiveModel(model=embedder, assembler=None, threshold=0.0)  # type: ignore[arg-type]
    return PipelineRuntime(
        name=p.name, input_topic=p.input.topic, output_topic=p.output.topic, dlq_topic=p.input.dlq_topic,
        decoder=BatchDecoder(reader, schemas, fmt=p.input.format),
        encoder=BatchEncoder(schemas.schema("embedding"), schemas.id_for("embedding")),
        slot=ModelSlot(active), kind="embed", partitioning=p.output.partitioning,
        max_message_bytes=p.input.max_message_bytes, time_field=None, output_headers=p.output.headers,
    )


def _watch(registry: ModelSource, p: PipelineConfig, slot: ModelSlot, entry: ModelEntry, variant: Variant,
           metrics: RuntimeMetrics, ref: str | None = None) -> RegistryWatcher:
    """Hot swap: a newly promoted version replaces the slot's model between two batches."""
    from models.hotswap import RegistryWatcher

    def on_swap(new_entry: ModelEntry, model: Model) -> ScoringModel:
        old = slot.swap(active_for(p, with_overrides(p, new_entry), model, variant))
        metrics.model_swap(p.name, True)
        metrics.model_info(p.name, new_entry.name, str(new_entry.version), variant)
        log.info("pipeline %s: %s swapped %s -> %s", p.name, new_entry.name, old.model.version, new_entry.version)
        return old.model

    def on_error(name: str, version: str | None, exc: BaseException) -> None:
        metrics.model_swap(p.name, False)
        log.error("pipeline %s: %s:%s not swapped in, the current version keeps serving: %s",
                  p.name, name, version, exc)

    def same_inputs(new_entry: ModelEntry, _model: Model) -> None:
        new_entry = with_overrides(p, new_entry)
        if tuple(new_entry.input_spec.names) != tuple(entry.input_spec.names):
            raise ConfigError(f"{new_entry.name}:{new_entry.version} expects features {list(new_entry.input_spec.names)}, "
                              f"the pipeline assembles {list(entry.input_spec.names)}")
        if new_entry.outputs.fields() != entry.outputs.fields():
            raise ConfigError(f"{new_entry.name}:{new_entry.version} gives prediction fields {new_entry.outputs.fields()}, "
                              f"the pipeline writes {entry.outputs.fields()}")

    return RegistryWatcher(registry, ref or entry.name, on_swap=on_swap, on_error=on_error, stage=_model(p).stage,
                           current_version=entry.version, interval_s=_model(p).watch_interval_ms / 1000.0,
                           validate=same_inputs, load_options={"device": _model(p).device})


def prepare_topics(cfg: PipelineFile, *, partitions: int = 4) -> None:
    """Create the output and dead-letter topics (with the input's partition count) if missing."""
    admin = make_admin(cfg.kafka.client_settings())
    want: dict[str, int] = {}
    for p in cfg.pipelines:
        n = partition_count(admin, p.input.topic) or partitions
        want[p.input.topic] = n
        want[p.output.topic] = n
        want[p.input.dlq_topic] = n
        if p.kind == "score" and route_for(p).shadow:
            want[p.output.shadow_topic or f"{p.output.topic}.shadow"] = n
        if p.telemetry.enabled and p.kind == "score":
            want.setdefault(p.telemetry.topic, partitions)
    ensure_topics(cfg.kafka.client_settings(), want)
    for p in cfg.pipelines:
        if p.aggregates:
            # one changelog partition per input partition; compacted: a key's latest record is its state
            topic, n = changelog_topic(cfg, p), want[p.input.topic]
            got = ensure_topics(cfg.kafka.client_settings(), {topic: n}, configs={topic: {"cleanup.policy": "compact"}})
            if got.get(topic, n) != n:
                raise ConfigError(f"changelog topic {topic!r} has {got[topic]} partitions, the input {p.input.topic!r} "
                                  f"has {n}; they must match (delete it, or name another in aggregate_state.changelog_topic)")


def client_settings(cfg: PipelineFile, instance: str | None) -> tuple[ClientConf, ClientConf]:
    """librdkafka settings of one scoring process: our defaults, the mode's needs, then the file's own."""
    base = cfg.kafka.client_settings()
    consumer_conf = merged(CONSUMER_DEFAULTS, base, {"group.id": cfg.group_id,
                                                     "auto.commit.interval.ms": cfg.commit_interval_ms})
    if instance:
        consumer_conf["client.id"] = instance
        if cfg.static_membership:
            # a restarted member with the same id gets its partitions back without a rebalance
            consumer_conf["group.instance.id"] = f"{cfg.group_id}-{instance}"
    producer_conf = merged(PRODUCER_DEFAULTS, base, {})
    if cfg.delivery == "exactly_once":
        # Offsets travel inside the transaction; input written by transactions is read once committed.
        consumer_conf.update({"enable.auto.commit": False, "isolation.level": "read_committed"})
        # A stable id per process slot: a restarted slot fences its predecessor's open transaction.
        producer_conf.update({"transactional.id": f"streamscore-{cfg.group_id}-{instance or 'scorer'}",
                              "transaction.timeout.ms": 10000, "message.timeout.ms": 10000})
    consumer_conf.update(cfg.kafka.consumer)
    producer_conf.update(cfg.kafka.producer)
    return consumer_conf, producer_conf


def batcher_for(p: PipelineConfig) -> AdaptiveBatcher:
    """A pipeline's own batcher, from its ``batching`` settings (max_size defaults by kind)."""
    b = p.batching
    if b.max_size is None:           # PipelineConfig fills in the default for its kind
        raise ConfigError(f"pipelines[{p.name}].batching.max_size: missing")
    return AdaptiveBatcher(max_size=b.max_size, max_wait_s=b.max_wait_ms / 1000.0,
                           latency_target_s=None if b.latency_target_ms is None else b.latency_target_ms / 1000.0,
                           close_by_need=b.close_by_need)


def build_scorer(cfg: PipelineFile, *, instance: str | None = None, index: int = 0) -> Scorer:
    from monitoring.metrics import GpuMetrics, ScorerMetrics, metrics_port_for, start_metrics_server

    problem = connection_error(cfg.kafka.client_settings())   # one clear line for bad credentials / TLS
    if problem is not None:
        raise ConfigError(problem)
    base = cfg.kafka.client_settings()
    admin = make_admin(base)
    registry = registry_for(cfg)
    metrics = ScorerMetrics(instance=instance or "")
    watchers: list[RegistryWatcher] = []
    registry_stop = threading.Event()    # set by scorer.stop(): a batch waiting on the registry or a lookup gives up
    runtimes = [build_runtime(cfg, p, registry, admin, watchers, metrics, registry_stop) for p in cfg.pipelines]
    # Topics only once every model and schema resolved: a start that fails creates nothing.
    prepare_topics(cfg)
    for rt in runtimes:
        rt.out_partitions = partition_count(admin, rt.output_topic) if partition_count(admin, rt.input_topic) else 0
    consumer_conf, producer_conf = client_settings(cfg, instance)
    port = metrics_port_for(cfg.metrics_port, index)
    if port is not None:
        bound = start_metrics_server(port, host=cfg.metrics_host)
        log.info("metrics on http://%s:%d/metrics", cfg.metrics_host, bound)
        consumer_conf.setdefault("statistics.interval.ms", STATS_INTERVAL_MS)
    consumer_conf["stats_cb"] = metrics.consumer_stats      # consumer lag per partition
    if any((p.model.device if p.model else p.embedder.device).startswith("cuda") for p in cfg.pipelines):
        GpuMetrics(instance=instance or "")
    for rt in runtimes:
        for slot in [*rt.arms, *rt.shadows]:
            a = slot.active
            metrics.model_info(rt.name, a.model.name, str(a.model.version), a.variant)
    batchers = {p.name: batcher_for(p) for p in cfg.pipelines}
    producer_limit = int(producer_conf.get("message.max.bytes", 1_000_000))
    for rt in runtimes:
        rt.dlq_max_bytes = min(producer_limit, topic_max_message_bytes(admin, rt.dlq_topic) or producer_limit)
    scorer = Scorer(consumer=make_consumer(consumer_conf),
                    sink=KafkaSink(make_producer(producer_conf), batch_produce=cfg.kafka.batch_produce),
                    pipelines=runtimes, batchers=batchers, queue_depth=cfg.queue_depth, delivery=cfg.delivery,
                    make_producer=lambda: make_producer(producer_conf),
                    commit_interval_s=cfg.commit_interval_ms / 1000.0, stop_timeout_s=cfg.stop_timeout_s,
                    metrics=metrics, native_consume=cfg.kafka.native_consume)
    for w in watchers:
        scorer.closers.append(w.start().close)
    if cfg.schema_registry is not None or any(p.lookups for p in cfg.pipelines):
        stop_scorer = scorer.stop

        def stop() -> None:
            registry_stop.set()
            stop_scorer()

        scorer.stop = stop  # type: ignore[method-assign]
    if hasattr(registry, "close"):        # after the watchers (appended first, closed first)
        scorer.closers.append(registry.close)
    return scorer
