"""Kafka output and dead-letter sink.

``produce_batch`` sends one batch of outputs without a Python callback per message. When
the caller fixes each message's partition, only the last message of the batch in each
partition carries the batch's acknowledgement: the producer is idempotent with no
message timeout, so within a partition messages are delivered in order or the producer
fails fatally — an ack for the last one proves the ones before it. When the partitioner
picks partitions, every message carries the ack (correct, slower).

Backpressure is a value, not a sleep: a full local queue makes ``produce`` serve delivery
reports (``poll``) until there is room.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Sequence

import numpy as np
from confluent_kafka import KafkaError, KafkaException, Producer

from schemas.columns import StrColumn
from schemas.errors import DeliveryError
from sinks.batch_produce import BatchProducer

Headers = list[tuple[str, bytes]]


class BatchAck:
    """Counts the acknowledgements one batch is waiting for; calls ``on_done`` once."""

    __slots__ = ("batch_id", "remaining", "error", "_on_done", "_sealed", "_fired")

    def __init__(self, batch_id: int, on_done: Callable[["BatchAck"], None]) -> None:
        self.batch_id = batch_id
        self.remaining = 0
        self.error: KafkaError | None = None
        self._on_done = on_done
        self._sealed = False
        self._fired = False

    def expect(self, n: int) -> None:
        self.remaining += n

    def seal(self) -> None:
        """No more outputs will be added; fire now if everything is already acked."""
        self._sealed = True
        self._maybe_fire()

    def __call__(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None and self.error is None:
            self.error = err
        self.remaining -= 1
        self._maybe_fire()

    def _maybe_fire(self) -> None:
        if self._sealed and self.remaining <= 0 and not self._fired:
            self._fired = True
            self._on_done(self)


class KafkaSink:
    """The one producer of a scoring process and every output that goes through it.

    Owns the producer (replaceable: a re-created transactional producer is set in place) and
    the batch-produce path on its handle. It attaches each batch's ``BatchAck`` to the
    messages that prove the batch delivered; it never commits offsets, begins or ends
    transactions (``consumers.commit`` does), or retries a failed delivery.
    """

    def __init__(self, producer: Producer, *, batch_produce: bool = True) -> None:
        self._batch_enabled = batch_produce
        self._batch: BatchProducer | None = None
        self.producer = producer
        self._lock = threading.Lock()

    @property
    def producer(self) -> Producer:
        return self._producer

    @producer.setter
    def producer(self, producer: Producer) -> None:
        """Set (or replace, e.g. a re-created transactional producer) the client; re-attaches batch produce."""
        self._producer = producer
        self._batch = BatchProducer.attach(producer) if self._batch_enabled else None

    @property
    def batched(self) -> bool:
        """Whether whole batches are enqueued with one librdkafka call (see sinks.batch_produce)."""
        return self._batch is not None

    def produce_encoded(
        self,
        topic: str,
        encoded: tuple[np.ndarray, np.ndarray, np.ndarray],
        keys: StrColumn | None,
        ack: BatchAck,
        *,
        partitions: np.ndarray | None = None,
        headers: Headers | None = None,
    ) -> None:
        """Produce values laid end to end in one buffer (``(buf, starts, lengths)``, as
        ``BatchEncoder.encode_buffer`` returns them); ``keys`` rows with length -1 are null.

        With fixed partitions and no headers, everything but the ack-carrying last message of
        each partition is enqueued by one librdkafka call; otherwise message by message.
        """
        buf, starts, lengths = encoded
        n = len(starts)
        if n == 0:
            return
        if self._batch is None or partitions is None or headers:
            data = buf.tobytes()
            values = [data[a:a + k] for a, k in zip(starts.tolist(), lengths.tolist())]
            self.produce_batch(topic, values, _key_list(keys, n), ack, partitions=partitions, headers=headers)
            return
        parts = np.asarray(partitions, dtype=np.int32)
        markers = _last_in_each_partition(parts)
        rest = np.ones(n, bool)
        rest[markers] = False
        idx = np.flatnonzero(rest)
        try:
            self._batch.produce(topic, buf, starts[idx], lengths[idx], parts[idx],
                                keys=None if keys is None else keys.buf,
                                key_starts=None if keys is None else keys.start[idx],
                                key_lengths=None if keys is None else keys.length[idx], poll=self.producer.poll)
        except RuntimeError as exc:
            raise DeliveryError(f"producing to {topic} failed: {exc}") from exc
        ack.expect(len(markers))
        produce = self.producer.produce
        for i in markers.tolist():
            value = buf[starts[i]:starts[i] + lengths[i]].tobytes()
            key = None
            if keys is not None and keys.length[i] >= 0:
                key = keys.buf[keys.start[i]:keys.start[i] + keys.length[i]].tobytes()
            self._produce(produce, topic, value, key, int(parts[i]), None, ack)

    def produce_batch(
        self,
        topic: str,
        values: Sequence[bytes | None],
        keys: Sequence[bytes | None],
        ack: BatchAck,
        *,
        partitions: np.ndarray | None = None,
        headers: Headers | None = None,
    ) -> None:
        n = len(values)
        if n == 0:
            return
        produce = self.producer.produce
        if partitions is None:
            ack.expect(n)
            for i in range(n):
                self._produce(produce, topic, values[i], keys[i], -1, headers, ack)
            return
        parts = partitions.tolist()
        # index of the last message of this batch in each partition
        markers = set(_last_in_each_partition(partitions).tolist())
        ack.expect(len(markers))
        i = 0
        try:
            for i, (value, key, part) in enumerate(zip(values, keys, parts)):   # the hot loop: keep it bare
                if i in markers:
                    produce(topic, value, key, part, on_delivery=ack, headers=headers)
                else:
                    produce(topic, value, key, part, headers=headers)
        except BufferError:
            # local queue full: finish this message and the rest on the slow path, serving acks
            for j in range(i, n):
                self._produce(produce, topic, values[j], keys[j], parts[j], headers, ack if j in markers else None)
        except KafkaException as exc:
            raise DeliveryError(f"producing to {topic} failed: {exc}", kafka_error=exc.args[0]) from exc

    def produce_one(self, topic: str, value: bytes | None, key: bytes | None, ack: BatchAck,
                    *, headers: Headers | None = None, partition: int = -1) -> None:
        ack.expect(1)
        self._produce(self.producer.produce, topic, value, key, partition, headers, ack)

    def _produce(self, produce: Any, topic: str, value: Any, key: Any, partition: int,
                 headers: Headers | None, cb: Any) -> None:
        while True:
            try:
                if cb is None:
                    produce(topic, value, key, partition, headers=headers)
                else:
                    produce(topic, value, key, partition, on_delivery=cb, headers=headers)
                return
            except BufferError:
                self.producer.poll(0.005)   # local queue full: serve acks until there is room
            except KafkaException as exc:
                raise DeliveryError(f"producing to {topic} failed: {exc}", kafka_error=exc.args[0]) from exc

    def poll(self, timeout: float = 0.0) -> int:
        return int(self.producer.poll(timeout))

    def flush(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        remaining = int(self.producer.flush(timeout))
        while remaining and time.monotonic() < deadline:
            remaining = int(self.producer.flush(max(0.0, deadline - time.monotonic())))
        return remaining


def _last_in_each_partition(partitions: np.ndarray) -> np.ndarray:
    """Indices (ascending) of each partition's last message: the ones that carry the batch's ack."""
    _, rev_idx = np.unique(partitions[::-1], return_index=True)
    return np.sort(len(partitions) - 1 - rev_idx)


def _key_list(keys: StrColumn | None, n: int) -> list[bytes | None]:
    if keys is None:
        return [None] * n
    data = keys.buf.tobytes()
    return [None if k < 0 else data[a:a + k] for a, k in zip(keys.start.tolist(), keys.length.tolist())]


DLQ_PREFIX_BYTES = 65536     # what a dead letter keeps of a value too large to forward whole
RECORD_OVERHEAD = 512        # record framing beyond key, value and headers (generous)


def bounded_dead_letter(value: bytes | None, key: bytes | None, headers: Headers,
                        limit: int) -> tuple[bytes | None, bytes | None, Headers]:
    """The dead letter to produce for ``value``: itself when it fits in ``limit`` bytes (the
    smaller of the producer's ``message.max.bytes`` and the topic's ``max.message.bytes``),
    else a prefix of at most DLQ_PREFIX_BYTES, with headers saying so and giving the size.
    A dead letter is therefore always deliverable: one record can never stop the pipeline.
    """
    fixed = RECORD_OVERHEAD + sum(len(k) + len(v) for k, v in headers)
    if key is not None and len(key) > DLQ_PREFIX_BYTES and fixed + len(key) + len(value or b"") > limit:
        key = key[:1024]
    room = limit - fixed - len(key or b"")
    if value is None or len(value) <= room:
        return value, key, headers
    keep = max(0, min(DLQ_PREFIX_BYTES, room - 128))
    return value[:keep], key, headers + [
        ("dlq.truncated", b"true"),
        ("dlq.original.bytes", str(len(value)).encode()),
        ("dlq.prefix.bytes", str(keep).encode()),
    ]


def error_headers(*, error: str, message: str, topic: str, partition: int, offset: int,
                  pipeline: str, when_ms: int) -> Headers:
    return [
        ("error.class", error.encode()),
        ("error.message", message[:1000].encode("utf-8", "replace")),
        ("source.topic", topic.encode()),
        ("source.partition", str(partition).encode()),
        ("source.offset", str(offset).encode()),
        ("pipeline", pipeline.encode()),
        ("time", str(when_ms).encode()),
    ]
