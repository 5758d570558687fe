"""The side-stream monitor: a Faust app from telemetry to drift / shadow state in Redis.

Crash safety (why a SIGKILL + restart ends with the same window results):
1. All of a partition's state -- open window accumulators, watermark, alert hysteresis
   and the last applied telemetry offset -- is ONE key of a changelog-backed table, so it
   is restored as a unit, never half-updated.
2. A record at or below the restored ``offset`` is a replay and is skipped
   (``MonitorCore.apply``), so Faust committing behind the changelog cannot double-count.
3. A record is acknowledged only once its state change is on the broker: the handler
   waits for the changelog write (``TelemetryHandler._persist``; Faust's flush before a
   commit does not guarantee it), and the agent handles one record at a time
   (concurrency 1), so the committed offset never passes a record whose state change is
   not in the changelog; records after the committed offset are simply read again.
4. A record's Redis writes come before its state change, so a restored state never
   covers a window that is not in Redis. Closing a window is a pure function of the
   restored state and the replayed records, and Redis writes are idempotent per window
   (``RedisState``), so a window closed before the crash and closed again after it
   leaves one result and one alert.
5. The restored state, not the group's committed offset, says where reading resumes: when a
   recovery completes, and before Faust seeks the stream to the committed offsets, the
   offset after each restored partition state is committed (``faust_state.StateTable``), so a commit
   that got ahead of the changelog (or behind it) cannot skip (or re-read) a record; and the
   consumer's flow is held until Faust has finished resuming (records handed over before
   that were dropped unprocessed). A first record past that point all the same is logged as
   an error and counted.

Telemetry must be keyed by model (``TelemetryBuilder.key()``) so each model's windows
live in one partition.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Callable, Literal

import faust
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from monitoring.alerts import Hysteresis
from monitoring.drift import DEFAULT_ALPHA, PSI_DRIFT, PSI_WARNING
from monitoring.faust_state import Resume, state_table, until_done
from monitoring.monitor_core import MonitorCore
from monitoring.monitor_metrics import MonitorMetrics
from monitoring.redis_state import RedisState, redact
from monitoring.skip_log import SkipLog
from monitoring.telemetry import decode_telemetry
from monitoring.truth_app import GroundTruthConfig, RecordDecoder, add_ground_truth, check_partitions
from monitoring.truth_core import QualityDrop
from monitoring.windows import WindowSpec
from schemas.errors import ConfigError, DecodeError, validation_problems, yaml_problem

log = logging.getLogger(__name__)
STATE_TABLE = "monitor-state"
# The changelog and row-operation records go out in few, larger produce requests: at Faust's default
# (no linger, 16 KiB batches) writing the requests to the socket was ~30% of the monitor's CPU, and the
# ground-truth stages joined ~25% fewer records per CPU-second (bench.monitor_cost truth, docs/ground-truth.md).
PRODUCER_LINGER_S = 0.01
PRODUCER_BATCH_BYTES = 256 * 1024


class MonitorConfig(BaseModel):
    """The monitor's settings (``streamscore monitor -c FILE`` reads these from YAML or JSON)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    broker: str = Field(description="Kafka bootstrap servers, host:port[,host:port]")
    telemetry_topic: str = "streamscore-telemetry"
    redis_url: SecretStr = SecretStr("redis://localhost:6379/0")
    redis_prefix: str = "streamscore"
    app_id: str = "streamscore-monitor"
    registry: str | None = Field(None, description="model registry root holding the reference profiles")
    window_ms: int = Field(60_000, gt=0, description="window size: ms of event time, or events if window_kind=count")
    window_kind: Literal["time", "count"] = "time"
    slide_ms: int | None = Field(None, gt=0, description="sliding windows: the slide; None = tumbling")
    lateness_ms: int = Field(0, ge=0, description="how far behind the max event time a window may still fill")
    k: int = Field(2, ge=1, description="raise an alert after k drifted windows in a row")
    m: int = Field(3, ge=1, description="clear it after m clean windows in a row")
    alpha: float = Field(DEFAULT_ALPHA, gt=0, lt=1)
    psi_warning: float = PSI_WARNING
    psi_drift: float = PSI_DRIFT
    partitions: int | None = Field(None, ge=1, description="telemetry partitions; None = ask the broker")
    raw_topic: str | None = Field(None, description="reserved: a raw Transaction topic to profile (not implemented)")
    metrics_port: int | None = None
    ground_truth: list[GroundTruthConfig] = Field(default_factory=list,
                                                  description="per pipeline: join delayed labels to predictions")
    schema_registry_url: str | None = Field(None, description="decodes Avro predictions and labels (by schema id)")
    commit_interval_s: float = 1.0
    session_timeout_s: float = Field(10.0, gt=0, description="how soon a dead monitor's partitions move on")
    loglevel: str = "warning"

    @field_validator("raw_topic")
    @classmethod
    def _no_raw(cls, v: str | None) -> str | None:
        if v is not None:
            raise ValueError("raw_topic is not implemented yet; publish telemetry from the scorer instead")
        return v

    def window_spec(self) -> WindowSpec:
        return WindowSpec(size=self.window_ms, kind=self.window_kind, slide=self.slide_ms, lateness=self.lateness_ms)


def load_config(path: str | Path) -> MonitorConfig:
    import yaml
    from pydantic import ValidationError

    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read monitor config {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"monitor config {path} is not valid YAML: {yaml_problem(exc)}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"invalid monitor config ({path}): the top level must be a mapping, got {type(data).__name__}")
    try:
        return MonitorConfig.model_validate(data.get("monitor", data))
    except ValidationError as exc:
        raise ConfigError("\n".join([f"invalid monitor config ({path}):",
                                      *(f"  {line}" for line in validation_problems(exc, MonitorConfig))])) from exc


def check_config(config: MonitorConfig) -> str:
    """What the monitor resolves before it touches Kafka or Redis: the Redis URL, the registry
    holding the reference profiles, the window settings. Returns one line; raises ``ConfigError``."""
    from redis.connection import parse_url

    from models import DEMO_REGISTRY
    from models.registry import ModelRegistry

    url = config.redis_url.get_secret_value()
    try:
        parse_url(url)
    except ValueError as exc:
        raise ConfigError(f"redis_url {redact(url)!r}: {exc}") from exc
    if not all(part.rpartition(":")[2].isdigit() for part in config.broker.split(",")):
        raise ConfigError(f"broker {config.broker!r}: expected host:port[,host:port]")
    root = Path(config.registry) if config.registry else DEMO_REGISTRY
    if not root.is_dir():
        raise ConfigError(f"registry: directory {root} does not exist")
    config.window_spec()
    models = ModelRegistry(root).names()
    return (f"monitor config OK: {config.telemetry_topic} on {config.broker} -> Redis {redact(url)} "
            f"(prefix {config.redis_prefix}); reference profiles from {root} ({len(models)} models)")


class ProfileCache:
    """Reference profiles (and reference AUC) by (model, version) from a model registry directory."""

    def __init__(self, root: str | Path | None) -> None:
        from models import DEMO_REGISTRY
        from models.registry import ModelRegistry

        self.registry = ModelRegistry(Path(root) if root else DEMO_REGISTRY)
        self._cache: dict[tuple[str, str], Any] = {}

    def _entry(self, model: str, version: str) -> Any:
        key = (model, version)
        if key not in self._cache:
            try:
                self._cache[key] = self.registry.get(model, version)
            except Exception as exc:  # unknown model/version: judged once, logged once
                log.warning("no registry entry for %s:%s: %s", model, version, exc)
                self._cache[key] = None
        return self._cache[key]

    def __call__(self, model: str, version: str) -> Mapping[str, Any] | None:
        entry = self._entry(model, version)
        return (entry.reference_profile or None) if entry is not None else None

    def auc(self, model: str, version: str) -> float | None:
        """The version's reference AUC (``metrics.auc`` of its registry entry), if it has one."""
        entry = self._entry(model, version)
        value = entry.metrics.get("auc") if entry is not None else None
        return float(value) if value is not None else None


def ensure_topic(config: MonitorConfig) -> int:
    """Partitions of the telemetry topic, creating it (``partitions``, default 1) if missing; and the state changelog.

    The changelog (``<app_id>-monitor-state-changelog``, compacted, as many partitions as the
    telemetry topic) is created here, before Faust starts: created by Faust on a busy broker,
    its first metadata can show 0 partitions and the table refuses to start (PartitionsMismatch).
    Replication is the broker's default (3 on a cluster).
    """
    from confluent_kafka.admin import AdminClient

    from consumers.kafka_client import ensure_topics

    conf = {"bootstrap.servers": config.broker}
    topic = config.telemetry_topic
    parts = ensure_topics(conf, {topic: config.partitions or 1}, timeout=15)[topic]
    changelog = changelog_topic(config.app_id)
    ensure_topics(conf, {changelog: parts}, configs={changelog: {"cleanup.policy": "compact"}}, timeout=15)
    admin = AdminClient(conf)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        t = admin.list_topics(changelog, timeout=10).topics.get(changelog)
        if t is not None and t.error is None and len(t.partitions) == parts:
            break
        time.sleep(0.2)
    return parts


def ensure_truth_topics(config: MonitorConfig) -> dict[str, int]:
    """Per ground-truth entry, the partition count its topics share (a missing labels topic is
    created with it) and its state changelog, made before Faust starts (see ``ensure_topic``)."""
    from consumers.kafka_client import ensure_topics

    conf = {"bootstrap.servers": config.broker}
    out: dict[str, int] = {}
    for gt in config.ground_truth:
        have = ensure_topics(conf, dict.fromkeys(gt.predictions, config.partitions or 1), timeout=15)
        have |= ensure_topics(conf, {gt.labels.topic: have[gt.predictions[0]]}, timeout=15)
        parts = out[gt.name] = check_partitions(gt, have)
        ensure_topics(conf, {gt.rows_topic(config.app_id): parts}, timeout=15)
        logs = [changelog_topic(config.app_id, t) for t in (gt.join_table(), gt.quality_table())]
        ensure_topics(conf, dict.fromkeys(logs, parts), configs=dict.fromkeys(logs, {"cleanup.policy": "compact"}),
                      timeout=15)
    return out


def changelog_topic(app_id: str, table: str = STATE_TABLE) -> str:
    """Faust's name for a state table's changelog topic."""
    return f"{app_id}-{table}-changelog"


def resume_offsets(states: Mapping[int, Mapping[str, Any] | None]) -> dict[int, int]:
    """Partition -> the offset after its restored state's (partitions without a state: none)."""
    return {p: int(st["offset"]) + 1 for p, st in states.items() if st is not None}


def telemetry_resume(table: Any, topic: str) -> Resume:
    """The state table's recovery hook (``faust_state.StateTable``): resume each restored partition
    of ``topic`` after its state's offset."""
    def resume(parts: Iterable[int]) -> dict[tuple[str, int], int]:
        return {(topic, p): o for p, o in resume_offsets({p: table.get(str(p)) for p in parts}).items()}

    return resume


class TelemetryHandler:
    """One telemetry record at a time: state table update, Redis writes, metrics."""

    def __init__(self, core: MonitorCore, table: Any, sink: RedisState, metrics: MonitorMetrics) -> None:
        self.core, self.table, self.sink, self.metrics = core, table, sink, metrics
        self._seen: set[str] = set()
        self.skips = SkipLog(log, metrics.skipped)

    async def handle(self, partition: int, offset: int, value: bytes) -> None:
        key = str(partition)
        if key not in self._seen:
            self._check_start(key, partition, offset)
        try:
            summary = decode_telemetry(value)
        except DecodeError as exc:
            self.skips.skip("telemetry", f"{partition}/{offset}", f"undecodable: {exc}")
            return
        before = self.table.get(key)
        out = self.core.apply(before, offset, summary)
        if out is None:
            self.metrics.replayed.inc()
            return
        state, results = out
        # Redis first, the state second: a record at or below the restored offset is skipped, so
        # a state that reached the changelog before this record's windows reached Redis would
        # lose those windows for good at a crash in between.
        for result in results:
            await self.retry(lambda: self.sink.write_window(result))
            self.metrics.observe(result, state["alerts"])
        await self.retry(lambda: self.sink.heartbeat())
        await self._persist(key, state)
        self.metrics.telemetry.inc()

    def _check_start(self, key: str, partition: int, offset: int) -> None:
        """Log where this process picked up a partition; a first record past the restored state
        means records were skipped (the commit at recovery, ``StateTable``, did not take)."""
        self._seen.add(key)
        before = self.table.get(key)
        restored = None if before is None else int(before["offset"])
        log.info("partition %s: first record at offset %s, restored state at offset %s", partition, offset, restored)
        if restored is not None and offset > restored + 1:
            self.metrics.skipped_starts.inc()
            log.error("partition %s: offsets %s..%s were skipped: reading began past the restored state",
                      partition, restored + 1, offset - 1)

    async def _persist(self, key: str, state: dict[str, Any]) -> None:
        """Set the partition state and wait until its changelog record is on the broker.

        The record is acknowledged (and so committable) only when this returns. Faust's own
        flush before a commit does not wait for it: the producer buffer is drained with a
        0.1 s timeout and a record it has dequeued but not yet handed to the client is in
        neither queue, so a commit could pass a state change that a SIGKILL then loses (the
        restarted monitor skips the record: one batch short, or a window that never closes).
        A failed changelog write is logged by Faust only; it is repeated here.
        """
        async def write() -> None:
            self.table[key] = state   # one changelog record carries the whole partition state
            await self.table.last_write

        await until_done(write, "state changelog write")

    async def retry(self, fn: Callable[[], object]) -> None:
        """Run a Redis write on a worker thread until it succeeds.

        While Redis is down the agent holds here: the record is not acknowledged, so its
        offset is not committed and nothing after it is applied; the writes are idempotent,
        so one that reached Redis before its reply was lost is harmless to repeat. The
        event loop stays free meanwhile (Kafka heartbeats, commits of earlier records).
        """
        await until_done(lambda: asyncio.to_thread(fn), "redis write", self.metrics.redis_errors.inc)


def _broker_url(bootstrap: str) -> list[str]:
    return [f"kafka://{h.strip()}" for h in bootstrap.split(",") if h.strip()]


def build_app(config: MonitorConfig, *, partitions: int | None = None,
              truth_partitions: Mapping[str, int] | None = None) -> faust.App:
    """The Faust app: one agent on the telemetry topic and the changelog-backed state table;
    per ground-truth entry, one agent on its prediction and label topics and its own table."""
    parts = partitions or config.partitions or 1
    datadir = Path(tempfile.gettempdir()) / "streamscore-faust" / config.app_id   # not the working directory
    datadir.mkdir(parents=True, exist_ok=True)                                     # Faust does not make parents
    app = faust.App(
        config.app_id, broker=_broker_url(config.broker), store="memory://", web_enabled=False,
        datadir=str(datadir),
        topic_partitions=parts, topic_replication_factor=1, consumer_auto_offset_reset="earliest",
        broker_commit_interval=config.commit_interval_s, producer_acks=-1, table_standby_replicas=0,
        broker_session_timeout=config.session_timeout_s, broker_heartbeat_interval=config.session_timeout_s / 5,
        producer_linger=PRODUCER_LINGER_S, producer_max_batch_size=PRODUCER_BATCH_BYTES,
    )
    topic = app.topic(config.telemetry_topic, value_serializer="raw", key_serializer="raw", partitions=parts)
    table = state_table(app, STATE_TABLE, parts, resume=lambda t: telemetry_resume(t, config.telemetry_topic))
    profiles = ProfileCache(config.registry)
    core = MonitorCore(windows=config.window_spec(), hysteresis=Hysteresis(config.k, config.m),
                       profiles=profiles, alpha=config.alpha,
                       psi_warning=config.psi_warning, psi_drift=config.psi_drift)
    sink = RedisState(config.redis_url.get_secret_value(), prefix=config.redis_prefix)
    metrics = MonitorMetrics()
    handler = TelemetryHandler(core, table, sink, metrics)

    @app.agent(topic, concurrency=1)
    async def monitor(stream: Any) -> None:
        async for event in stream.events():
            await handler.handle(event.message.partition, event.message.offset, event.value)

    decoder = RecordDecoder(config.schema_registry_url)
    for gt in config.ground_truth:
        drop = None if gt.auc_drop is None else QualityDrop(profiles.auc, gt.auc_drop, Hysteresis(config.k, config.m))
        add_ground_truth(app, gt, (truth_partitions or {}).get(gt.name, parts), sink=sink, metrics=metrics,
                         decoder=decoder, retry=handler.retry, drop=drop)
    return app


def run_monitor(config: MonitorConfig, *, stop_event: threading.Event | None = None) -> None:
    """Run the monitor until SIGINT / SIGTERM, or until ``stop_event`` is set (from another thread)."""
    logging.basicConfig(level=config.loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parts = ensure_topic(config)
    log.info("monitor %s: %s -> %s (%d partitions)", config.app_id, config.telemetry_topic,
             redact(config.redis_url.get_secret_value()), parts)
    if config.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(config.metrics_port)
    truth_parts = ensure_truth_topics(config)
    app = build_app(config, partitions=parts, truth_partitions=truth_parts)
    from faust.worker import Worker

    worker = Worker(app, loglevel=config.loglevel, quiet=True, redirect_stdouts=False, override_logging=False)
    worker.spinner = None   # Faust's progress spinner writes cursor escapes (ESC[?25h) even when not on a terminal
    if stop_event is not None:
        def watch() -> None:
            stop_event.wait()
            worker.loop.call_soon_threadsafe(lambda: asyncio.ensure_future(worker.stop(), loop=worker.loop))

        threading.Thread(target=watch, name="monitor-stop", daemon=True).start()
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        if exc.code not in (None, 0):
            raise


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m monitoring.monitor_app")
    parser.add_argument("-c", "--config", required=True, help="monitor config (YAML or JSON)")
    args = parser.parse_args(argv)
    run_monitor(load_config(args.config))


if __name__ == "__main__":
    main()
