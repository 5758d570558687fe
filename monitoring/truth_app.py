"""Ground truth in the side-stream monitor: config, record decoding and the Faust agent.

Crash safety: the join state lives in a changelog-backed Faust table (``truth-<name>-join``), one
key per pending event plus one meta key per partition holding the last applied offset per topic
and naming the entries its record wrote (written first, completed after a crash), so a SIGKILL +
restart replays records after the committed offset and ``JoinCore`` skips the ones already
applied. The join sends row operations to an internal topic (``<app_id>-truth-<name>-rows``)
read by the quality stage (table ``truth-<name>-quality``, one key per joined row); they are
idempotent, so replaying them is harmless. See ``monitoring/truth_core.py``.

Co-partitioning: labels must be keyed like the scored events (the prediction's ``key``) and
every topic of one entry must have the same number of partitions, so an event's label and its
predictions meet in the same partition.
"""

from __future__ import annotations

import asyncio
import datetime
import io
import json
import logging
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Awaitable, Callable, Literal, Protocol

import faust
from pydantic import BaseModel, ConfigDict, Field, field_validator

from monitoring.monitor_metrics import MonitorMetrics
from monitoring.redis_state import RedisState
from monitoring.faust_state import DurableStore, persist, state_table
from monitoring.truth_core import HeadKind, JoinCore, Label, Prediction, QualityCore, QualityDrop, Store
from monitoring.windows import WindowSpec
from schemas.errors import ConfigError, DecodeError

log = logging.getLogger(__name__)
DAY_MS = 86_400_000
_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": DAY_MS}


def duration_ms(v: int | str) -> int:
    """``7d``, ``12h``, ``30m``, ``10s``, ``500ms`` or an int of ms."""
    if isinstance(v, int):
        return v
    m = re.fullmatch(r"\s*(\d+)\s*(ms|s|m|h|d)\s*", v)
    if m is None:
        raise ValueError(f"duration {v!r}: expected an int of ms or <n>ms|s|m|h|d, e.g. 7d")
    return int(m.group(1)) * _UNITS[m.group(2)]


class LabelsConfig(BaseModel):
    """Where one pipeline's labels arrive and how to read them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    topic: str
    id_field: str = "event_id"
    label_field: str = "label"
    time_field: str | None = Field("label_time", description="label time (ms); None = the Kafka timestamp")
    horizon: int = Field(7 * DAY_MS, gt=0, description="how long a prediction waits for its label (ms or 7d)")
    format: Literal["json", "avro"] = "json"

    @field_validator("horizon", mode="before")
    @classmethod
    def _horizon(cls, v: Any) -> Any:
        return duration_ms(v) if isinstance(v, str) else v


class GroundTruthConfig(BaseModel):
    """One pipeline's join: its prediction topics (output, shadow) and its labels."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    predictions: list[str] = Field(min_length=1, description="prediction topics (the output and shadow topics)")
    labels: LabelsConfig
    window_ms: int = Field(3_600_000, gt=0, description="tumbling quality windows of label time")
    lateness_ms: int = Field(0, ge=0, description="how far behind the newest label time a window stays open")
    auc_drop: float | None = Field(0.05, gt=0, lt=1, description="alert when a window's AUC falls this far below "
                                   "the version's reference AUC (registry metrics.auc), k windows in a row; None: off")
    kind: HeadKind = Field("score", description="the head judged: score (fields score + decision; boolean labels), "
                           "classes (a predicted class label: accuracy, macro-F1), value (a number: MAE, RMSE)")
    field: str | None = Field(None, description="classes / value: the prediction field (default label / value)")
    compare_pairs: int = Field(5000, ge=0, description="joined (score, label) rows kept per closed window and "
                               "model|version|variant for `streamscore models compare` (0: none)")
    compare_windows: int = Field(168, ge=1, description="closed windows of those rows kept per model|version|variant")

    def join_table(self) -> str:
        return f"truth-{self.name}-join"

    def quality_table(self) -> str:
        return f"truth-{self.name}-quality"

    def rows_topic(self, app_id: str) -> str:
        """The internal topic from the join to the quality stage (keyed by model|version|variant)."""
        return f"{app_id}-truth-{self.name}-rows"

    def topics(self) -> list[str]:
        return [*self.predictions, self.labels.topic]


def field_at(record: Mapping[str, Any], path: str) -> Any:
    """A dotted path's value; ``DecodeError`` if absent."""
    cur: Any = record
    for part in path.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            raise DecodeError(f"field {path!r} missing", reason="missing_field")
        cur = cur[part]
    return cur


def _ms(v: Any) -> int:
    return round(v.timestamp() * 1000) if isinstance(v, datetime.datetime) else int(v)


class RecordDecoder:
    """JSON, or Confluent-framed Avro whose writer schema comes from the registry by id."""

    def __init__(self, registry_url: str | None) -> None:
        self.registry_url = registry_url
        self._client: Any = None

    def decode(self, value: bytes) -> Mapping[str, Any]:
        if value[:1] == b"\x00":
            return self._avro(value)
        try:
            rec = json.loads(value)
        except ValueError as exc:
            raise DecodeError(f"not JSON: {exc}", raw=value) from exc
        if not isinstance(rec, dict):
            raise DecodeError("a JSON record must be an object", raw=value)
        return rec

    def _avro(self, value: bytes) -> Mapping[str, Any]:
        import fastavro

        from schemas.wire import unframe

        if self.registry_url is None:
            raise DecodeError("an Avro record, but the monitor has no schema_registry_url", raw=value)
        if self._client is None:
            from schemas.registry_client import RegistryClient, RegistrySettings

            self._client = RegistryClient(RegistrySettings(url=self.registry_url))
        schema_id, body = unframe(value)
        try:
            rec = fastavro.schemaless_reader(io.BytesIO(bytes(body)), self._client.by_id(schema_id))
        except (ValueError, EOFError, IndexError) as exc:
            raise DecodeError(f"Avro body does not match schema {schema_id}: {exc}", raw=value) from exc
        if not isinstance(rec, dict):
            raise DecodeError("an Avro record must be a record", raw=value)
        return rec


def to_prediction(rec: Mapping[str, Any], kind: HeadKind = "score", field: str | None = None) -> Prediction | None:
    """The prediction of the judged head (``score`` + ``decision``, a class label, or a value);
    None for a record without it (another head)."""
    names = ["score", "decision"] if kind == "score" else [field or ("label" if kind == "classes" else "value")]
    if any(n not in rec for n in names):
        return None
    got = rec[names[0]]
    return Prediction(event_id=str(rec["event_id"]), model=str(rec["model"]), version=str(rec["version"]),
                      variant=str(rec["variant"]), score=str(got) if kind == "classes" else float(got),
                      decision=bool(rec["decision"]) if kind == "score" else None, event_time=_ms(rec["event_time"]))


def to_label(rec: Mapping[str, Any], cfg: LabelsConfig, timestamp_ms: int, kind: HeadKind = "score") -> Label:
    y = field_at(rec, cfg.label_field)
    if kind == "classes":
        y = str(y)
    elif kind == "value":
        if isinstance(y, bool) or not isinstance(y, (int, float)):
            raise DecodeError(f"label {y!r}: expected a number (a value head)", reason="bad_label")
        y = float(y)
    else:
        if isinstance(y, str):
            if y.lower() not in ("0", "1", "true", "false"):
                raise DecodeError(f"label {y!r}: expected a boolean, 0/1 or true/false", reason="bad_label")
            y = y.lower() in ("1", "true")
        y = bool(y)
    t = timestamp_ms if cfg.time_field is None else _ms(field_at(rec, cfg.time_field))
    return Label(event_id=str(field_at(rec, cfg.id_field)), y=y, time=t)


Retry = Callable[[Callable[[], object]], Awaitable[None]]


class RowSender(Protocol):
    async def __call__(self, ops: Sequence[tuple[Mapping[str, Any], int]]) -> None:
        """Send every (operation, quality partition) and return once all are delivered."""


def quality_partition(key: str, parts: int) -> int:
    """The quality partition of one model|version|variant (stable across processes)."""
    return zlib.crc32(key.encode()) % parts


class JoinHandler:
    """One prediction or label record at a time: the join, its row operations, the state table.

    Row operations are sent (and their delivery awaited) and the label counts written to Redis
    BEFORE the state holding the join is written, and the record returns (is acknowledged) only
    once that state is on the changelog (``faust_state.persist``): a crash before it replays the
    record, and the operations and Redis writes are idempotent."""

    def __init__(self, cfg: GroundTruthConfig, core: JoinCore, table: DurableStore, sink: RedisState,
                 metrics: MonitorMetrics, decoder: RecordDecoder, retry: Retry, send: RowSender,
                 quality_parts: int) -> None:
        self.cfg, self.core, self.table, self.sink = cfg, core, table, sink
        self.metrics, self.decoder, self.retry, self.send = metrics, decoder, retry, send
        self.quality_parts = quality_parts

    async def handle(self, topic: str, partition: int, offset: int, value: bytes, timestamp_ms: int) -> None:
        self.table.take_writes()    # what the last record wrote was awaited: start afresh
        try:
            rec = await asyncio.to_thread(self.decoder.decode, value)   # a registry lookup may wait out an outage
            if topic == self.cfg.labels.topic:
                out = self.core.apply_label(self.table, partition, topic, offset,
                                            to_label(rec, self.cfg.labels, timestamp_ms, self.cfg.kind))
            else:
                pred = to_prediction(rec, self.cfg.kind, self.cfg.field)
                if pred is None:
                    return
                out = self.core.apply_prediction(self.table, partition, topic, offset, pred)
        except (DecodeError, KeyError, TypeError, ValueError) as exc:
            log.warning("skipping %s record at %s/%s: %s", self.cfg.name, partition, offset, exc)
            return
        if out is None:
            self.metrics.replayed.inc()
            return
        sends = [({**op, "src": partition}, qp) for op in out.ops for qp in (
            range(self.quality_parts) if op["op"] == "wm" else [quality_partition(op["key"], self.quality_parts)])]
        if sends:
            await self.send(sends)   # one delivery wait per record, not per operation
        if any(op["op"] == "wm" for op in out.ops) and out.meta is not None:
            counts = dict(out.meta["counts"])
            await self.retry(lambda: self.sink.write_label_counts(self.cfg.name, partition, counts))
            self.metrics.observe_labels(self.cfg.name, partition, counts)
        # a few small changelog records (the partition meta, then the event's entry), on the broker
        # before the record is acknowledged
        await persist(self.table, out, f"{self.cfg.name} join changelog write")


def quality_resume(store: Store, parts: Iterable[int], topic: str) -> dict[tuple[str, int], int]:
    """(rows topic, partition) -> the offset after the last row operation the stored state applied."""
    return {(topic, p): int(off) + 1 for p in parts if (off := store.get(f"o|{p}")) is not None}


class QualityHandler:
    """One row operation at a time: windows per model|version|variant, closed ones to Redis.

    The operation's offset is written after its other writes, deletes included (key
    ``o|<partition>``), so a restored state says where reading resumes (``quality_resume``); a crash
    before it re-reads an idempotent operation, and none after a delete it did not make."""

    def __init__(self, cfg: GroundTruthConfig, core: QualityCore, table: DurableStore, sink: RedisState,
                 metrics: MonitorMetrics, retry: Retry) -> None:
        self.cfg, self.core, self.table, self.sink, self.metrics, self.retry = cfg, core, table, sink, metrics, retry

    async def handle(self, partition: int, offset: int, value: bytes) -> None:
        op = json.loads(value)
        self.table.take_writes()    # what the last record wrote was awaited: start afresh
        update, results = self.core.apply(self.table, partition, int(op["src"]), op)
        update.then[f"o|{partition}"] = offset     # last: a crash before it re-reads the operation
        for result in results:      # Redis first (idempotent): a crash before the table write replays the close
            await self.retry(lambda: self.sink.write_quality(self.cfg.name, result,
                                                             keep_pairs=self.cfg.compare_windows))
            self.metrics.observe_quality(result)
        await persist(self.table, update, f"{self.cfg.name} quality changelog write")


def check_partitions(cfg: GroundTruthConfig, parts: Mapping[str, int]) -> int:
    """The one partition count shared by every topic of ``cfg``; ``ConfigError`` otherwise."""
    counts = {t: parts[t] for t in cfg.topics()}
    if len(set(counts.values())) != 1:
        raise ConfigError(f"ground_truth {cfg.name}: its topics must have equal partition counts "
                          f"(labels keyed like the events), got {counts}")
    return next(iter(counts.values()))


def add_ground_truth(app: faust.App, gt: GroundTruthConfig, parts: int, *, sink: RedisState,
                     metrics: MonitorMetrics, decoder: RecordDecoder, retry: Retry,
                     drop: QualityDrop | None = None) -> None:
    """The join agent (prediction + label topics), the rows topic and the quality agent of one entry."""
    windows = WindowSpec(size=gt.window_ms, lateness=gt.lateness_ms)
    rows = app.topic(gt.rows_topic(app.conf.id), value_serializer="raw", key_serializer="raw", partitions=parts)

    async def send(ops: Sequence[tuple[Mapping[str, Any], int]]) -> None:
        futs = [await rows.send(key=str(op.get("key", "")).encode(), value=json.dumps(op).encode(),
                                partition=partition, force=True) for op, partition in ops]
        await asyncio.gather(*futs)   # delivered before the join state that caused them is written

    join_table = state_table(app, gt.join_table(), parts, keep_writes=True,
                             resume=lambda t: lambda ps: JoinCore.resume(t, ps))
    joiner = JoinHandler(gt, JoinCore(windows=windows, horizon_ms=gt.labels.horizon), join_table, sink, metrics,
                         decoder, retry, send, parts)
    quality_table = state_table(app, gt.quality_table(), parts, keep_writes=True,
                                resume=lambda t: lambda ps: quality_resume(t, ps, gt.rows_topic(app.conf.id)))
    scorer = QualityHandler(gt, QualityCore(windows=windows, sources=parts, drop=drop,
                                            pairs_per_window=gt.compare_pairs, kind=gt.kind),
                            quality_table, sink, metrics, retry)
    sources = app.topic(*gt.topics(), value_serializer="raw", key_serializer="raw", partitions=parts)

    async def join(stream: Any) -> None:
        async for event in stream.events():
            m = event.message
            await joiner.handle(m.topic, m.partition, m.offset, event.value, int(m.timestamp * 1000))

    async def score(stream: Any) -> None:
        async for event in stream.events():
            await scorer.handle(event.message.partition, event.message.offset, event.value)

    app.agent(sources, name=f"truth-{gt.name}-join", concurrency=1)(join)
    app.agent(rows, name=f"truth-{gt.name}-quality", concurrency=1)(score)
