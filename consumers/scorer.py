"""The scoring loop: consume -> decode -> model -> encode -> produce -> commit.

Three threads, joined by bounded queues, so stages overlap (batch k+1 decodes while batch
k is in the model and batch k-1 is being produced):

    source (caller's thread)   consume(n, timeout), micro-batch, decode, register offsets
    model                      assemble features, predict (bad rows isolated by bisection)
    sink                       encode, produce, serve acks, store committable offsets

The commit protocol of both delivery modes lives in consumers/commit.py. The source
registers each batch's offset ranges before the batch enters the queue, so registration
order is consumption order; the sink opens and closes each batch with the protocol.

Every Work item carries the *generation* it was consumed in. An exactly-once abort
(failure or revoke) raises the minimum generation the stages accept, and the source
rewinds every partition to its committed offset and starts the next generation: work of
the aborted generation is dropped, never produced into a later transaction.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from consumers.batcher import AdaptiveBatcher
from consumers.commit import AtLeastOnce, CommitProtocol, ExactlyOnce
from consumers.offsets import OffsetTracker
from consumers.runtime import ActiveModel, PipelineRuntime
from schemas.errors import DeliveryError, PredictError, StreamscoreError
from sinks.kafka_sink import BatchAck, KafkaSink, error_headers

log = logging.getLogger(__name__)

_STOP = object()
TP = tuple[str, int]


@dataclass
class Work:
    """One pipeline's share of one micro-batch, as it moves through the stages."""

    batch_id: int
    rt: PipelineRuntime
    ranges: dict[TP, tuple[int, int]]
    msgs: list[Message]
    decoded: Any = None                       # schemas.columnar.DecodedBatch
    keys: list[bytes | None] = field(default_factory=list)
    in_parts: np.ndarray | None = None
    dead: list[tuple[int, str, str]] = field(default_factory=list)  # (msg index, reason, message)
    ok_rows: np.ndarray | None = None         # rows of `decoded` that were scored
    scores: np.ndarray | None = None          # one per decoded row (valid where ok_rows says)
    groups: list[tuple[ActiveModel, np.ndarray]] = field(default_factory=list)   # (model, its scored rows)
    shadow_out: list[tuple[ActiveModel, np.ndarray]] = field(default_factory=list)  # scores for ok_rows
    embeddings: np.ndarray | None = None      # kind=embed: (rows, dim) float32
    labels: list[str] | None = None
    active: ActiveModel | None = None
    generation: int = 0
    consumed_at: float = 0.0                  # time.monotonic() at each stage, for stage latency metrics
    scored_at: float = 0.0
    emitted_at: float = 0.0
    first_ts_ms: int = 0                      # broker/producer timestamp of the batch's first message


@dataclass
class ScorerStats:
    consumed: int = 0
    produced: int = 0
    dead: int = 0
    batches: int = 0
    committed: dict[TP, int] = field(default_factory=dict)
    latency_ms: list[float] = field(default_factory=list)   # recent e2e samples (event_time -> scored_at)
    dead_by_reason: dict[str, int] = field(default_factory=dict)


class Scorer:
    def __init__(
        self,
        *,
        consumer: Consumer,
        sink: KafkaSink,
        pipelines: list[PipelineRuntime],
        batcher: AdaptiveBatcher,
        queue_depth: int = 4,
        store_interval_s: float = 0.05,
        revoke_timeout_s: float = 30.0,
        on_batch: Callable[[Work], None] | None = None,
        delivery: str = "at_least_once",
        make_producer: Callable[[], Any] | None = None,
        commit_interval_s: float = 0.1,
        metrics: Any = None,
    ) -> None:
        self.consumer = consumer
        self.sink = sink
        self.by_topic = {p.input_topic: p for p in pipelines}
        self.pipelines = pipelines
        self.batcher = batcher
        self.tracker = OffsetTracker()
        self.stats = ScorerStats()
        self._q_model: queue.Queue[Any] = queue.Queue(queue_depth)
        self._q_sink: queue.Queue[Any] = queue.Queue(queue_depth)
        self._stop = threading.Event()
        self._failure: BaseException | None = None
        self._store_interval_s = store_interval_s
        self._revoke_timeout_s = revoke_timeout_s
        self._next_batch = 0
        self._buf: list[Message] = []
        self._on_batch = on_batch
        self._paused = False
        self._lat_lock = threading.Lock()
        self.assigned = threading.Event()        # set once the group has given us partitions
        if metrics is None:
            from prometheus_client import CollectorRegistry

            from monitoring.metrics import ScorerMetrics

            metrics = ScorerMetrics(registry=CollectorRegistry())   # private: nothing serves it
        self.metrics = metrics
        self.closers: list[Callable[[], None]] = []   # run when the scorer stops (e.g. registry watchers)
        self.generation = 0                      # bumped by the source on every rewind
        self._min_generation = 0                 # stages drop work older than this
        self._rewind_requested = threading.Event()
        self.commit: CommitProtocol
        if delivery == "exactly_once":
            if make_producer is None:
                raise ValueError("exactly_once needs make_producer")
            self.commit = ExactlyOnce(consumer=consumer, sink=sink, make_producer=make_producer, fail=self._fail,
                                      request_rewind=self._request_rewind, interval_s=commit_interval_s)
        else:
            self.commit = AtLeastOnce(consumer=consumer, sink=sink, tracker=self.tracker, fail=self._fail,
                                      store_interval_s=store_interval_s, revoke_timeout_s=revoke_timeout_s,
                                      on_error=lambda: self.metrics.delivery_error(self.pipelines[0].name))

    # ------------------------------------------------------------------ control
    def stop(self) -> None:
        """Ask the scorer to finish in-flight batches, commit and return (signal-safe)."""
        self._stop.set()

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
            log.error("scorer failing: %s", exc)
        self._stop.set()

    def run(self, *, max_seconds: float | None = None) -> None:
        """Run until stop() (or max_seconds); raises the first stage failure."""
        self.consumer.subscribe(list(self.by_topic), on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)
        model_t = threading.Thread(target=self._guard(self._model_loop), name="model", daemon=True)
        sink_t = threading.Thread(target=self._guard(self._sink_loop), name="sink", daemon=True)
        model_t.start()
        sink_t.start()
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        try:
            self._source_loop(deadline)
        except BaseException as exc:  # noqa: BLE001 - reported after cleanup
            self._fail(exc)
        finally:
            self._put(self._q_model, _STOP, force=True)
            model_t.join()
            sink_t.join()
            for close in self.closers:
                try:
                    close()
                except Exception as exc:  # noqa: BLE001 - shutting down anyway
                    log.warning("closing %s failed: %s", close, exc)
        if self._failure is not None:
            self.consumer.close()
            raise self._failure
        self.consumer.close()

    def _guard(self, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001
                self._fail(exc)
                # keep draining so the stages upstream never block on a full queue
                if fn == self._model_loop:
                    self._drain(self._q_model, self._q_sink)
                else:
                    self._drain(self._q_sink, None)
        return run

    def _drain(self, src: queue.Queue[Any], dst: queue.Queue[Any] | None) -> None:
        while True:
            item = src.get()
            if item is _STOP:
                if dst is not None:
                    self._put(dst, _STOP, force=True)
                return

    # ------------------------------------------------------------------ source stage
    def _source_loop(self, deadline: float | None) -> None:
        batcher = self.batcher
        while not self._stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            if self._rewind_requested.is_set():
                self._rewind_requested.clear()
                self._rewind(set())
            want = max(1, batcher.max_size - len(self._buf))
            if self._buf:
                # a batch is open: wait for more rows, but no longer than its deadline
                msgs = self.consumer.consume(want, batcher.time_left(time.monotonic()))
            else:
                # idle: wake on the first message, then take whatever else is already here
                msgs = self.consumer.consume(want, 0)
                if not msgs:
                    first = self.consumer.poll(0.1)
                    msgs = [first] if first is not None else []
                    if msgs and want > 1:
                        msgs.extend(self.consumer.consume(want - 1, 0))
            if msgs:
                self._accept(msgs)
            reason = batcher.should_close(time.monotonic())
            if reason is not None:
                self._dispatch(reason)
        if self._buf and self._failure is None:
            self._dispatch("flush")

    def _accept(self, msgs: list[Message]) -> None:
        good = msgs
        if any(m.error() is not None for m in msgs):
            good = []
            for m in msgs:
                err = m.error()
                if err is None:
                    good.append(m)
                elif err.code() == KafkaError._PARTITION_EOF:
                    continue
                elif err.fatal():
                    raise DeliveryError(f"consumer fatal error: {err}")
                else:
                    log.warning("consumer error: %s", err)
        if not good:
            return
        ts = good[0].timestamp()[1]
        age = max(0.0, time.time() - ts / 1000.0) if ts > 0 else 0.0
        self._buf.extend(good)
        self.batcher.add(len(good), time.monotonic(), oldest_age_s=age)

    def _dispatch(self, reason: str) -> None:
        msgs, self._buf = self._buf, []
        self.batcher.close(time.monotonic(), reason)  # type: ignore[arg-type]
        if not msgs:   # a revoke or rewind emptied the open batch: nothing to decode
            return
        label = self.pipelines[0].name if len(self.pipelines) == 1 else "all"
        self.metrics.batch_closed(label, len(msgs), self.batcher.stats.last_wait_s, reason)
        if len(self.by_topic) == 1:
            groups = {next(iter(self.by_topic)): msgs}
        else:
            groups = {}
            for m in msgs:
                groups.setdefault(m.topic(), []).append(m)
        for topic, group in groups.items():
            rt = self.by_topic.get(topic)
            if rt is None:
                continue
            work = self._decode(rt, group)
            if self.commit.mode == "at_least_once":
                self.tracker.begin(work.batch_id, work.ranges)
            self._put(self._q_model, work)

    def _decode(self, rt: PipelineRuntime, msgs: list[Message]) -> Work:
        self._next_batch += 1
        n = len(msgs)
        parts = np.fromiter((m.partition() for m in msgs), dtype=np.int32, count=n)
        offs = np.fromiter((m.offset() for m in msgs), dtype=np.int64, count=n)
        ranges: dict[TP, tuple[int, int]] = {}
        for p in np.unique(parts).tolist():
            sel = offs[parts == p]
            ranges[(rt.input_topic, p)] = (int(sel.min()), int(sel.max()))
        values = [m.value() for m in msgs]
        work = Work(batch_id=self._next_batch, rt=rt, ranges=ranges, msgs=msgs, generation=self.generation,
                    consumed_at=time.monotonic(),
                    first_ts_ms=msgs[0].timestamp()[1])
        limit = rt.max_message_bytes
        oversized = [i for i, v in enumerate(values) if v is not None and len(v) > limit]
        for i in oversized:
            values[i] = None
        decoded = rt.decoder.decode(values)
        over = set(oversized)
        for idx, err in decoded.errors:
            if idx in over:
                work.dead.append((idx, "oversized", f"value of {len(msgs[idx].value() or b'')} bytes exceeds {limit}"))
            else:
                work.dead.append((idx, err.reason, str(err)))
        work.decoded = decoded
        ok = decoded.ok_index
        work.keys = [msgs[i].key() for i in ok.tolist()]
        work.in_parts = parts[ok]
        self.stats.consumed += n
        self.metrics.batch_consumed(rt.name, n)
        return work

    def _put(self, q: queue.Queue[Any], item: Any, *, force: bool = False) -> None:
        """Blocking put; pauses the assignment if the queue stays full (bounded memory)."""
        waited = 0.0
        while True:
            try:
                q.put(item, timeout=0.1)
                break
            except queue.Full:
                if self._failure is not None and not force:
                    return
                waited += 0.1
                if waited >= 0.5 and not self._paused and q is self._q_model:
                    self._pause(True)
        if self._paused:
            self._pause(False)

    def _pause(self, on: bool) -> None:
        try:
            assignment = self.consumer.assignment()
            if on:
                self.consumer.pause(assignment)
            else:
                self.consumer.resume(assignment)
            self._paused = on
        except Exception as exc:  # noqa: BLE001 - pausing is an optimisation
            log.debug("pause(%s) failed: %s", on, exc)

    # ------------------------------------------------------------------ rebalances
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("assigned %s", [(p.topic, p.partition) for p in partitions])
        if partitions:
            self.assigned.set()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        log.info("revoking %s", tps)
        gone = set(tps)
        if self._failure is not None:      # failing: commit nothing more, the next owner replays
            self._buf = []
            self.tracker.revoke(tps)
            return
        # Rows not yet handed to the stages are simply not processed: the next owner reads them.
        self._buf = [m for m in self._buf if (m.topic(), m.partition()) not in gone]
        if self.commit.mode == "exactly_once":
            self._min_generation = self.generation + 1
            self.commit.on_revoke(tps)
            if not self._stop.is_set():
                self._rewind(gone)
        else:
            self.commit.on_revoke(tps)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        log.warning("partitions lost %s", tps)
        gone = set(tps)
        self._buf = [m for m in self._buf if (m.topic(), m.partition()) not in gone]
        self.tracker.revoke(tps)
        if self.commit.mode == "exactly_once":
            self._min_generation = self.generation + 1
            self.commit.on_revoke(tps)

    def _request_rewind(self) -> None:
        """Sink thread: the transaction was aborted; drop this generation and rewind."""
        self._min_generation = self.generation + 1
        self._rewind_requested.set()

    def _rewind(self, exclude: set[TP]) -> None:
        """Source thread: every owned partition goes back to its committed offset."""
        self._min_generation = self.generation + 1
        self.generation += 1
        self._buf = []
        self.tracker.discard_pending()
        assignment = [tp for tp in self.consumer.assignment() if (tp.topic, tp.partition) not in exclude]
        if not assignment:
            return
        try:
            for tp in self.consumer.committed(assignment, timeout=30):
                offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
                self.consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
        except Exception as exc:  # noqa: BLE001 - without a rewind we must not go on
            self._fail(DeliveryError(f"rewind to committed offsets failed: {exc}"))
            return
        log.info("rewound %d partitions to committed offsets (generation %d)", len(assignment), self.generation)

    # ------------------------------------------------------------------ model stage
    def _model_loop(self) -> None:
        while True:
            work = self._q_model.get()
            if work is _STOP:
                self._put(self._q_sink, _STOP, force=True)
                return
            if self._failure is None and work.generation >= self._min_generation:
                self._score(work)
            work.scored_at = time.monotonic()
            self._put(self._q_sink, work, force=True)

    def _score(self, work: Work) -> None:
        rt = work.rt
        n = len(work.decoded.ok_index)
        work.scores = np.zeros(n, dtype=np.float32)
        work.ok_rows = np.zeros(0, dtype=np.int64)
        if n == 0:
            return
        if rt.kind == "embed":
            self._embed(work)
            return
        actives = [slot.active for slot in rt.arms]   # one read per batch: swaps land between batches
        work.active = actives[0]
        if rt.router is not None and len(actives) > 1:
            assignment = rt.router.assign(work.keys)
            parts = [(a, np.flatnonzero(assignment == i)) for i, a in enumerate(actives)]
        else:
            parts = [(actives[0], np.arange(n))]
        good = np.ones(n, dtype=bool)
        feats_by_spec: dict[int, np.ndarray] = {}
        for active, rows in parts:
            if len(rows) == 0:
                continue
            feats = self._features(work, active, feats_by_spec)
            if feats is None:
                good[rows] = False
                continue
            t0 = time.perf_counter()
            scores, bad = _predict_isolating(active.model, feats[rows], rows)
            took = time.perf_counter() - t0
            self.batcher.observe_model(len(rows), took)
            self.metrics.model_latency(rt.name, active.model.name, took, len(rows))
            work.scores[rows] = scores
            for r, msg in bad:
                good[rows[r]] = False
                work.dead.append((int(work.decoded.ok_index[rows[r]]), "model_error", msg))
            work.groups.append((active, rows[good[rows]]))
        work.ok_rows = np.flatnonzero(good)
        for slot in rt.shadows:
            self._shadow(work, slot.active, feats_by_spec)

    def _embed(self, work: Work) -> None:
        active = work.rt.slot.active
        work.active = active
        embedder = active.model
        texts = [t or "" for t in work.decoded.columns["text"].to_list()]
        t0 = time.perf_counter()
        try:
            emb = embedder.embed(texts)
            labels = embedder.head.predict(emb) if getattr(embedder, "head", None) is not None else None
        except Exception as exc:  # noqa: BLE001 - the whole batch failed: dead-letter it, keep going
            for i in work.decoded.ok_index.tolist():
                work.dead.append((i, "model_error", f"{type(exc).__name__}: {exc}"))
            return
        took = time.perf_counter() - t0
        self.batcher.observe_model(len(texts), took)
        self.metrics.model_latency(work.rt.name, embedder.name, took, len(texts))
        work.embeddings = emb
        work.labels = labels
        work.ok_rows = np.arange(len(texts))
        work.groups.append((active, work.ok_rows))

    def _features(self, work: Work, active: ActiveModel, cache: dict[int, np.ndarray]) -> np.ndarray | None:
        key = id(active.assembler)
        feats = cache.get(key)
        if feats is None:
            try:
                feats = cache[key] = active.assembler.assemble(work.decoded.columns)
            except StreamscoreError as exc:
                seen = {i for i, _, _ in work.dead}
                for i in work.decoded.ok_index.tolist():
                    if i not in seen:
                        work.dead.append((i, "features", str(exc)))
                return None
        return feats

    def _shadow(self, work: Work, active: ActiveModel, cache: dict[int, np.ndarray]) -> None:
        """A shadow scores the same rows; whatever it does, primary output is unaffected."""
        rows = work.ok_rows
        if rows is None or len(rows) == 0:
            return
        try:
            feats = cache.get(id(active.assembler))
            if feats is None:
                feats = cache[id(active.assembler)] = active.assembler.assemble(work.decoded.columns)
            scores = np.asarray(active.model.predict(feats[rows]), dtype=np.float32).reshape(-1)
            if len(scores) != len(rows):
                raise PredictError(f"shadow returned {len(scores)} scores for {len(rows)} rows")
        except Exception as exc:  # noqa: BLE001 - a failing shadow never affects primary output
            work.rt.counters["shadow_errors"] += 1
            first = str(exc).strip().splitlines()
            log.warning("shadow %s:%s failed on a batch (primary output unaffected): %s", active.model.name,
                        active.model.version, first[-1] if first else type(exc).__name__)
            return
        work.shadow_out.append((active, scores))

    # ------------------------------------------------------------------ sink stage
    def _sink_loop(self) -> None:
        while True:
            try:
                work = self._q_sink.get(timeout=0.02)
            except queue.Empty:
                work = None
            if work is _STOP:
                break
            if work is not None and self._failure is None and work.generation >= self._min_generation:
                self._emit(work)
            self.commit.tick()
        if self._failure is None:
            self.commit.finish()
        self.stats.committed.update(self.commit.committed_positions())

    def _emit(self, work: Work) -> None:
        rt = work.rt
        ack = self.commit.open_batch(work.batch_id)
        n = 0 if work.ok_rows is None else len(work.ok_rows)
        if n:
            self._emit_predictions(work, ack)
        for idx, reason, message in work.dead:
            m = work.msgs[idx]
            hdrs = error_headers(error=reason, message=message, topic=m.topic(), partition=m.partition(),
                                 offset=m.offset(), pipeline=rt.name, when_ms=int(time.time() * 1000))
            self.sink.produce_one(rt.dlq_topic, m.value(), m.key(), ack, headers=hdrs)
            self.stats.dead_by_reason[reason] = self.stats.dead_by_reason.get(reason, 0) + 1
        self.stats.produced += n
        self.stats.dead += len(work.dead)
        m = self.metrics
        m.batch_produced(rt.name, n)
        if work.dead:
            for reason, k in collections.Counter(r for _, r, _ in work.dead).items():
                m.dead_letters(rt.name, reason, k)
        m.stage_latency("model", work.scored_at - work.consumed_at)
        m.stage_latency("sink", time.monotonic() - work.scored_at)
        m.queue_depth("model", self._q_model.qsize())
        m.queue_depth("sink", self._q_sink.qsize())
        self.stats.batches += 1
        rt.counters["in"] += len(work.msgs)
        rt.counters["out"] += n
        rt.counters["dead"] += len(work.dead)
        self.commit.close_batch(work.ranges, ack)
        work.emitted_at = time.monotonic()
        if self._on_batch is not None:
            self._on_batch(work)

    def _emit_predictions(self, work: Work, ack: BatchAck) -> None:
        rt = work.rt
        if rt.kind == "embed":
            self._produce_embeddings(work, ack)
            return
        assert work.scores is not None and work.ok_rows is not None
        cols = work.decoded.columns
        now_ms = int(time.time() * 1000)
        times = cols.get(rt.time_field) if rt.time_field else None
        for active, rows in work.groups:
            if len(rows):
                self._produce_scores(work, ack, rt.output_topic, active, active.variant, rows,
                                     work.scores[rows], times, now_ms)
        shadow_for_primary = None
        for active, scores in work.shadow_out:
            if rt.shadow_topic:
                self._produce_scores(work, ack, rt.shadow_topic, active, "shadow", work.ok_rows, scores, times, now_ms)
            if shadow_for_primary is None:
                shadow_for_primary = (active, scores)
        if rt.telemetry_topic:
            self._telemetry(work, ack, shadow_for_primary)

    def _produce_scores(self, work: Work, ack: BatchAck, topic: str, active: ActiveModel, variant: str,
                        rows: np.ndarray, scores: np.ndarray, times: Any, now_ms: int) -> None:
        rt = work.rt
        n = len(rows)
        cols = work.decoded.columns
        keys = [work.keys[i] for i in rows.tolist()] if n != len(work.keys) else work.keys
        event_time = _take(times, rows, len(work.keys)) if times is not None else None
        if event_time is None:
            event_time = np.full(n, now_ms, dtype=np.int64)
        out = {
            "event_id": _take(cols["event_id"], rows, len(work.keys)),
            "key": _str_column(keys),
            "model": _const_str(active.model.name, n),
            "version": _const_str(str(active.model.version), n),
            "variant": np.full(n, variant, dtype=object),
            "score": scores.astype(np.float64, copy=False),
            "decision": scores >= active.threshold,
            "event_time": event_time,
            "scored_at": np.full(n, now_ms, dtype=np.int64),
        }
        values = rt.encoder.encode(out, n)
        parts = None
        if rt.partitioning == "input" and rt.out_partitions > 0 and work.in_parts is not None:
            parts = work.in_parts[rows] % rt.out_partitions
        headers = [("model", active.model.name.encode()), ("version", str(active.model.version).encode()),
                   ("variant", variant.encode())]
        self.sink.produce_batch(topic, values, keys, ack, partitions=parts, headers=headers)
        if variant == "shadow":
            return
        self.metrics.e2e_latency(rt.name, (now_ms - event_time) / 1000.0)
        lat = now_ms - event_time[-min(n, 64):]
        with self._lat_lock:
            self.stats.latency_ms.extend(lat.tolist())
            if len(self.stats.latency_ms) > 20000:
                del self.stats.latency_ms[:10000]

    def _produce_embeddings(self, work: Work, ack: BatchAck) -> None:
        from models.text import embedding_column

        rt, active = work.rt, work.rt.slot.active
        assert work.embeddings is not None and active is not None
        n = len(work.embeddings)
        cols = work.decoded.columns
        now_ms = int(time.time() * 1000)
        out = {
            "event_id": cols["event_id"],
            "key": cols["key"] if "key" in cols else _str_column(work.keys),
            "model": _const_str(active.model.name, n),
            "version": _const_str(str(active.model.version), n),
            "variant": np.full(n, "primary", dtype=object),
            "embedding": embedding_column(work.embeddings),
            "label": np.array(work.labels if work.labels is not None else [None] * n, dtype=object),
            # TextEvent has no event time: the record's Kafka timestamp stands in for it
            "event_time": np.fromiter((work.msgs[i].timestamp()[1] for i in work.decoded.ok_index.tolist()),
                                      dtype=np.int64, count=n),
            "scored_at": np.full(n, now_ms, dtype=np.int64),
        }
        values = rt.encoder.encode(out, n)
        parts = None
        if rt.partitioning == "input" and rt.out_partitions > 0 and work.in_parts is not None:
            parts = work.in_parts % rt.out_partitions
        headers = [("model", active.model.name.encode()), ("version", str(active.model.version).encode()),
                   ("variant", b"primary")]
        self.sink.produce_batch(rt.output_topic, values, work.keys, ack, partitions=parts, headers=headers)

    def _telemetry(self, work: Work, ack: BatchAck, shadow: tuple[ActiveModel, np.ndarray] | None) -> None:
        """Per-batch summaries for the side stream; part of the batch, so covered by its ack/transaction."""
        from schemas.columns import take

        rt = work.rt
        assert work.scores is not None and work.ok_rows is not None
        cols = work.decoded.columns
        all_rows = len(work.ok_rows) == len(work.keys)
        for active, rows in work.groups:
            builder = active.telemetry
            if builder is None or len(rows) == 0:
                continue
            sub = cols if len(rows) == len(work.keys) else {k: take(v, rows) for k, v in cols.items()}
            kw: dict[str, Any] = {}
            if shadow is not None and active is work.groups[0][0] and all_rows and len(rows) == len(work.ok_rows):
                kw = {"shadow_scores": shadow[1], "shadow_model": shadow[0].model.name,
                      "shadow_version": str(shadow[0].model.version)}
            first_tp = min(work.ranges)
            summary = builder.summarize(sub, work.scores[rows], variant=active.variant,
                                        event_time_ms=sub.get(rt.time_field) if rt.time_field else None,
                                        symbols=work.decoded.symbols,
                                        batch_id=f"{first_tp[0]}:{first_tp[1]}:{work.ranges[first_tp][0]}:{active.variant}",
                                        **kw)
            self.sink.produce_one(rt.telemetry_topic, builder.encode(summary), builder.key(), ack)  # type: ignore[arg-type]

    def take_latencies(self) -> list[float]:
        with self._lat_lock:
            out, self.stats.latency_ms = self.stats.latency_ms, []
        return out


def _predict_isolating(model: Any, feats: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Score ``feats``; if the model raises, split the batch until the bad rows stand alone."""
    scores = np.zeros(len(feats), dtype=np.float32)
    bad: list[tuple[int, str]] = []
    stack = [(0, len(feats))]
    while stack:
        lo, hi = stack.pop()
        try:
            out = np.asarray(model.predict(feats[lo:hi]), dtype=np.float32).reshape(-1)
            if len(out) != hi - lo:
                raise PredictError(f"model returned {len(out)} scores for {hi - lo} rows")
            scores[lo:hi] = out
        except Exception as exc:  # noqa: BLE001 - isolate, then dead-letter
            if hi - lo == 1:
                bad.append((lo, f"{type(exc).__name__}: {exc}"))
            else:
                mid = (lo + hi) // 2
                stack.append((mid, hi))
                stack.append((lo, mid))
    return scores, bad


def _take(col: Any, rows: np.ndarray, n: int) -> Any:
    """``col`` restricted to ``rows`` (sorted, unique); the column itself when rows cover all of it."""
    if col is None:
        return None
    if len(rows) == len(col):
        return col
    return col.take(rows) if hasattr(col, "take") else col[rows]


def _str_column(items: list[bytes | None]) -> Any:
    from schemas.columnar import StrColumn

    parts = [b or b"" for b in items]
    lengths = np.fromiter(map(len, parts), dtype=np.int64, count=len(parts))
    start = np.zeros(len(parts), dtype=np.int64)
    if len(parts) > 1:
        np.cumsum(lengths[:-1], out=start[1:])
    buf = np.frombuffer(b"".join(parts), dtype=np.uint8)
    return StrColumn(buf=buf, start=start, length=lengths)


def _const_str(s: str, n: int) -> Any:
    from schemas.columnar import StrColumn

    raw = s.encode()
    return StrColumn(buf=np.frombuffer(raw, dtype=np.uint8), start=np.zeros(n, dtype=np.int64),
                     length=np.full(n, len(raw), dtype=np.int64))
