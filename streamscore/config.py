"""The pipeline file: YAML, validated by pydantic, frozen.

Our own keys are validated strictly (unknown keys are errors that name the valid ones);
librdkafka settings under ``kafka.consumer`` / ``kafka.producer`` pass through untouched
and are merged over our defaults. The environment is read here and nowhere else.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from consumers.runtime import Delivery, Partitioning, PipelineKind
from models.torch_backend import TorchDtype
from schemas.errors import ConfigError, validation_problems, yaml_problem


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaConfig(_Strict):
    bootstrap_servers: str = "127.0.0.1:9092"
    consumer: dict[str, Any] = Field(default_factory=dict)   # librdkafka consumer settings
    producer: dict[str, Any] = Field(default_factory=dict)   # librdkafka producer settings
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = None
    # Enqueue each batch's outputs with one librdkafka call instead of one produce() per
    # message (sinks/batch_produce.py); false forces the per-message path.
    batch_produce: bool = True
    # Drain fetched records into arrays with one librdkafka call instead of one confluent-kafka
    # Message per record (consumers/native_consume.py, docs/native-consume.md); off: Consumer.consume.
    # Where the route cannot be verified the scorer logs why and consumes through Consumer.consume.
    # On by default: +16% events/s on the bench (docs/native-consume.md, interleaved runs).
    native_consume: bool = True

    @field_validator("ssl_ca_location")
    @classmethod
    def _ca_exists(cls, v: str | None) -> str | None:
        # librdkafka would refuse it only when a client is made, with "ssl.ca.location failed: system lib"
        if v is not None and v != "probe" and not Path(v).exists():
            raise ValueError(f"CA file {v} does not exist")
        return v

    def client_settings(self) -> dict[str, Any]:
        """Connection settings common to consumers, producers and admin clients."""
        conf: dict[str, Any] = {"bootstrap.servers": self.bootstrap_servers}
        if self.security_protocol != "PLAINTEXT":
            conf["security.protocol"] = self.security_protocol
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password is not None:
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        if self.ssl_ca_location:
            conf["ssl.ca.location"] = self.ssl_ca_location
        return conf


class SchemaRegistryConfig(_Strict):
    """A Confluent-API schema registry (Confluent, Apicurio, Karapace, Redpanda)."""

    url: str
    basic_auth: SecretStr | None = None        # "user:password"
    ssl_ca_location: str | None = None
    cache_ttl_s: float = Field(300.0, gt=0)    # how long a subject's latest version is trusted

    def settings(self) -> Any:
        from schemas.registry_client import RegistrySettings

        auth = None
        if self.basic_auth is not None:
            user, sep, password = self.basic_auth.get_secret_value().partition(":")
            if not sep:
                raise ConfigError("schema_registry.basic_auth: expected 'user:password'")
            auth = (user, password)
        return RegistrySettings(url=self.url, basic_auth=auth, ssl_ca_location=self.ssl_ca_location,
                                cache_ttl_s=self.cache_ttl_s)


class InputConfig(_Strict):
    topic: str
    format: Literal["avro", "json"] = "avro"
    # a bundled name, a path to an .avsc file, or registry:<subject>[:<version>]
    schema_name: str = Field("transaction", alias="schema")
    id_field: str | None = "event_id"          # None: "<topic>:<partition>:<offset>"
    time_field: str | None = "event_time"      # None: the Kafka message timestamp
    dead_letter_topic: str | None = None       # default: "<topic>.dlq"
    max_message_bytes: int = Field(1_000_000, gt=0)
    validate_finite: bool = True               # NaN/inf in model features -> dead letter
    ranges: dict[str, tuple[float, float]] = Field(default_factory=dict)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @property
    def dlq_topic(self) -> str:
        return self.dead_letter_topic or f"{self.topic}.dlq"


class ModelRef(_Strict):
    name: str
    version: str | None = None                 # None: the version in `stage`, followed live (hot swap)
    stage: Literal["staging", "production"] = "production"
    device: str = "cpu"
    hot_swap: bool = True                      # watch the registry and swap newly promoted versions in
    watch_interval_ms: int = Field(500, ge=10)
    features: list[Any] | None = None          # overrides the registry entry's input_spec.features
    pre: str | None = None                     # "package.module:function"; overrides the entry's pre hook
    post: str | None = None                    # "package.module:function"; overrides the entry's post hook
    hook_path: str | None = None               # a directory put first on sys.path to import hooks from

    @field_validator("features")
    @classmethod
    def _features(cls, v: list[Any] | None) -> list[Any] | None:
        if v is not None:
            from models.base import InputSpec
            from schemas.errors import ModelError

            try:
                InputSpec.from_dict({"features": v})
            except ModelError as exc:
                raise ValueError(str(exc)) from exc
        return v


class RedisLookupConfig(_Strict):
    """Where a lookup reads: one hash per key (docs/online-features.md)."""

    url: SecretStr | None = None               # None: $REDIS_URL, else redis://127.0.0.1:6379/0
    key: str                                   # one {field} of the event, e.g. "acct:{account_id}"
    fields: list[str] | dict[str, Literal["float", "string"]]   # a list: every field is a float
    timeout_ms: float = Field(1000.0, gt=0)    # one round trip slower than this counts as "not answering"
    max_wait_s: float | None = Field(600.0, gt=0)   # a batch waits this long for the store, then the scorer fails


class LookupConfig(_Strict):
    """Per-key values read once per batch and joined in as columns ``<name>.<field>``."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    redis: RedisLookupConfig
    defaults: dict[str, float | str] = Field(default_factory=dict)   # per field, when the key or field is missing
    max_age_s: float | None = Field(None, gt=0)    # an entry whose _ts is older counts as missing
    on_missing: Literal["default", "dead_letter"] = "default"
    cache_ttl_s: float = Field(1.0, ge=0)          # 0: no local cache
    cache_max_keys: int = Field(100_000, ge=1)

    @model_validator(mode="after")
    def _spec(self) -> "LookupConfig":
        try:
            self.spec().check()
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        return self

    def spec(self) -> Any:
        """The ``models.lookups.LookupSpec`` this section describes."""
        from models.lookups import LookupSpec

        f = self.redis.fields
        kinds: tuple[tuple[str, Literal["float", "string"]], ...] = (
            tuple((k, "float") for k in f) if isinstance(f, list) else tuple(f.items()))
        return LookupSpec(name=self.name, key=self.redis.key, fields=kinds, defaults=tuple(self.defaults.items()),
                          max_age_s=self.max_age_s, on_missing=self.on_missing, cache_ttl_s=self.cache_ttl_s,
                          cache_max_keys=self.cache_max_keys)


class AggregateConfig(_Strict):
    """A per-key streaming aggregate over a sliding window, a column ``<name>`` (docs/online-features.md)."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    key: str                                   # the input field the input topic is keyed by, e.g. account_id
    op: str                                    # count | sum | mean | min | max | distinct_count
    field: str | None = None                   # the input field aggregated (count: optional)
    window: str                                # e.g. 10m, 1h, 24h: (t - window, t] of the record's Kafka timestamp

    @model_validator(mode="after")
    def _spec(self) -> "AggregateConfig":
        try:
            self.spec().check()
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        return self

    def spec(self) -> Any:
        """The ``models.aggregates.AggregateSpec`` this entry describes."""
        from models.aggregates import AggregateSpec, parse_window

        return AggregateSpec(name=self.name, key=self.key, op=self.op, window_ms=parse_window(self.window),  # type: ignore[arg-type]
                             field=self.field)


class AggregateStateConfig(_Strict):
    """Where a pipeline's aggregate state is kept, and how long evicted entries wait."""

    changelog_topic: str | None = None         # default "<group_id>-<pipeline>-aggregates-changelog"
    grace: str = "10m"                         # entries are kept this long past the longest window (replays)

    @field_validator("grace")
    @classmethod
    def _grace(cls, v: str) -> str:
        from models.aggregates import parse_window

        try:
            parse_window(v)
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        return v


class OutputConfig(_Strict):
    topic: str
    partitioning: Partitioning = "input"   # see README: "input" keeps per-key order cheaply
    shadow_topic: str | None = None            # default "<topic>.shadow" when the route has shadows
    # Also stamp model/version/variant as Kafka headers (the record always has them). Off by
    # default: messages with headers take the per-message produce path (~25% slower flat out).
    headers: bool = False
    carry: list[str] = Field(default_factory=list)   # input fields (dotted paths) copied into each prediction
    subject_strategy: Literal["topic", "record"] = "topic"   # <topic>-value, or <namespace>.<name>
    include_features: bool = False             # a `features` map (model input column -> value) in each prediction


class TelemetryConfig(_Strict):
    enabled: bool = True
    topic: str = "streamscore-telemetry"
    sample: int | None = Field(512, ge=1)      # rows per batch used for feature histograms (None = all)


SCORE_MAX_BATCH = 8192   # rows; per-batch costs dominate below this when a backlog is drained
EMBED_MAX_BATCH = 2048   # texts; a transformer pass over more would hold a batch for seconds on a CPU


class BatchingConfig(_Strict):
    max_size: int | None = Field(None, ge=1, le=65536)   # None: SCORE_MAX_BATCH or EMBED_MAX_BATCH by kind
    max_wait_ms: float = Field(6.0, ge=0)
    latency_target_ms: float | None = Field(20.0, gt=0)
    close_by_need: bool = True        # close once the fetched rows are drained and model + sink are idle (docs/performance.md)


class EmbedderConfig(_Strict):
    """The text pipeline's model: all-MiniLM-L6-v2, whose weights ship in a Python package."""

    device: str = "cpu"                        # cpu | cuda | auto
    dtype: TorchDtype = "float32"
    max_length: int = Field(128, ge=2, le=512)
    batch_size: int = Field(64, ge=1)          # rows per length-bucketed micro-batch
    head: str | None = None                    # optional classifier head (.npz from LabelHead.save)


class PipelineConfig(_Strict):
    name: str
    kind: PipelineKind = "score"               # embed: TextEvent -> Embedding with MiniLM
    input: InputConfig
    model: ModelRef | None = None              # required for kind=score
    embedder: EmbedderConfig = EmbedderConfig()
    output: OutputConfig
    batching: BatchingConfig = BatchingConfig()
    decision_threshold: float | None = Field(None, ge=0, le=1)   # None: the registry entry's
    route: dict[str, Any] | None = None        # canary / ab / shadow routing (models.routing.RouteSpec)
    telemetry: TelemetryConfig = TelemetryConfig()
    lookups: list[LookupConfig] = Field(default_factory=list)   # online features from Redis, per batch
    aggregates: list[AggregateConfig] = Field(default_factory=list)   # per-key sliding-window aggregates
    aggregate_state: AggregateStateConfig = AggregateStateConfig()

    @model_validator(mode="before")
    @classmethod
    def _max_batch(cls, data: Any) -> Any:
        """An unset ``batching.max_size`` becomes the default for the pipeline's kind."""
        if not isinstance(data, dict):
            return data
        size = SCORE_MAX_BATCH if data.get("kind", "score") == "score" else EMBED_MAX_BATCH
        b = data.get("batching")
        if b is None:
            return {**data, "batching": {"max_size": size}}
        if isinstance(b, dict) and b.get("max_size") is None:
            return {**data, "batching": {**b, "max_size": size}}
        if isinstance(b, BatchingConfig) and b.max_size is None:
            return {**data, "batching": b.model_copy(update={"max_size": size})}
        return data

    @model_validator(mode="after")
    def _kind(self) -> "PipelineConfig":
        if self.kind == "score" and self.model is None:
            raise ValueError("model is required for a scoring pipeline (kind: score)")
        if self.kind == "embed" and self.route is not None:
            raise ValueError("route applies to scoring pipelines only")
        if self.kind == "embed" and (self.lookups or self.aggregates or self.output.include_features):
            raise ValueError("lookups, aggregates and output.include_features apply to scoring pipelines only")
        names = [lk.name for lk in self.lookups]
        if len(set(names)) != len(names):
            raise ValueError(f"lookup names must be unique, got {names}")
        aggs = [a.name for a in self.aggregates]
        if len(set(aggs)) != len(aggs):
            raise ValueError(f"aggregate names must be unique, got {aggs}")
        looked_up = set(names) | {c for lk in self.lookups for c in lk.spec().columns()}
        clash = sorted(set(aggs) & looked_up)
        if clash:
            raise ValueError(f"aggregates {clash}: names clash with lookups")
        return self

    @field_validator("route")
    @classmethod
    def _route(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            from models.routing import RouteSpec

            try:
                RouteSpec.from_dict(v)
            except ConfigError as exc:
                raise ValueError(str(exc)) from exc
        return v


class PipelineFile(_Strict):
    kafka: KafkaConfig = KafkaConfig()
    group_id: str = "streamscore"
    delivery: Delivery = "at_least_once"
    static_membership: bool = False             # group.instance.id = <group_id>-<--instance> (needs --instance)
    commit_interval_ms: int = Field(100, ge=1)
    registry: str | None = None                 # default: the bundled demo registry
    schema_registry: SchemaRegistryConfig | None = None   # None: the bundled schemas' fixed ids
    queue_depth: int = Field(4, ge=1, le=64)    # batches buffered between stages
    gil_switch_ms: float = Field(1.0, gt=0, le=100)   # longest GIL slice of one stage's thread (CPython's default 5)
    metrics_port: int | None = Field(None, ge=0, le=65535)   # with --processes N: port + index (0 = any free)
    metrics_host: str = "127.0.0.1"             # 0.0.0.0 to be scraped from other hosts
    stop_timeout_s: float = Field(30.0, ge=5, le=600)   # SIGTERM -> exit 0 within this, whatever the cluster does
    pipelines: list[PipelineConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> "PipelineFile":
        names = [p.name for p in self.pipelines]
        if len(set(names)) != len(names):
            raise ValueError(f"pipeline names must be unique, got {names}")
        topics = [p.input.topic for p in self.pipelines]
        if len(set(topics)) != len(topics):
            raise ValueError(f"each input topic may feed one pipeline, got {topics}")
        return self

    @field_validator("group_id")
    @classmethod
    def _group(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("group_id must not be empty")
        return v


def _format_errors(exc: ValidationError, source: str) -> str:
    return "\n".join([f"invalid pipeline config ({source}):", *(f"  {line}" for line in validation_problems(exc, PipelineFile))])


def apply_env(raw: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Environment overrides, read in this one place: KAFKA_BOOTSTRAP, KAFKA_SASL_*, STREAMSCORE_SECRETS_FILE,
    STREAMSCORE_NATIVE_CONSUME (``kafka.native_consume``), SCHEMA_REGISTRY_URL (the url of a
    ``schema_registry`` section the file has)."""
    env = dict(os.environ if env is None else env)
    kafka = dict(raw.get("kafka") or {})
    if env.get("KAFKA_BOOTSTRAP"):
        kafka["bootstrap_servers"] = env["KAFKA_BOOTSTRAP"]
    secrets_file = env.get("STREAMSCORE_SECRETS_FILE")
    if secrets_file:
        secrets = yaml.safe_load(Path(secrets_file).read_text()) or {}
        for key in ("sasl_username", "sasl_password"):
            if key in secrets:
                kafka[key] = secrets[key]
    for key in ("sasl_username", "sasl_password", "sasl_mechanism", "security_protocol", "ssl_ca_location"):
        val = env.get(f"KAFKA_{key.upper()}")
        if val:
            kafka[key] = val
    if env.get("STREAMSCORE_NATIVE_CONSUME"):
        kafka["native_consume"] = env["STREAMSCORE_NATIVE_CONSUME"]   # pydantic reads 1/0/true/false
    out = dict(raw)
    if kafka:
        out["kafka"] = kafka
    if env.get("SCHEMA_REGISTRY_URL") and isinstance(raw.get("schema_registry"), dict):
        out["schema_registry"] = {**raw["schema_registry"], "url": env["SCHEMA_REGISTRY_URL"]}
    return out


def parse_config(raw: Any, *, source: str = "<dict>", env: dict[str, str] | None = None) -> PipelineFile:
    if not isinstance(raw, dict):
        raise ConfigError(f"invalid pipeline config ({source}): the top level must be a mapping, got {type(raw).__name__}")
    try:
        return PipelineFile.model_validate(apply_env(raw, env))
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from exc


def load_config(path: str | Path, *, env: dict[str, str] | None = None) -> PipelineFile:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"pipeline config {p} does not exist")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"pipeline config {p} is not valid YAML: {yaml_problem(exc)}") from exc
    return parse_config(raw, source=str(p), env=env)


def kafka_from_env(bootstrap: str | None = None, *, env: dict[str, str] | None = None) -> KafkaConfig:
    """Kafka settings of a command without a pipeline file (``produce``): the environment, then ``bootstrap``."""
    raw = apply_env({}, env).get("kafka", {})
    if bootstrap:
        raw = {**raw, "bootstrap_servers": bootstrap}
    try:
        return KafkaConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [f"  kafka.{line}" for line in validation_problems(exc, KafkaConfig)]
        raise ConfigError("\n".join(["invalid Kafka settings (from the environment):", *lines])) from exc


def redis_url_from_env(env: dict[str, str] | None = None) -> str:
    """``$REDIS_URL``, else a local default. May carry a password; print it only through redact()."""
    env = dict(os.environ if env is None else env)
    return env.get("REDIS_URL") or "redis://127.0.0.1:6379/0"


def monitor_env_overrides(env: dict[str, str] | None = None, *, file_registry: str | None = None) -> dict[str, Any]:
    """KAFKA_BOOTSTRAP / REDIS_URL / SCHEMA_REGISTRY_URL override the monitor file's broker, redis_url and
    schema_registry_url; the last only where the file names a registry (``file_registry``), as for a pipeline
    file: a scorer without one writes with the bundled schemas' ids, which the monitor then reads."""
    env = dict(os.environ if env is None else env)
    out: dict[str, Any] = {}
    if env.get("KAFKA_BOOTSTRAP"):
        out["broker"] = env["KAFKA_BOOTSTRAP"]
    if env.get("REDIS_URL"):
        out["redis_url"] = SecretStr(env["REDIS_URL"])
    if env.get("SCHEMA_REGISTRY_URL") and file_registry is not None:
        out["schema_registry_url"] = env["SCHEMA_REGISTRY_URL"]
    return out
