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

from schemas.errors import DeliveryError

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
    def __init__(self, producer: Producer) -> None:
        self.producer = producer
        self.fatal: KafkaError | None = None
        self._lock = threading.Lock()

    def produce_batch(
        self,
        topic: str,
        values: Sequence[bytes],
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
        _, rev_idx = np.unique(partitions[::-1], return_index=True)
        markers = set((n - 1 - rev_idx).tolist())
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
            raise DeliveryError(f"producing to {topic} failed: {exc}") from exc

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
                raise DeliveryError(f"producing to {topic} failed: {exc}") from exc

    def poll(self, timeout: float = 0.0) -> int:
        return self.producer.poll(timeout)

    def flush(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        remaining = self.producer.flush(timeout)
        while remaining and time.monotonic() < deadline:
            remaining = self.producer.flush(max(0.0, deadline - time.monotonic()))
        return remaining


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
