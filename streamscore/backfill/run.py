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
import hashlib
import json
import logging
import queue
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from consumers.batcher import AdaptiveBatcher
from consumers.decode_stage import decode_work
from consumers.model_stage import ModelStage
from consumers.outputs import OutputWriter
from consumers.runtime import ModelSlot, PipelineRuntime
from consumers.work import Work
from schemas.errors import ConfigError, DeliveryError
from sinks.kafka_sink import BatchAck, KafkaSink
from streamscore.backfill.args import BackfillArgs, BackfillResult
from streamscore.backfill.compare import Comparison
from streamscore.backfill.parquet import ParquetParts, concat_parts
from streamscore.backfill.progress import Progress
from streamscore.backfill.sources import FileRows, Source, TopicRange
from streamscore.backfill.state import STATE_FILE, State
from streamscore.config import PipelineConfig, PipelineFile

log = logging.getLogger(__name__)


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
    from streamscore.app import build_runtime, load_active, registry_for, scoring_pipeline

    _check_args(args)
    stop = stop or threading.Event()
    base = cfg.kafka.client_settings()
    problem = connection_error(base)
    if problem is not None:
        raise ConfigError(problem)
    p0 = scoring_pipeline(cfg, args.pipeline, "backfill")
    if p0.aggregates:
        raise ConfigError(f"backfill: pipeline {p0.name!r} has aggregates; their state lives with serve's input "
                          f"partitions (docs/online-features.md), backfill does not keep it")
    admin = AdminClient(base)
    _ensure_topics(base, admin, p0, args)
    p = backfill_pipeline(p0, args, args.to_topic or p0.output.topic)
    registry = registry_for(cfg)
    rt = build_runtime(cfg, p, registry, admin, [], _NoMetrics())
    if args.to_file is not None or args.input_file is not None:
        rt = dataclasses.replace(rt, partitioning="key")   # no input partition to follow / no partitions to pick
    comparison = None
    if args.compare:
        # production scores the same rows as the batch's shadow; rt.shadow_topic stays None: nothing is written for it
        prod = ModelSlot(load_active(registry, p0, variant="shadow")[1])
        rt = dataclasses.replace(rt, shadows=[prod])
        comparison = Comparison(production=_label(prod), candidate=_label(rt.slot))
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
        res = _score_all(source, rt, out, args, p.batching.max_size or 8192, cfg.queue_depth, stop, comparison)
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
    if args.compare and args.model is None:
        raise ConfigError("--compare: give the candidate as --model NAME@VERSION (production is the pipeline's model)")
    if args.compare and args.resume:
        raise ConfigError("--compare: a comparison runs in one pass and cannot --resume; remove the state directory "
                          "and run it again")
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
            self.producer = Producer(conf)
            dlq_sink = KafkaSink(self.producer, batch_produce=False)
            self.parts = sink = ParquetParts(rt.encoder.schema, state_dir)
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


def _score_all(source: Source, rt: PipelineRuntime, out: Outputs, args: BackfillArgs, max_rows: int,
               queue_depth: int, stop: threading.Event, comparison: Comparison | None) -> BackfillResult:
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
            if comparison is not None:
                comparison.add(work)
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
    if comparison is not None:
        res.compare = comparison.report()
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


def _label(slot: ModelSlot) -> str:
    m = slot.active.model
    return f"{m.name}@{m.version}"


class _NoMetrics:
    """Backfill exports no Prometheus metrics: every recorder is a no-op."""

    def __getattr__(self, _name: str) -> Callable[..., None]:
        return lambda *a, **k: None
