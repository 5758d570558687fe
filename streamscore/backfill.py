"""``streamscore backfill``: re-score a topic's time range (or a Parquet/CSV file) at full speed.

The same decode -> model -> encode path as ``serve`` (``decode_work``, ``ModelStage``,
``OutputWriter``), fed from a bounded source instead of a consumer group:

    source thread   read the range (assign() at T1's offsets, stop at T2's), decode
    caller thread   score, encode, produce / write, checkpoint

Exactly once, by output:
 - ``--to-topic``: a transactional producer; each chunk's predictions, dead letters and the
   input positions (``send_offsets_to_transaction`` under the run's own group id) commit
   together. A resumed run starts at that group's committed offsets, so a ``read_committed``
   reader sees every event's prediction once.
 - ``--to-file``: each chunk becomes a Parquet part (written, then renamed), then the state
   file records the part and the positions (written, then renamed). A resumed run deletes
   parts the state does not name and starts at its positions; the last step concatenates
   the parts into the output file. Dead letters go to the dead-letter topic
   at-least-once (flushed before the state moves on).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import queue
import shutil
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import numpy as np
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from consumers.batcher import AdaptiveBatcher
from consumers.decode_stage import decode_work
from consumers.model_stage import ModelStage
from consumers.outputs import OutputWriter
from consumers.runtime import PipelineRuntime
from consumers.work import Work
from schemas.errors import ConfigError, DeliveryError, StreamscoreError
from sinks.kafka_sink import BatchAck, KafkaSink
from streamscore.config import PipelineConfig, PipelineFile

log = logging.getLogger(__name__)

STATE_FILE = "state.json"


# ------------------------------------------------------------------ arguments
def parse_time(text: str, what: str) -> int:
    """Epoch milliseconds from ISO-8601 (``2026-12-01T10:00:00Z``; naive means UTC) or an integer of ms."""
    s = text.strip()
    if s.lstrip("-").isdigit():
        ms = int(s)
        if ms < 0:
            raise ConfigError(f"{what}: {text!r} is before 1970")
        return ms
    try:
        t = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{what}: {text!r} is neither ISO-8601 (e.g. 2026-12-01T10:00:00Z) nor epoch milliseconds") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return int(t.timestamp() * 1000)


def parse_model(text: str) -> tuple[str, str | None]:
    """``NAME@VERSION`` (or ``NAME:VERSION``, or ``NAME`` for its production version)."""
    for sep in ("@", ":"):
        if sep in text:
            name, _, version = text.partition(sep)
            if not name or not version:
                raise ConfigError(f"--model: {text!r} is not NAME@VERSION")
            return name, version
    if not text:
        raise ConfigError("--model: empty model name")
    return text, None


@dataclass(frozen=True)
class BackfillArgs:
    from_ms: int | None
    to_ms: int | None
    model: tuple[str, str | None] | None = None
    to_topic: str | None = None
    to_file: Path | None = None
    input_file: Path | None = None
    resume: bool = False
    state_dir: Path | None = None
    pipeline: str | None = None
    max_rate: float | None = None        # events/s ceiling (None: flat out)
    chunk_events: int = 100_000          # a chunk closes on this many events or chunk_seconds
    chunk_seconds: float = 2.0
    progress: Callable[[str, bool], None] | None = None   # (line, is_final)


# ------------------------------------------------------------------ sources
class Source(Protocol):
    """Where a backfill reads: ``total`` events planned, ``already`` done by an earlier run."""

    total: int
    already: int

    def chunks(self, max_rows: int) -> Iterator[list[Message]]: ...
    def close(self) -> None: ...


class TopicRange:
    """Every partition of ``topic`` from T1's offsets up to (not including) T2's; never waits for new data."""

    def __init__(self, conf: dict[str, Any], topic: str, *, ranges: dict[int, tuple[int, int]],
                 positions: dict[int, int]) -> None:
        self.topic = topic
        self.ranges = ranges
        self.consumer = Consumer({**conf, "enable.auto.commit": False, "enable.partition.eof": True,
                                  "auto.offset.reset": "earliest"})
        self.start = {p: max(lo, positions.get(p, lo)) for p, (lo, _) in ranges.items()}
        self.total = sum(hi - lo for lo, hi in ranges.values())
        self.already = sum(self.start[p] - lo for p, (lo, _) in ranges.items())

    @staticmethod
    def plan(conf: dict[str, Any], topic: str, from_ms: int | None, to_ms: int | None) -> dict[int, tuple[int, int]]:
        """Per partition (first offset with timestamp >= T1, first offset with timestamp >= T2)."""
        c = Consumer({**conf, "group.id": f"streamscore-backfill-plan-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False})
        try:
            md = c.list_topics(topic, timeout=15)
            tmd = md.topics.get(topic)
            if tmd is None or tmd.error is not None or not tmd.partitions:
                raise ConfigError(f"input topic {topic!r} does not exist (or has no partitions)")
            parts = sorted(tmd.partitions)
            marks = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=15) for p in parts}

            def at(ms: int | None, default: Callable[[int], int]) -> dict[int, int]:
                if ms is None:
                    return {p: default(p) for p in parts}
                found = c.offsets_for_times([TopicPartition(topic, p, ms) for p in parts], timeout=15)
                # -1: no message at or after ms -> the partition's end
                return {tp.partition: tp.offset if tp.offset >= 0 else marks[tp.partition][1] for tp in found}

            lo = at(from_ms, lambda p: marks[p][0])
            hi = at(to_ms, lambda p: marks[p][1])
        except KafkaException as exc:
            raise DeliveryError(f"reading the offsets of {topic!r}: {exc}") from exc
        finally:
            c.close()
        return {p: (lo[p], max(lo[p], hi[p])) for p in parts}

    def chunks(self, max_rows: int) -> Iterator[list[Message]]:
        todo = {p: (self.start[p], hi) for p, (_, hi) in self.ranges.items() if self.start[p] < hi}
        if not todo:
            return
        self.consumer.assign([TopicPartition(self.topic, p, lo) for p, (lo, _) in todo.items()])
        end = {p: hi for p, (_, hi) in todo.items()}
        while end:
            msgs = self.consumer.consume(max_rows, 1.0)
            keep: list[Message] = []
            finished: list[int] = []
            for m in msgs:
                err = m.error()
                p = m.partition()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:   # the range ends past what exists now
                        if p in end:
                            finished.append(p)
                        continue
                    if err.fatal():
                        raise DeliveryError(f"consumer fatal error: {err}")
                    log.warning("consumer error: %s", err)
                    continue
                hi = end.get(p)
                if hi is None:
                    continue
                off = m.offset()
                if off < hi:
                    keep.append(m)
                if off >= hi - 1:
                    finished.append(p)
            if not msgs:   # control records (transaction markers) can end a range without a message
                for tp in self.consumer.position([TopicPartition(self.topic, p) for p in end]):
                    if tp.offset >= end[tp.partition]:
                        finished.append(tp.partition)
            for p in set(finished):
                if p in end:
                    del end[p]
                    self.consumer.incremental_unassign([TopicPartition(self.topic, p)])
            if keep:
                yield keep

    def close(self) -> None:
        self.consumer.close()


class FileMessage:
    """A file row standing in for a Kafka message: its JSON value, row index as offset."""

    __slots__ = ("_value", "_offset", "_topic")

    def __init__(self, value: bytes, offset: int, topic: str) -> None:
        self._value, self._offset, self._topic = value, offset, topic

    def value(self) -> bytes:
        return self._value

    def key(self) -> bytes | None:
        return None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return (0, 0)

    def error(self) -> None:
        return None


class FileRows:
    """Rows of a Parquet or CSV file, as JSON records the pipeline's decoder reads (partition 0, offset = row)."""

    def __init__(self, path: Path, *, position: int) -> None:
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq

        if not path.is_file():
            raise ConfigError(f"--input-file: {path} does not exist")
        self.topic = str(path)
        try:
            if path.suffix.lower() in (".parquet", ".pq"):
                self.table = pq.read_table(path)
            elif path.suffix.lower() in (".csv", ".txt"):
                self.table = pacsv.read_csv(path)
            else:
                raise ConfigError(f"--input-file: {path} is neither .parquet nor .csv")
        except StreamscoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
            raise ConfigError(f"--input-file: cannot read {path}: {exc}") from exc
        self.total = self.table.num_rows
        self.start = min(position, self.total)
        self.already = self.start
        self.ranges = {0: (0, self.total)}

    def chunks(self, max_rows: int) -> Iterator[list[Message]]:
        for lo in range(self.start, self.total, max_rows):
            rows = self.table.slice(lo, max_rows).to_pylist()
            yield [FileMessage(json.dumps(r, default=_json_default).encode(), lo + i, self.topic)  # type: ignore[misc]
                   for i, r in enumerate(rows)]

    def close(self) -> None:
        pass


def _json_default(v: Any) -> Any:
    if isinstance(v, dt.datetime):
        return int(v.timestamp() * 1000) if v.tzinfo else int(v.replace(tzinfo=dt.timezone.utc).timestamp() * 1000)
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    raise TypeError(f"{type(v).__name__} is not JSON serialisable")


# ------------------------------------------------------------------ state
@dataclass
class State:
    """What a resumed run needs: the planned ranges, where it got to, the parts written."""

    fingerprint: str
    group: str
    ranges: dict[int, tuple[int, int]]
    positions: dict[int, int] = field(default_factory=dict)
    parts: list[str] = field(default_factory=list)
    rows: int = 0

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        data = {"fingerprint": self.fingerprint, "group": self.group,
                "ranges": {str(p): list(r) for p, r in self.ranges.items()},
                "positions": {str(p): o for p, o in self.positions.items()}, "parts": self.parts, "rows": self.rows}
        with open(tmp, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> State:
        try:
            d = json.loads(path.read_text())
            return cls(fingerprint=d["fingerprint"], group=d["group"],
                       ranges={int(p): (int(r[0]), int(r[1])) for p, r in d["ranges"].items()},
                       positions={int(p): int(o) for p, o in d["positions"].items()},
                       parts=list(d["parts"]), rows=int(d["rows"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"backfill state {path} is unreadable ({exc}); remove its directory to start over") from exc


# ------------------------------------------------------------------ outputs
class ParquetParts:
    """Prediction records (as ``OutputWriter`` encodes them) collected per chunk into Parquet parts."""

    def __init__(self, encoder_schema: dict[str, Any], registry: Any, directory: Path) -> None:
        from schemas.columnar import BatchDecoder

        self.decoder = BatchDecoder(encoder_schema, registry)
        self.directory = directory
        self._pending: list[bytes] = []

    # the KafkaSink surface OutputWriter uses for predictions
    def produce_encoded(self, topic: str, encoded: tuple[np.ndarray, np.ndarray, np.ndarray], keys: Any,
                        ack: BatchAck, *, partitions: np.ndarray | None = None, headers: Any = None) -> None:
        buf, starts, lengths = encoded
        data = buf.tobytes()
        self._pending.extend(data[a:a + k] for a, k in zip(starts.tolist(), lengths.tolist()))

    def produce_one(self, topic: str, value: bytes | None, key: bytes | None, ack: BatchAck, **_: Any) -> None:
        raise DeliveryError(f"a Parquet backfill writes no per-message outputs (got one for {topic})")

    def write_part(self, index: int) -> tuple[str, int] | None:
        """Write the pending rows as part ``index`` (atomically); returns (file name, rows), None if no rows."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        values, self._pending = self._pending, []
        if not values:
            return None
        decoded = self.decoder.decode(values)
        if decoded.errors:
            raise DeliveryError(f"prediction records failed to decode for Parquet: {decoded.errors[0][1]}")
        table = pa.table({name: _arrow(col, name, decoded.symbols) for name, col in decoded.columns.items()})
        name = f"part-{index:05d}.parquet"
        tmp = self.directory / f".{name}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, self.directory / name)
        return name, table.num_rows


def _arrow(col: Any, name: str, symbols: dict[str, tuple[str, ...]]) -> Any:
    """One decoded column as an Arrow array (strings from their bytes, no Python objects per row)."""
    import pyarrow as pa

    from schemas.columns import StrColumn

    if name in symbols:
        return pa.array(np.asarray(symbols[name], dtype=object)[np.asarray(col)], pa.string())
    if isinstance(col, StrColumn):
        c = col.compact()
        lengths = np.maximum(c.length, 0)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        nulls = c.length < 0
        validity = pa.array(~nulls).buffers()[1] if nulls.any() else None
        return pa.StringArray.from_buffers(len(lengths), pa.py_buffer(offsets), pa.py_buffer(c.buf.tobytes()),
                                           validity, null_count=int(nulls.sum()))
    return pa.array(np.asarray(col))


def concat_parts(directory: Path, parts: list[str], out: Path) -> int:
    """The parts, in order, as one Parquet file at ``out`` (written, then renamed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = out.with_name(f".{out.name}.tmp")
    rows = 0
    writer = None
    try:
        for name in parts:
            f = pq.ParquetFile(directory / name)
            if writer is None:
                writer = pq.ParquetWriter(tmp, f.schema_arrow)
            for i in range(f.num_row_groups):
                t = f.read_row_group(i)
                writer.write_table(t)
                rows += t.num_rows
        if writer is None:     # an empty range: an empty file with the prediction columns
            from schemas.registry import SchemaRegistry

            fields = SchemaRegistry.default().schema("prediction")["fields"]
            pq.write_table(pa.table({f["name"]: pa.array([], pa.null()) for f in fields}), tmp)
    finally:
        if writer is not None:
            writer.close()
    os.replace(tmp, out)
    return rows


# ------------------------------------------------------------------ the run
@dataclass
class BackfillResult:
    events: int = 0
    predictions: int = 0
    dead_letters: int = 0
    seconds: float = 0.0
    skipped: int = 0                  # events a previous run already covered (--resume)
    output: str = ""
    complete: bool = False            # False: interrupted; the state directory is kept for --resume

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["events_per_s"] = round(self.events / self.seconds) if self.seconds > 0 else 0
        d["seconds"] = round(self.seconds, 3)
        return d


def backfill_pipeline(p: PipelineConfig, args: BackfillArgs, output_topic: str) -> PipelineConfig:
    """The pipeline as backfill runs it: one fixed model, no routing, shadows, telemetry or hot swap."""
    assert p.model is not None
    model = p.model.model_copy(update={"hot_swap": False})
    if args.model is not None:
        name, version = args.model
        model = model.model_copy(update={"name": name, "version": version})
    update: dict[str, Any] = {"model": model, "route": None,
                              "telemetry": p.telemetry.model_copy(update={"enabled": False}),
                              "output": p.output.model_copy(update={"topic": output_topic})}
    if args.input_file is not None:
        update["input"] = p.input.model_copy(update={"format": "json"})
    return p.model_copy(update=update)


def run_backfill(cfg: PipelineFile, args: BackfillArgs, *, stop: threading.Event | None = None) -> BackfillResult:
    """Score the range (or file) once per event into the output; resumable (see the module docstring)."""
    from confluent_kafka.admin import AdminClient

    from consumers.kafka_client import connection_error
    from streamscore.app import build_runtime, registry_for, scoring_pipeline

    _check_args(args)
    stop = stop or threading.Event()
    base = cfg.kafka.client_settings()
    problem = connection_error(base)
    if problem is not None:
        raise ConfigError(problem)
    p0 = scoring_pipeline(cfg, args.pipeline, "backfill")
    admin = AdminClient(base)
    _ensure_topics(base, admin, p0, args)
    p = backfill_pipeline(p0, args, args.to_topic or p0.output.topic)
    rt = build_runtime(cfg, p, registry_for(cfg), admin, [], _NoMetrics())
    if args.to_file is not None or args.input_file is not None:
        rt = dataclasses.replace(rt, partitioning="key")   # no input partition to follow / no partitions to pick
    state_dir, state = _open_state(args, p, base, rt)
    out = Outputs(cfg, args, state, state_dir, rt)
    try:
        if args.input_file is not None:
            source: Source = FileRows(args.input_file, position=out.positions.get(0, 0))
            if state.ranges[0][1] < 0:
                state.ranges = {0: (0, source.total)}
                state.save(state_dir / STATE_FILE)
        else:
            consumer_conf = {**base, **{k: v for k, v in cfg.kafka.consumer.items()
                                        if k not in ("group.id", "group.instance.id")},
                             "group.id": state.group, "isolation.level": "read_committed"}
            source = TopicRange(consumer_conf, p.input.topic, ranges=state.ranges, positions=out.positions)
            out.group_metadata = source.consumer.consumer_group_metadata
        res = _score_all(source, rt, out, args, p.batching.max_size or 8192, cfg.queue_depth, stop)
    finally:
        out.close()
    if res.complete:
        if args.to_file is not None:
            concat_parts(state_dir, state.parts, args.to_file)
        shutil.rmtree(state_dir, ignore_errors=True)    # finished: nothing left to resume
    return res


def _check_args(args: BackfillArgs) -> None:
    if (args.to_topic is None) == (args.to_file is None):
        raise ConfigError("backfill: give exactly one of --to-topic TOPIC or --to-file OUT.parquet")
    if args.input_file is None and args.from_ms is None:
        raise ConfigError("backfill: --from is required when reading a topic")
    if args.max_rate is not None and args.max_rate <= 0:
        raise ConfigError(f"--max-rate: must be > 0 events/s, got {args.max_rate}")
    if args.input_file is not None and not args.input_file.is_file():
        raise ConfigError(f"--input-file: {args.input_file} does not exist")
    if args.from_ms is not None and args.to_ms is not None and args.to_ms <= args.from_ms:
        raise ConfigError(f"backfill: --to ({args.to_ms}) must be after --from ({args.from_ms})")


def _ensure_topics(base: dict[str, Any], admin: Any, p: PipelineConfig, args: BackfillArgs) -> None:
    """The output topic (as many partitions as the input) and the dead-letter topic."""
    from consumers.kafka_client import ensure_topics, partition_count

    n_in = partition_count(admin, p.input.topic) if args.input_file is None else 0
    want = {p.input.dlq_topic: n_in or 4}
    if args.to_topic is not None:
        want[args.to_topic] = n_in or 4
    ensure_topics(base, want)


def _open_state(args: BackfillArgs, p: PipelineConfig, base: dict[str, Any], rt: PipelineRuntime) -> tuple[Path, State]:
    """A fresh run plans the ranges and records them; ``--resume`` reloads them (same arguments only)."""
    active = rt.slot.active
    source_id = str(args.input_file.resolve()) if args.input_file else p.input.topic
    out_id = str(args.to_file.resolve()) if args.to_file else f"topic:{args.to_topic}"
    model_label = f"{active.model.name}@{active.model.version}"
    fingerprint = hashlib.sha256(json.dumps([source_id, args.from_ms, args.to_ms, model_label, out_id]).encode()).hexdigest()[:16]
    state_dir = args.state_dir or (Path(f"{args.to_file}.backfill") if args.to_file else Path(f".backfill-{args.to_topic}"))
    path = state_dir / STATE_FILE
    if path.exists() and not args.resume:
        raise ConfigError(f"backfill state {state_dir} exists from an earlier run: pass --resume to continue it, "
                          f"or remove the directory to start over")
    if args.resume:
        if not path.exists():
            raise ConfigError(f"--resume: no backfill state at {state_dir} (nothing to resume)")
        state = State.load(path)
        if state.fingerprint != fingerprint:
            raise ConfigError(f"--resume: {state_dir} belongs to a different backfill (input, range, model or output "
                              f"differ); use the same arguments, or another --state-dir")
        return state_dir, state
    state_dir.mkdir(parents=True, exist_ok=True)
    ranges = {0: (0, -1)} if args.input_file else TopicRange.plan(base, p.input.topic, args.from_ms, args.to_ms)
    state = State(fingerprint=fingerprint, group=f"streamscore-backfill-{uuid.uuid4().hex[:12]}", ranges=ranges)
    state.save(path)
    return state_dir, state


class Outputs:
    """Where a chunk goes, and how it is made durable (``checkpoint``): see the module docstring."""

    def __init__(self, cfg: PipelineFile, args: BackfillArgs, state: State, state_dir: Path, rt: PipelineRuntime) -> None:
        from consumers.kafka_client import PRODUCER_DEFAULTS, merged

        self.args, self.state, self.state_dir, self.topic = args, state, state_dir, rt.input_topic
        self.failed: list[Any] = []
        self.group_metadata: Callable[[], Any] | None = None
        self.parts: ParquetParts | None = None
        conf = merged(PRODUCER_DEFAULTS, cfg.kafka.client_settings(), {})
        conf.update(cfg.kafka.producer)
        if args.to_topic is not None:
            conf.update({"transactional.id": state.group, "transaction.timeout.ms": 60000})
            self.producer = Producer(conf)
            self.producer.init_transactions(30)      # fences (aborts) a killed earlier run's open transaction
            self.positions = (state.positions if args.input_file
                              else _committed(cfg.kafka.client_settings(), state.group, rt.input_topic, state.ranges))
            sink: Any = KafkaSink(self.producer, batch_produce=cfg.kafka.batch_produce)
            dlq_sink = sink
        else:
            for f in [*state_dir.glob("*.parquet"), *state_dir.glob(".*.tmp")]:
                if f.name not in state.parts:
                    f.unlink()          # written after the last checkpoint: those rows are scored again
            from schemas.registry import SchemaRegistry

            self.producer = Producer(conf)
            dlq_sink = KafkaSink(self.producer, batch_produce=False)
            self.parts = sink = ParquetParts(SchemaRegistry.default().schema("prediction"), SchemaRegistry.default(),
                                             state_dir)
            self.positions = dict(state.positions)
        self.writer = OutputWriter(sink=sink, metrics=_NoMetrics(), record_latency=lambda _s: None)
        self.dead_writer = OutputWriter(sink=dlq_sink, metrics=_NoMetrics(), record_latency=lambda _s: None)
        self.in_txn = False

    def on_acked(self, ack: BatchAck) -> None:
        """The producer's thread; failures are raised on the caller's thread."""
        if ack.error is not None:
            self.failed.append(ack.error)

    def check(self) -> None:
        if self.failed:
            raise DeliveryError(f"delivery failed: {self.failed[0]}")

    def emit(self, work: Work, batch_id: int) -> int:
        """Produce / collect the batch's predictions and dead letters; returns the predictions."""
        if self.args.to_topic is not None and not self.in_txn:
            self.producer.begin_transaction()
            self.in_txn = True
        ack = BatchAck(batch_id, self.on_acked)
        n_ok = 0 if work.ok_rows is None else len(work.ok_rows)
        if n_ok:
            self.writer.emit(work, ack)
        if work.dead:
            self.dead_writer.emit_dead(work, ack)
        ack.seal()
        return n_ok

    def checkpoint(self, pos: dict[int, int]) -> None:
        """Make the chunk durable, then record how far it got."""
        state, path = self.state, self.state_dir / STATE_FILE
        if self.parts is not None:
            written = self.parts.write_part(len(state.parts))
            if self.producer.flush(30):       # the chunk's dead letters
                raise DeliveryError("dead letters not delivered within 30 s")
            self.check()
            if written is not None:
                state.parts.append(written[0])
                state.rows += written[1]
            state.positions = dict(pos)
            state.save(path)
            return
        if not self.in_txn:
            return
        if self.group_metadata is not None:
            offsets = [TopicPartition(self.topic, p, o) for p, o in sorted(pos.items())]
            self.producer.send_offsets_to_transaction(offsets, self.group_metadata(), 30)
        self.producer.commit_transaction(60)
        self.in_txn = False
        if self.group_metadata is None:       # a file has no consumer group: its position lives in the state
            state.positions = dict(pos)
            state.save(path)

    def close(self) -> None:
        if self.in_txn:
            try:
                self.producer.abort_transaction(10)
            except KafkaException as exc:
                log.warning("abort of the open backfill transaction failed: %s", exc)
        if self.parts is not None:
            self.producer.flush(30)


def _score_all(source: Source, rt: PipelineRuntime, out: Outputs, args: BackfillArgs,
               max_rows: int, queue_depth: int, stop: threading.Event) -> BackfillResult:
    """Source thread reads and decodes; this thread scores, emits and checkpoints every chunk."""
    # backfill closes batches by size only; the model stage still feeds its cost fit
    stage = ModelStage(batchers={rt.name: AdaptiveBatcher(max_size=max_rows, max_wait_s=1.0)}, metrics=_NoMetrics())
    res = BackfillResult(skipped=source.already, output=str(args.to_file or args.to_topic))
    progress = Progress(total=source.total, done=source.already, emit=args.progress)
    pos = dict(out.positions)
    q: queue.Queue[Any] = queue.Queue(queue_depth)
    halt = threading.Event()
    feeder = threading.Thread(target=_feed, args=(source, rt, max_rows, q, halt), name="backfill-source", daemon=True)
    t0 = chunk_started = time.monotonic()
    chunk_rows = 0
    feeder.start()
    try:
        while not stop.is_set():
            item = q.get()
            if isinstance(item, BaseException):
                raise item
            if item is None:
                res.complete = True
                break
            work: Work = item
            stage.score(work)
            res.predictions += out.emit(work, work.batch_id)
            for (_t, part), (_lo, hi) in work.ranges.items():
                pos[part] = hi + 1
            res.events += len(work.msgs)
            res.dead_letters += len(work.dead)
            chunk_rows += len(work.msgs)
            progress.add(len(work.msgs))
            out.check()
            if args.max_rate:
                stop.wait(max(0.0, res.events / args.max_rate - (time.monotonic() - t0)))
            if chunk_rows >= args.chunk_events or time.monotonic() - chunk_started >= args.chunk_seconds:
                out.checkpoint(pos)
                chunk_rows, chunk_started = 0, time.monotonic()
        if chunk_rows:
            out.checkpoint(pos)
    finally:
        halt.set()
        _drain(q)
        feeder.join(30)
        source.close()
    res.seconds = time.monotonic() - t0
    progress.finish()
    return res


def _feed(source: Source, rt: PipelineRuntime, max_rows: int, q: queue.Queue[Any],
          stop: threading.Event) -> None:
    """Source thread: read and decode chunks ahead of the model; ends with None (or the exception)."""
    def put(item: Any) -> None:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    try:
        for i, msgs in enumerate(source.chunks(max_rows)):
            put(decode_work(rt, msgs, batch_id=i))
            if stop.is_set():
                return
        put(None)
    except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
        put(exc)


def _drain(q: queue.Queue[Any]) -> None:
    while True:
        try:
            q.get_nowait()
        except queue.Empty:
            return


def _committed(conf: dict[str, Any], group: str, topic: str, ranges: dict[int, tuple[int, int]]) -> dict[int, int]:
    c = Consumer({**conf, "group.id": group, "enable.auto.commit": False})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in ranges], timeout=30)
        return {tp.partition: tp.offset for tp in tps if tp.offset >= 0}
    except KafkaException as exc:
        raise DeliveryError(f"reading the backfill's committed offsets: {exc}") from exc
    finally:
        c.close()


class Progress:
    """events done / total, events/s and ETA: one redrawn line on a terminal, a line every 5 s otherwise."""

    def __init__(self, *, total: int, done: int, emit: Callable[[str, bool], None] | None) -> None:
        self.total, self.done, self.start_done = total, done, done
        self.t0 = time.monotonic()
        self.last = 0.0
        self.emit = emit

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.emit is not None and now - self.last >= 0.5:
            self.last = now
            self.emit(self.line(now), False)

    def line(self, now: float) -> str:
        took = max(now - self.t0, 1e-9)
        rate = (self.done - self.start_done) / took
        left = max(0, self.total - self.done)
        eta = left / rate if rate > 0 else float("inf")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta_s = "--" if eta == float("inf") else f"{eta:,.0f}s"
        return f"backfill {self.done:,}/{self.total:,} events ({pct:5.1f}%)  {rate:,.0f} events/s  ETA {eta_s}"

    def finish(self) -> None:
        if self.emit is not None:
            self.emit(self.line(time.monotonic()), True)


def terminal_progress(stream: Any = None) -> Callable[[str, bool], None]:
    """A progress printer for ``stream`` (stderr): redraws in place on a TTY, else a line every 5 s."""
    out = stream or sys.stderr
    tty = out.isatty()
    last = [0.0]

    def emit(line: str, final: bool) -> None:
        if tty:
            out.write("\r" + line + ("\n" if final else ""))
            out.flush()
        elif final or time.monotonic() - last[0] >= 5.0:
            last[0] = time.monotonic()
            print(line, file=out, flush=True)

    return emit


class _NoMetrics:
    """Backfill exports no Prometheus metrics: every recorder is a no-op."""

    def __getattr__(self, _name: str) -> Callable[..., None]:
        return lambda *a, **k: None
