"""Per-partition aggregate state backed by a compacted changelog topic (the Kafka Streams state-store idea).

    assign(partitions)   source thread, inside the group callback: each partition's state is
                         rebuilt from its changelog partition, read from the beginning to its end
                         (read_committed under exactly-once: only committed batches' records),
                         before the consumer fetches a single input record of it
    revoke(partitions)   the state is dropped; work already dispatched keeps the view it was given
    view()               source thread, at dispatch: the partitions' states this batch applies to
    apply(view, work)    source thread, at dispatch, right after view() (so batches apply in consumption
                         order and never beside an assign or revoke; it does no I/O, so it overlaps the
                         model thread's work on the batch before): the aggregate columns join the
                         decoded batch, and the batch's changelog records (a block of entries per partition) are put on
                         ``work.changelog``; the sink writes them under the batch's acknowledgement
                         (at-least-once) or inside its transaction (exactly-once), like every other output

Changelog partition = input partition, so a partition's state moves with it in a rebalance.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from consumers.work import message_offsets, message_times_ms
from schemas.columns import StrColumn
from schemas.errors import DeliveryError

log = logging.getLogger(__name__)

Record = tuple[bytes, bytes | None]
NOT_READY = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError.UNKNOWN_TOPIC_OR_PART,
             KafkaError._UNKNOWN_PARTITION, KafkaError._UNKNOWN_TOPIC}      # a new topic's partition, not served yet


class Applied(Protocol):
    """A batch's aggregate columns and changelog records (``models.aggregates.Applied``)."""

    columns: dict[str, np.ndarray]
    keys: list[bytes]
    values: list[bytes]
    partitions: list[int]
    tombstones: list[tuple[bytes, int]]


class Engine(Protocol):
    """The aggregate logic (``models.aggregates.AggregateEngine``)."""

    def new_state(self) -> Any: ...
    def restore(self, records: Iterable[Record]) -> Any: ...
    def apply(self, states: Mapping[int, Any], columns: Mapping[str, Any], nulls: Mapping[str, np.ndarray],
              symbols: Mapping[str, Sequence[str]], parts: np.ndarray, offsets: np.ndarray,
              times: np.ndarray) -> Applied: ...


class StateMetrics(Protocol):
    """What the state reports (``monitoring.metrics.ScorerMetrics``)."""

    def aggregate_state(self, pipeline: str, keys: int, nbytes: int) -> None: ...
    def aggregate_restore(self, pipeline: str, records: int, seconds: float) -> None: ...


@dataclass
class Changelog:
    """A batch's changelog records, produced with its outputs: a block of entries per store and partition
    (``models.agg_records``), laid end to end in one buffer (``values``: ``(buf, starts, lengths)``, ``keys`` a ``StrColumn``), then the tombstones."""

    topic: str
    values: tuple[np.ndarray, np.ndarray, np.ndarray]
    keys: StrColumn
    partitions: np.ndarray
    tombstones: list[bytes | None]
    tombstone_partitions: np.ndarray

    @classmethod
    def of(cls, topic: str, applied: Applied) -> Changelog:
        values, dead = applied.values, applied.tombstones
        keys: list[bytes | None] = list(applied.keys)
        lengths = np.fromiter(map(len, values), np.int64, len(values))
        starts = np.cumsum(lengths) - lengths
        return cls(topic, (np.frombuffer(b"".join(values), np.uint8), starts, lengths), StrColumn.from_bytes(keys),
                   np.asarray(applied.partitions, np.int32), [k for k, _ in dead],
                   np.fromiter((p for _, p in dead), np.int32, len(dead)))


class ChangelogReader:
    """Reads changelog partitions from the beginning to their end with a short-lived consumer."""

    def __init__(self, make_consumer: Callable[[], Consumer], *, timeout_s: float = 600.0) -> None:
        self._make_consumer = make_consumer
        self.timeout_s = timeout_s

    def read(self, topic: str, partitions: Sequence[int]) -> dict[int, list[Record]]:
        """Every record of each partition, in log order. The end is the high watermark (read_uncommitted)
        or the last stable offset (read_committed): where librdkafka reports partition EOF."""
        out: dict[int, list[Record]] = {p: [] for p in partitions}
        if not partitions:
            return out
        consumer = self._make_consumer()
        deadline = time.monotonic() + self.timeout_s
        try:
            todo = set(partitions)
            for p in list(todo):
                lo, hi = self._watermarks(consumer, TopicPartition(topic, p), deadline)
                if hi <= lo:
                    todo.discard(p)               # empty (or compacted away): nothing to read
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(todo)])
            while todo:
                if time.monotonic() > deadline:
                    raise DeliveryError(f"restoring {topic} partitions {sorted(todo)} took over {self.timeout_s:.0f}s")
                for m in consumer.consume(10000, 0.5):
                    self._take(m, topic, out, todo)
        finally:
            consumer.close()
        return out

    @staticmethod
    def _watermarks(consumer: Consumer, tp: TopicPartition, deadline: float) -> tuple[int, int]:
        """A partition's watermarks. A changelog topic created moments ago may have no leader yet (or not be
        known to the broker asked): asked again until ``deadline``."""
        while True:
            try:
                lo, hi = consumer.get_watermark_offsets(tp, timeout=10.0, cached=False)
                return int(lo), int(hi)
            except KafkaException as exc:
                err = exc.args[0]
                code = err.code() if isinstance(err, KafkaError) else None
                if code not in NOT_READY or time.monotonic() > deadline:
                    raise
            time.sleep(0.2)

    @staticmethod
    def _take(m: Message, topic: str, out: dict[int, list[Record]], todo: set[int]) -> None:
        err = m.error()
        if err is None:
            out[m.partition()].append((m.key() or b"", m.value()))
        elif err.code() == KafkaError._PARTITION_EOF:
            todo.discard(m.partition())
        elif err.fatal() or not err.retriable():
            raise DeliveryError(f"restoring {topic}: {err.str()}", kafka_error=err)


class AggregateState:
    """One pipeline's aggregates: the engine, its per-partition states and their changelog topic."""

    def __init__(self, engine: Engine, reader: ChangelogReader, *, topic: str, pipeline: str,
                 metrics: StateMetrics) -> None:
        self.engine = engine
        self.reader = reader
        self.topic = topic
        self.pipeline = pipeline
        self.metrics = metrics
        self._states: dict[int, Any] = {}
        self._lock = threading.Lock()           # the source thread assigns, revokes and applies; metrics read

    def assign(self, partitions: Sequence[int]) -> None:
        t0 = time.monotonic()
        logs = self.reader.read(self.topic, partitions)
        restored = {p: self.engine.restore(logs[p]) for p in partitions}
        with self._lock:
            self._states.update(restored)
        n = sum(len(v) for v in logs.values())
        took = time.monotonic() - t0
        self.metrics.aggregate_restore(self.pipeline, n, took)
        log.info("pipeline %s: aggregate state of partitions %s restored from %s (%d records, %.2fs)",
                 self.pipeline, sorted(partitions), self.topic, n, took)
        self._report()

    def revoke(self, partitions: Sequence[int]) -> None:
        with self._lock:
            for p in partitions:
                self._states.pop(p, None)
        self._report()

    def view(self) -> dict[int, Any]:
        with self._lock:
            return dict(self._states)

    def apply(self, view: Mapping[int, Any], work: Any) -> None:
        """Add the aggregate columns to ``work.decoded`` and set ``work.changelog``."""
        batch = work.decoded
        ok = np.asarray(batch.ok_index, np.int64)
        parts = np.asarray(work.in_parts, np.int32)
        offsets = message_offsets(work.msgs, ok)
        times = message_times_ms(work.msgs, ok)
        states = dict(view)
        for p in np.unique(parts).tolist():
            if p not in states:        # not restored here (cannot happen for consumed records): start empty
                log.warning("pipeline %s: partition %d has no restored aggregate state", self.pipeline, p)
                states[p] = self.engine.new_state()
        applied = self.engine.apply(states, batch.columns, batch.nulls, batch.symbols, parts, offsets, times)
        batch.columns.update(applied.columns)
        work.changelog = Changelog.of(self.topic, applied)
        self._report()

    def _report(self) -> None:
        with self._lock:
            states = list(self._states.values())
        self.metrics.aggregate_state(self.pipeline, sum(s.keys() for s in states), sum(s.nbytes() for s in states))
