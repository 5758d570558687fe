"""KafkaSink's batching of acknowledgements, with a stand-in producer (no broker needed)."""

from typing import Any

import numpy as np

from sinks.kafka_sink import BatchAck, KafkaSink


class _Producer:
    """Records produce() calls; raises BufferError on chosen calls to exercise backpressure."""

    def __init__(self, full_on: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        self.calls: list[tuple[Any, ...]] = []
        self.callbacks: list[Any] = []
        self._n = 0
        self._full_on = set(full_on)
        self.polls = 0

    def produce(self, topic: str, value: bytes, key: bytes, partition: int = -1, *, on_delivery: Any = None,
                headers: Any = None) -> None:
        self._n += 1
        if self._n in self._full_on:
            raise BufferError("queue full")
        self.calls.append((topic, value, key, partition))
        if on_delivery is not None:
            self.callbacks.append(on_delivery)

    def poll(self, timeout: float = 0) -> int:
        self.polls += 1
        return 0


def test_one_ack_per_partition_on_the_last_message() -> None:
    prod = _Producer()
    sink = KafkaSink(prod)  # type: ignore[arg-type]
    done: list[BatchAck] = []
    ack = BatchAck(1, done.append)
    parts = np.array([0, 1, 0, 2, 1, 0])
    values = [bytes([i]) for i in range(6)]
    sink.produce_batch("out", values, [b"k"] * 6, ack, partitions=parts)
    assert [c[1] for c in prod.calls] == values, "order kept"
    assert ack.remaining == 3 and len(prod.callbacks) == 3
    ack.seal()
    assert not done, "nothing acknowledged yet"
    for cb in prod.callbacks:
        cb(None, None)
    assert done == [ack] and ack.error is None


def test_full_queue_is_backpressure_not_loss() -> None:
    prod = _Producer(full_on={3, 4, 9})
    sink = KafkaSink(prod)  # type: ignore[arg-type]
    ack = BatchAck(1, lambda a: None)
    parts = np.array([0, 1] * 5)
    values = [bytes([i]) for i in range(10)]
    sink.produce_batch("out", values, [None] * 10, ack, partitions=parts)
    assert [c[1] for c in prod.calls] == values, "every message produced once, in order"
    assert prod.polls >= 2, "a full queue is served by polling"
    assert ack.remaining == 2


def test_error_on_any_marker_fails_the_batch() -> None:
    prod = _Producer()
    sink = KafkaSink(prod)  # type: ignore[arg-type]
    done: list[BatchAck] = []
    ack = BatchAck(7, done.append)
    sink.produce_batch("out", [b"a", b"b"], [None, None], ack, partitions=np.array([0, 1]))
    sink.produce_one("dlq", b"x", None, ack)
    ack.seal()
    prod.callbacks[0](None, None)
    prod.callbacks[1]("broker down", None)
    assert not done
    prod.callbacks[2](None, None)
    assert done == [ack] and ack.error == "broker down"


def test_without_partitions_every_message_carries_the_ack() -> None:
    prod = _Producer()
    sink = KafkaSink(prod)  # type: ignore[arg-type]
    ack = BatchAck(1, lambda a: None)
    sink.produce_batch("out", [b"a", b"b", b"c"], [None] * 3, ack)
    assert ack.remaining == 3 and len(prod.callbacks) == 3
