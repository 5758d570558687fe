"""The scoring loop: consume -> decode -> model -> encode -> produce -> commit.

Three threads, joined by bounded queues, so stages overlap (batch k+1 decodes while batch
k is in the model and batch k-1 is being produced):

    source (caller's thread)   consume(n, timeout), micro-batch, decode, register offsets
    model                      assemble features, predict (bad rows isolated by bisection)
    sink                       encode, produce, serve acks, store committable offsets

Every offset decision of both delivery modes lives in the commit protocol
(consumers/commit.py), which the scorer calls without knowing the mode: the source
registers each batch's offset ranges before the batch enters the queue (so registration
order is consumption order) and gets the batch's *generation*; every stage skips work whose
generation the protocol no longer accepts (after a rewind); the sink opens and closes each
batch with the protocol and reports failed produce calls to it.

Each pipeline batches by its own settings: rows are buffered per input topic and each
buffer closes by its pipeline's batcher.

Stopping is bounded: ``stop()`` starts the budget (``stop_timeout_s``); the last commit,
the joins and the consumer's close all share it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Literal, TypeVar, Union

import numpy as np
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from consumers.batcher import AdaptiveBatcher, CloseReason
from consumers.commit import AtLeastOnce, CommitProtocol, ExactlyOnce
from consumers.decode_stage import decode_work
from consumers.model_stage import ModelStage
from consumers.native_consume import NativeDrain
from consumers.offsets import TP
from consumers.outputs import OutputWriter
from consumers.raw_batch import RawBatch
from consumers.runtime import PipelineRuntime
from consumers.sink_gate import SinkGate
from consumers.warmup import warm_up
from consumers.work import Work
from schemas.errors import DeliveryError, StoppedWhileWaiting
from sinks.kafka_sink import KafkaSink

if TYPE_CHECKING:
    from monitoring.metrics import ScorerMetrics

log = logging.getLogger(__name__)

Delivery = Literal["at_least_once", "exactly_once"]
CLOSE_RESERVE_S = 5.0      # of the stop budget, kept for closing the consumer (it commits and leaves the group)


class _Stop:
    """The end-of-stream marker that travels through the stage queues."""


_STOP = _Stop()
Chunk = TypeVar("Chunk", list[Message], RawBatch)   # what one consume call returns, on either path
# The largest batch the source thread scores itself when the model stage is idle (docs/performance.md:
# quiet interleaved runs, p50 / p99 at 10k events/s 17-18 / 53-79 -> 14-15 / 38-47 ms, at 100k/s
# 28-30 / 78-116 -> 19-26 / 50-65 ms). Larger batches come at high load, where the stages overlap.
INLINE_MAX_ROWS = 2048
# How long the source thread waits for the sink stage to drain before it hands a batch it scored
# itself to the sink thread (consumers/sink_gate.py). Interleaved runs, 20-s windows after 5 s idle,
# p50 / p99 ms: at 10k events/s 12-15 / 39-136 without waiting -> 12-14 / 27-36 with 10-20 ms,
# at 100k/s 22-29 / 81-261 -> 20-27 / 57-98.
INLINE_EMIT_WAIT_S = 0.02
MIN_WAIT_S = 0.001      # the shortest wait for more rows (both consume paths count whole milliseconds)
Item = Union[Work, _Stop]


def _without_msgs(msgs: list[Message], gone: set[TP]) -> list[Message]:
    return [m for m in msgs if (m.topic(), m.partition()) not in gone]


@dataclass
class ScorerStats:
    consumed: int = 0
    produced: int = 0
    dead: int = 0
    batches: int = 0
    scored_inline: int = 0          # batches the source thread scored itself (small, the model stage idle)
    emitted_inline: int = 0         # ... and produced itself too (the sink stage idle as well)
    committed: dict[TP, int] = field(default_factory=dict)
    latency_ms: list[float] = field(default_factory=list)   # recent e2e samples (event_time -> scored_at)


class Scorer:
    """One consumer in the group: owns the consumer, the three stage threads and their queues.

    It never decides an offset matter itself (the commit protocol does), never encodes or
    produces a record itself (the OutputWriter does), and never blocks without a bound
    once a stop was asked for.
    """

    def __init__(
        self,
        *,
        consumer: Consumer,
        sink: KafkaSink,
        pipelines: list[PipelineRuntime],
        batchers: dict[str, AdaptiveBatcher],
        make_producer: Callable[[], Producer],
        queue_depth: int = 4,
        delivery: Delivery = "at_least_once",
        commit_interval_s: float = 0.1,
        stop_timeout_s: float = 30.0,
        metrics: ScorerMetrics | None = None,
        warm_up: bool = True,
        native_consume: bool = False,
    ) -> None:
        missing = [p.name for p in pipelines if p.name not in batchers]
        if missing:
            raise ValueError(f"no batcher for pipelines {missing}")
        self.consumer = consumer
        self.sink = sink
        self.by_topic = {p.input_topic: p for p in pipelines}
        self.pipelines = pipelines
        self.batchers = {p.input_topic: batchers[p.name] for p in pipelines}
        self.stats = ScorerStats()
        self._q_model: queue.Queue[Item] = queue.Queue(queue_depth)
        self._q_sink: queue.Queue[Item] = queue.Queue(queue_depth)
        self._stop = threading.Event()
        self._stop_at: float | None = None
        self._stop_timeout_s = stop_timeout_s
        self._failure: BaseException | None = None
        self._next_batch = 0
        self._bufs: dict[str, list[Message]] = {t: [] for t in self.by_topic}
        # native_consume: records drained into arrays (consumers/native_consume.py), buffered as chunks
        self.native_consume = native_consume
        self._drain: NativeDrain | None = None
        self._raw: dict[str, list[RawBatch]] = {t: [] for t in self.by_topic}
        self._paused = False
        self._model_busy = False                 # the model stage is scoring a batch
        # batches handed to the model stage / passed on by it to the sink queue; each counter has one
        # writer (the source thread, the model thread), so equal counts mean the model stage holds nothing
        self._model_in = 0
        self._model_out = 0
        self._sink_busy = False                  # the sink stage is emitting a batch
        # whether the source thread may produce a batch it scored itself (consumers/sink_gate.py)
        self._gate = SinkGate(INLINE_EMIT_WAIT_S)
        self._lat_lock = threading.Lock()
        self.assigned = threading.Event()        # set once the group has given us partitions
        self._revoked_now: set[TP] = set()       # partitions revoked inside the current consume() call
        if metrics is None:
            from prometheus_client import CollectorRegistry

            from monitoring.metrics import ScorerMetrics

            metrics = ScorerMetrics(registry=CollectorRegistry())   # private: nothing serves it
        self.metrics = metrics
        self.model_stage = ModelStage(batchers={p.name: batchers[p.name] for p in pipelines}, metrics=metrics)
        self.outputs = OutputWriter(sink=sink, metrics=metrics, record_latency=self._record_latency)
        self.warm_up = warm_up                    # run synthetic batches through every stage before joining
        self.closers: list[Callable[[], None]] = []   # run when the scorer stops (e.g. registry watchers)
        self.commit: CommitProtocol
        if delivery == "exactly_once":
            self.commit = ExactlyOnce(consumer=consumer, sink=sink, make_producer=make_producer, fail=self._fail,
                                      interval_s=commit_interval_s)
        else:
            name = pipelines[0].name
            self.commit = AtLeastOnce(consumer=consumer, sink=sink, make_producer=make_producer, fail=self._fail,
                                      on_error=lambda: metrics.delivery_error(name))

    @property
    def batcher(self) -> AdaptiveBatcher:
        """The first pipeline's batcher (the only one in a one-pipeline process)."""
        return self.batchers[self.pipelines[0].input_topic]

    # ------------------------------------------------------------------ control
    def stop(self) -> None:
        """Ask the scorer to finish in-flight batches, commit and return (signal-safe)."""
        if self._stop_at is None:
            self._stop_at = time.monotonic()
        self._stop.set()

    def _deadline(self) -> float:
        """When the stages must be done: the stop budget less what closing the consumer needs."""
        start = self._stop_at if self._stop_at is not None else time.monotonic()
        return start + max(1.0, self._stop_timeout_s - CLOSE_RESERVE_S)

    def _fail(self, exc: BaseException) -> None:
        if isinstance(exc, StoppedWhileWaiting) and self._stop.is_set():
            # a stop ended a wait (registry, lookup store): not a failure; that batch is never committed
            log.info("%s: its batch is left to the next owner", exc)
            return
        if self._failure is None:
            self._failure = exc
            log.error("scorer failing: %s", exc)
        self.stop()

    def run(self, *, max_seconds: float | None = None) -> None:
        """Run until stop() (or max_seconds); raises the first stage failure."""
        if self.warm_up:
            for rt in self.pipelines:
                warm_up(rt, self.batchers[rt.input_topic])
        self.consumer.subscribe(list(self.by_topic), on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)
        if self.native_consume:
            self._drain = NativeDrain.attach(self.consumer)
        model_t = threading.Thread(target=self._guard(self._model_loop, self._q_model, self._q_sink),
                                   name="model", daemon=True)
        sink_t = threading.Thread(target=self._guard(self._sink_loop, self._q_sink, None), name="sink", daemon=True)
        model_t.start()
        sink_t.start()
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        try:
            self._source_loop(deadline)
        except BaseException as exc:  # noqa: BLE001 - reported after cleanup
            self._fail(exc)
        finally:
            self.stop()
            self._put(self._q_model, _STOP, force=True)
            for t in (model_t, sink_t):
                t.join(max(0.1, self._deadline() - time.monotonic()))
                if t.is_alive():
                    log.error("the %s stage did not stop within the stop budget; what it holds is replayed", t.name)
                    self.commit.abandon()
            for close in self.closers:
                try:
                    close()
                except Exception as exc:  # noqa: BLE001 - shutting down anyway
                    log.warning("closing %s failed: %s", close, exc)
            if self._drain is not None:
                self._drain.close()     # its queue reference, before the consumer's close waits on it
        self.consumer.close()
        if self._failure is not None:
            raise self._failure

    def _guard(self, fn: Callable[[], None], src: queue.Queue[Item],
               dst: queue.Queue[Item] | None) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001
                self._fail(exc)
                if dst is None:
                    self.commit.abandon()
                # keep draining so the stages upstream never block on a full queue
                while not isinstance(src.get(), _Stop):
                    pass
                if dst is not None:
                    self._put(dst, _STOP, force=True)
        return run

    # ------------------------------------------------------------------ source stage
    def _source_loop(self, deadline: float | None) -> None:
        while not self._stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            if self._drain is not None:
                self._source_step(self._drain.consume, RawBatch.without, self._accept_raw)
            else:
                self._source_step(self._consume_msgs, _without_msgs, self._accept)
        self._flush()

    def _source_step(self, consume: Callable[[int, float], Chunk], without: Callable[[Chunk, set[TP]], Chunk],
                     accept: Callable[[Chunk], None]) -> None:
        """One turn of the source loop, the same on both consume paths (``Consumer.consume`` into
        messages, the native drain into arrays): take what was fetched, drop what a rewind or a
        revoke made stale, buffer the rest, close the batches that are due."""
        chunks, drained = self._take(consume)
        if self.commit.source_tick():
            # a rewind was asked for: what we hold and what this call returned are stale
            self._drop(None)
            return
        if self._revoked_now:
            # consume() can return records it fetched before a revoke it served: drop them
            gone, self._revoked_now = self._revoked_now, set()
            chunks = [without(c, gone) for c in chunks]
        for chunk in chunks:
            if len(chunk):
                accept(chunk)
        self._close_batches(drained)

    def _close_batches(self, drained: bool) -> None:
        now = time.monotonic()
        idle = self._model_idle()
        for topic, batcher in self.batchers.items():
            reason = batcher.should_close(now, drained=drained, next_idle=idle)
            if reason is not None:
                self._dispatch(topic, reason)

    def _flush(self) -> None:
        if self._failure is None:
            for topic in self.batchers:
                if self._held(topic):
                    self._dispatch(topic, "flush")

    def _held(self, topic: str) -> int:
        """Rows buffered for ``topic``'s open batch."""
        return len(self._bufs[topic]) + sum(map(len, self._raw[topic]))

    def _take(self, consume: Callable[[int, float], Chunk]) -> tuple[list[Chunk], bool]:
        """What the consumer has fetched (up to what the open batches still take), and whether
        that drained it (fewer rows than asked for were waiting)."""
        want = max(1, min(b.max_size - self._held(t) for t, b in self.batchers.items()))
        now = time.monotonic()
        open_ = [b for t, b in self.batchers.items() if self._held(t)]
        chunks = [consume(want, 0)]
        got = len(chunks[0])
        if got < want and open_ and not (self._model_idle() and all(b.close_by_need for b in open_)):
            # a batch is open and not closing by need: wait for more rows, but no longer than its deadline.
            # Both consume paths wait in whole milliseconds: a wait under one would return at once, and
            # the loop would spin on empty calls until the deadline, taking CPU and the GIL from the stages
            left = min(b.time_left(now) for b in open_)
            chunks.append(consume(want - got, max(left, MIN_WAIT_S) if left > 0 else 0.0))
        elif not got and not open_:
            # idle: wake on the first record, then take whatever else is already here
            chunks = [consume(1, 0.1)]
            if len(chunks[0]) and want > 1:
                chunks.append(consume(want - 1, 0))
        return chunks, sum(map(len, chunks)) < want

    def _consume_msgs(self, n: int, timeout: float) -> list[Message]:
        return list(self.consumer.consume(n, timeout))

    def _model_idle(self) -> bool:
        """The model and sink stages hold no batch and none waits for them (read without a lock:
        a hint). A busy sink counts: a batch closed early would only queue behind it, and each
        batch costs the sink a fixed amount (encode set-up, telemetry, produce calls)."""
        return not (self._model_busy or self._sink_busy) and self._q_model.empty() and self._q_sink.empty()

    def _accept(self, msgs: list[Message]) -> None:
        good = msgs
        if list(map(Message.error, msgs)).count(None) != len(msgs):   # C-level loop: this runs per message
            good = []
            for m in msgs:
                err = m.error()
                if err is None:
                    good.append(m)
                elif err.code() == KafkaError._PARTITION_EOF:
                    continue
                elif err.fatal():
                    raise DeliveryError(f"consumer fatal error: {err}", kafka_error=err)
                else:
                    log.warning("consumer error: %s", err)
        if not good:
            return
        if len(self._bufs) == 1:
            groups = {next(iter(self._bufs)): good}
        else:
            groups = {}
            for m in good:
                groups.setdefault(m.topic(), []).append(m)
        now = time.monotonic()
        for topic, group in groups.items():
            buf = self._bufs.get(topic)
            if buf is None:
                continue
            ts = group[0].timestamp()[1]
            age = max(0.0, time.time() - ts / 1000.0) if ts > 0 else 0.0
            buf.extend(group)
            self.batchers[topic].add(len(group), now, oldest_age_s=age)

    def _accept_raw(self, batch: RawBatch) -> None:
        """``_accept`` of drained records: error events as ``_accept`` treats them, records buffered."""
        assert self._drain is not None
        if bool(np.any(batch.err != 0)):
            for i in np.flatnonzero(batch.err != 0).tolist():
                code = int(batch.err[i])
                if code == KafkaError._PARTITION_EOF:
                    continue
                err = KafkaError(code, self._drain.error_text(batch, i))
                if err.fatal():
                    raise DeliveryError(f"consumer fatal error: {err}", kafka_error=err)
                log.warning("consumer error: %s", err)
            batch = batch.take(batch.err == 0)
            if not len(batch):
                return
        now = time.monotonic()
        for topic, group in batch.by_topic().items():
            chunks = self._raw.get(topic)
            if chunks is None:
                continue
            ts = int(group.timestamp[0])
            age = max(0.0, time.time() - ts / 1000.0) if ts > 0 else 0.0
            chunks.append(group)
            self.batchers[topic].add(len(group), now, oldest_age_s=age)

    def _drop(self, gone: set[TP] | None) -> None:
        """Forget buffered rows (of ``gone`` partitions, or all): the next owner or a rewind re-reads them."""
        for topic, buf in self._bufs.items():
            if gone is None:
                buf.clear()
            elif buf:
                buf[:] = [m for m in buf if (m.topic(), m.partition()) not in gone]
        for chunks in self._raw.values():
            chunks[:] = [] if gone is None else [c for c in (c.without(gone) for c in chunks) if len(c)]

    def _dispatch(self, topic: str, reason: CloseReason) -> None:
        msgs: list[Message] | RawBatch = self._bufs[topic]
        self._bufs[topic] = []
        if self._raw[topic]:
            msgs = RawBatch.concat(self._raw[topic])
            self._raw[topic] = []
        batcher = self.batchers[topic]
        batcher.close(time.monotonic(), reason)
        if not msgs:   # a revoke or rewind emptied the open batch: nothing to decode
            return
        rt = self.by_topic[topic]
        self.metrics.batch_closed(rt.name, len(msgs), batcher.stats.last_wait_s, reason)
        work = self._decode(rt, msgs)
        if rt.aggregates is not None:
            # here, not in the model stage: it does no I/O, so it runs beside the previous batch's model and
            # lookups; batches apply in dispatch order, and assign / revoke run on this thread too
            work.state = rt.aggregates.view()   # the states restored for what was consumed so far
            rt.aggregates.apply(work.state, work)   # every decoded event counts, whatever happens to it later
        work.generation = self.commit.register(work.batch_id, work.ranges)
        if reason != "size" and len(msgs) <= INLINE_MAX_ROWS and self._model_out == self._model_in \
                and not self._q_sink.full() and rt.lookups is None and rt.kind != "embed":
            # a small batch while the model stage holds nothing: scoring it here saves the hand-over
            # (waking the model thread on a busy box costs more than the model does). Order is kept:
            # every batch before it is already in the sink queue, and only this thread can add to it
            # now, so the put below does not block
            self._score(work)
            self.stats.scored_inline += 1
            if self._emit_inline(work):
                return
            self._gate.queued_by_source()
            self._put(self._q_sink, work)
            return
        self._model_in += 1
        self._put(self._q_model, work)

    def _decode(self, rt: PipelineRuntime, msgs: list[Message] | RawBatch) -> Work:
        self._next_batch += 1
        work = decode_work(rt, msgs, batch_id=self._next_batch)
        self.stats.consumed += len(msgs)
        self.metrics.batch_consumed(rt.name, len(msgs))
        return work

    def _put(self, q: queue.Queue[Item], item: Item, *, force: bool = False) -> None:
        """Blocking put; pauses the assignment if the queue stays full (bounded memory)."""
        waited = 0.0
        while True:
            try:
                q.put(item, timeout=0.1)
                break
            except queue.Full:
                if self._failure is not None and not force:
                    return
                if force and self._stop_at is not None and time.monotonic() > self._deadline():
                    return      # a stage is stuck; run() reports it
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
        # state first: the consumer fetches nothing of these partitions until this callback returns
        self._state_call("assign", partitions)
        # given back within one consume() call: keep its messages (a duplicate at worst, never a gap)
        self._revoked_now -= {(p.topic, p.partition) for p in partitions}
        if partitions:
            self.assigned.set()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        log.info("revoking %s", tps)
        self._revoked_now |= set(tps)
        # Rows not yet handed to the stages are simply not processed: the next owner reads them.
        self._drop(set(tps))
        if self._failure is not None:      # failing: commit nothing more, the next owner replays
            self.commit.abandon()
        self.commit.on_revoke(tps)
        self._state_call("revoke", partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        log.warning("partitions lost %s", tps)
        self._revoked_now |= set(tps)
        self._drop(set(tps))
        self.commit.on_lost(tps)
        self._state_call("revoke", partitions)

    def _state_call(self, what: Literal["assign", "revoke"], partitions: list[TopicPartition]) -> None:
        """Restore (assign) or drop (revoke) the aggregate state of each pipeline's partitions."""
        for rt in self.pipelines:
            mine = [p.partition for p in partitions if p.topic == rt.input_topic]
            if rt.aggregates is None or not mine:
                continue
            if what == "assign":
                rt.aggregates.assign(mine)
            else:
                rt.aggregates.revoke(mine)

    # ------------------------------------------------------------------ model stage
    def _model_loop(self) -> None:
        while True:
            work = self._q_model.get()
            if isinstance(work, _Stop):
                self._put(self._q_sink, _STOP, force=True)
                return
            self._model_busy = True
            try:
                self._score(work)
            finally:
                self._model_busy = False
            self._gate.queued_by_model()
            self._put(self._q_sink, work, force=True)
            self._model_out += 1

    def _score(self, work: Work) -> None:
        if self._failure is None and self.commit.current(work.generation):
            self.model_stage.score(work)
        work.scored_at = time.monotonic()

    # ------------------------------------------------------------------ sink stage
    def _sink_loop(self) -> None:
        while True:
            try:
                work: Item | None = self._q_sink.get(timeout=0.02)
            except queue.Empty:
                work = None
            if isinstance(work, _Stop):
                break
            with self._gate.lock:
                if work is not None:
                    self._sink_busy = True
                    try:
                        self._sink_step(work)
                    finally:
                        self._sink_busy = False
                    self._gate.finished()
                self.commit.tick()
        if self._failure is None:
            self.commit.finish(self._deadline())
        else:
            self.commit.abandon()
        self.stats.committed.update(self.commit.committed_positions())

    def _sink_step(self, work: Work) -> None:
        """Emit one batch unless it is stale; a produce that raised goes to the commit protocol.
        The caller holds the gate's lock."""
        if self._failure is None and self.commit.current(work.generation):
            try:
                self._emit(work)
            except DeliveryError as exc:
                self.commit.produce_failed(exc)
            except KafkaException as exc:      # begin_transaction on a failed producer
                self.commit.produce_failed(DeliveryError(str(exc), kafka_error=exc.args[0]))

    def _emit_inline(self, work: Work) -> bool:
        """Emit a batch scored on the source thread right here, once the sink stage holds nothing
        (every earlier batch is emitted, so order is kept), waiting for that ``INLINE_EMIT_WAIT_S``
        at most (consumers/sink_gate.py). False (nothing done): the caller queues the batch.

        The sink thread still serves the commit protocol (``tick``, every 20 ms at the latest): the
        bounded wait keeps a transaction's commit from blocking consumption for long."""
        if not self._gate.emit_inline(lambda: self._sink_step(work)):
            return False
        self.stats.emitted_inline += 1
        return True

    def _emit(self, work: Work) -> None:
        rt = work.rt
        ack = self.commit.open_batch(work.batch_id)
        n = 0 if work.ok_rows is None else len(work.ok_rows)
        if n:
            self.outputs.emit(work, ack)
        if work.dead:
            self.outputs.emit_dead(work, ack)
        if work.changelog is not None:
            self.outputs.emit_changelog(work, ack)
        self.stats.produced += n
        self.stats.dead += len(work.dead)
        m = self.metrics
        m.batch_produced(rt.name, n)
        m.stage_latency("model", work.scored_at - work.consumed_at)
        m.stage_latency("sink", time.monotonic() - work.scored_at)
        m.queue_depth("model", self._q_model.qsize())
        m.queue_depth("sink", self._q_sink.qsize())
        self.stats.batches += 1
        rt.counters["in"] += len(work.msgs)
        rt.counters["out"] += n
        rt.counters["dead"] += len(work.dead)
        self.commit.close_batch(work.ranges, ack, work.generation)

    def _record_latency(self, samples: list[float]) -> None:
        with self._lat_lock:
            self.stats.latency_ms.extend(samples)
            if len(self.stats.latency_ms) > 20000:
                del self.stats.latency_ms[:10000]

    def take_latencies(self) -> list[float]:
        with self._lat_lock:
            out, self.stats.latency_ms = self.stats.latency_ms, []
        return out
