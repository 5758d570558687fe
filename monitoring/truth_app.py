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
from monitoring.skip_log import SkipLog
from monitoring.redis_state import RedisState
from monitoring.faust_state import DurableStore, persist, persist_staged, state_table, until_done
from monitoring.truth_core import (EST_KEEP, HeadKind, JoinCore, JoinUpdate, Label, Op, Prediction, QualityCore,
                                   QualityDrop, Staged, Store, write)
from monitoring.windows import WindowSpec
from schemas.errors import ConfigError, DecodeError, UnknownSchemaError

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
    batch: int = Field(500, ge=1, description="records per batch of each stage (one changelog wait and one "
                       "delivery wait per batch; 1: one record at a time)")

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
    """JSON, or Confluent-framed Avro whose writer schema comes from the registry by id; without a
    registry, from the bundled schemas' fixed ids (what a scorer without a registry writes with)."""

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

        if self._client is None:
            if self.registry_url is None:
                from schemas.registry import SchemaRegistry

                self._client = SchemaRegistry.default()
            else:
                from schemas.registry_client import RegistryClient, RegistrySettings

                self._client = RegistryClient(RegistrySettings(url=self.registry_url))
        schema_id, body = unframe(value)
        try:
            schema = self._client.by_id(schema_id)
        except UnknownSchemaError:
            if self.registry_url is not None:
                raise
            raise DecodeError(f"an Avro record of schema id {schema_id}, which is no bundled schema, and the "
                              "monitor has no schema_registry_url", raw=value) from None
        try:
            rec = fastavro.schemaless_reader(io.BytesIO(bytes(body)), schema)
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


JoinRecord = tuple[str, int, int, bytes, int]   # topic, partition, offset, value, Kafka timestamp (ms)
BATCH_WITHIN_S = 0.05  # how long a stage waits for a batch to fill


class JoinHandler:
    """Batches of prediction and label records: the join, its row operations, the state table.

    A batch's state is written first, per partition as one update whose meta names the batch's
    writes and its row operations (``JoinCore.batch_update``), and awaited on the changelog; then its
    row operations are sent and their delivery awaited, then the label counts go to Redis; then the
    batch returns (its records are acknowledged). A crash before the meta is on the changelog replays
    the batch's records (none of its operations was sent); one after it sends the meta's operations
    again (``outbox``) before the partition's next batch. Operations are sent only from a stored
    state, never derived twice: a replay may see the topics' records in another order than the first
    run, and derive other operations that do not undo the first run's (a row left in a window)."""

    def __init__(self, cfg: GroundTruthConfig, core: JoinCore, table: DurableStore, sink: RedisState,
                 metrics: MonitorMetrics, decoder: RecordDecoder, retry: Retry, send: RowSender,
                 quality_parts: int) -> None:
        self.cfg, self.core, self.table, self.sink = cfg, core, table, sink
        self.metrics, self.decoder, self.retry, self.send = metrics, decoder, retry, send
        self.quality_parts = quality_parts
        self.flushed: set[int] = set()   # partitions whose stored outbox this process has delivered
        self.skips = SkipLog(log, metrics.skipped)

    async def handle(self, topic: str, partition: int, offset: int, value: bytes, timestamp_ms: int) -> None:
        await self.handle_batch([(topic, partition, offset, value, timestamp_ms)])

    def _decode_all(self, records: Sequence[JoinRecord]) -> list[Mapping[str, Any] | DecodeError]:
        out: list[Mapping[str, Any] | DecodeError] = []
        for rec in records:
            try:
                out.append(self.decoder.decode(rec[3]))
            except DecodeError as exc:
                out.append(exc)
        return out

    def _apply(self, store: Store, record: JoinRecord, rec: Mapping[str, Any] | DecodeError) -> JoinUpdate | None:
        topic, partition, offset, _, timestamp_ms = record
        try:
            if isinstance(rec, DecodeError):
                raise rec
            if topic == self.cfg.labels.topic:
                return self.core.apply_label(store, partition, topic, offset,
                                             to_label(rec, self.cfg.labels, timestamp_ms, self.cfg.kind))
            pred = to_prediction(rec, self.cfg.kind, self.cfg.field)
            return None if pred is None else self.core.apply_prediction(store, partition, topic, offset, pred)
        except (DecodeError, KeyError, TypeError, ValueError) as exc:
            self.skips.skip(self.cfg.name, f"{topic}/{partition}/{offset}", exc)
            return None

    async def _deliver(self, ops: Mapping[int, Sequence[Op]]) -> None:
        """Send each partition's operations (a watermark to every quality partition), wait for
        delivery, then write the label counts of partitions whose watermark moved."""
        sends = [({**op, "src": p}, qp) for p, part_ops in ops.items() for op in part_ops for qp in (
            range(self.quality_parts) if op["op"] == "wm" else [quality_partition(op["key"], self.quality_parts)])]
        if sends:
            await until_done(lambda: self.send(sends), f"{self.cfg.name} row operations")   # one wait per batch
        for p, part_ops in ops.items():
            if any(op["op"] == "wm" for op in part_ops):
                counts = dict(JoinCore.meta(self.table, p)["counts"])
                await self.retry(lambda: self.sink.write_label_counts(self.cfg.name, p, counts))
                self.metrics.observe_labels(self.cfg.name, p, counts)

    async def recovered(self, parts: Iterable[int], *, unknown_only: bool = False) -> None:
        """Send the operations the restored state's last batch of each partition stored (a crash may
        have come before they were delivered: sent again, idempotent), before any newer ones; with
        ``unknown_only``, only for partitions this process has not delivered them of."""
        pending = {p: box for p in parts if not (unknown_only and p in self.flushed)
                   and (box := JoinCore.outbox(self.table, p))}
        if pending:
            log.info("%s: sending the restored outboxes of partitions %s again", self.cfg.name, sorted(pending))
            await self._deliver(pending)
        self.flushed.update(parts)

    async def handle_batch(self, records: Sequence[JoinRecord]) -> None:
        decoded = await asyncio.to_thread(self._decode_all, records)  # a registry lookup may wait out an outage
        parts = sorted({r[1] for r in records})
        await self.recovered(parts, unknown_only=True)
        staged = Staged(self.table)
        ops: dict[int, list[Op]] = {p: [] for p in parts}
        for record, rec in zip(records, decoded):
            out = self._apply(staged, record, rec)
            if out is None:
                if not isinstance(rec, DecodeError):
                    self.metrics.replayed.inc()
                continue
            write(staged, out)
            ops[record[1]] += out.ops
        self.skips.flush(self.cfg.name)
        updates = [u for p in parts if (u := JoinCore.batch_update(staged, p, ops[p])) is not None]
        if not updates:
            return
        self.flushed.difference_update(int(u.meta_key[2:]) for u in updates)   # until delivered
        await persist(self.table, updates, f"{self.cfg.name} join changelog write")
        await self._deliver({int(u.meta_key[2:]): u.ops for u in updates if u.ops})   # the stored outboxes
        self.flushed.update(parts)


def key_partition(key: str) -> int:
    """The partition a state key names (``m|p``, ``e|p|id``, ``q|p``, ``r|p|...``, ``o|p``): its changelog partition."""
    return int(key.split("|", 2)[1])


def quality_resume(store: Store, parts: Iterable[int], topic: str) -> dict[tuple[str, int], int]:
    """(rows topic, partition) -> the offset after the last row operation the stored state applied."""
    return {(topic, p): int(off) + 1 for p in parts if (off := store.get(f"o|{p}")) is not None}


class QualityHandler:
    """Batches of row operations: windows per model|version|variant, closed ones to Redis.

    The windows a batch closed go to Redis (idempotent) before any of its state writes; the state is
    written record by record in order and awaited once (``faust_state.persist_staged``), each
    partition's last operation offset after the rest (key ``o|<partition>``), so a restored state says
    where reading resumes (``quality_resume``): a crash before it re-reads the batch's operations,
    which are idempotent, from its first, onto a state holding a prefix of their writes."""

    def __init__(self, cfg: GroundTruthConfig, core: QualityCore, table: DurableStore, sink: RedisState,
                 metrics: MonitorMetrics, retry: Retry) -> None:
        self.cfg, self.core, self.table, self.sink, self.metrics, self.retry = cfg, core, table, sink, metrics, retry

    async def handle(self, partition: int, offset: int, value: bytes) -> None:
        await self.handle_batch([(partition, offset, value)])

    async def handle_batch(self, records: Sequence[tuple[int, int, bytes]]) -> None:
        staged = Staged(self.table)
        closed: list[dict[str, Any]] = []
        last: dict[int, int] = {}
        for partition, offset, value in records:
            op = json.loads(value)
            update, results = self.core.apply(staged, partition, int(op["src"]), op)
            closed += results
            write(staged, update)
            last[partition] = offset
        estimates = {(r["model"], r["version"], r["variant"], r["window_start"]): r for r in closed if r.get("estimate")}
        for result in closed:       # Redis first (idempotent): a crash before the table write replays the close
            if result.get("estimate"):
                continue
            await self.retry(lambda: self.sink.write_quality(self.cfg.name, result,
                                                             keep_pairs=self.cfg.compare_windows))
            self.metrics.observe_quality(result)
        for result in estimates.values():    # each window's last estimate of the batch
            await self.retry(lambda: self.sink.write_estimate(self.cfg.name, result, keep=EST_KEEP))
            self.metrics.observe_estimate(result)
        for partition, offset in last.items():
            staged[f"o|{partition}"] = offset
        await persist_staged(self.table, staged, f"{self.cfg.name} quality changelog write")


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
        await asyncio.gather(*futs)   # delivered before the batch that made them returns (after its state)

    join_table = state_table(app, gt.join_table(), parts, keep_writes=True, partition_of=key_partition,
                             resume=lambda t: lambda ps: JoinCore.resume(t, ps))
    joiner = JoinHandler(gt, JoinCore(windows=windows, horizon_ms=gt.labels.horizon), join_table, sink, metrics,
                         decoder, retry, send, parts)
    join_table.recovered = joiner.recovered
    quality_table = state_table(app, gt.quality_table(), parts, keep_writes=True, partition_of=key_partition,
                                resume=lambda t: lambda ps: quality_resume(t, ps, gt.rows_topic(app.conf.id)))
    scorer = QualityHandler(gt, QualityCore(windows=windows, sources=parts, drop=drop,
                                            pairs_per_window=gt.compare_pairs, kind=gt.kind),
                            quality_table, sink, metrics, retry)
    sources = app.topic(*gt.topics(), value_serializer="raw", key_serializer="raw", partitions=parts)

    async def join(stream: Any) -> None:
        async for events in stream.take_events(gt.batch, within=BATCH_WITHIN_S):   # acked after the batch
            await joiner.handle_batch([(e.message.topic, e.message.partition, e.message.offset, e.value,
                                        int(e.message.timestamp * 1000)) for e in events])

    async def score(stream: Any) -> None:
        async for events in stream.take_events(gt.batch, within=BATCH_WITHIN_S):
            await scorer.handle_batch([(e.message.partition, e.message.offset, e.value) for e in events])

    app.agent(sources, name=f"truth-{gt.name}-join", concurrency=1)(join)
    app.agent(rows, name=f"truth-{gt.name}-quality", concurrency=1)(score)
