"""rd_kafka_produce_batch through ctypes on a real (unconnected) librdkafka producer.

No broker is needed: messages are only enqueued, and ``len(producer)`` counts them. The
producer points at a socket that accepts connections and never answers, so no error
events join the count while a test runs.
"""

import socket
from typing import Any, Iterator

import numpy as np
import pytest
from confluent_kafka import Producer

from schemas.columns import StrColumn
from sinks.batch_produce import MESSAGE_DTYPE, BatchProducer
from sinks.kafka_sink import BatchAck, KafkaSink


@pytest.fixture(scope="module", autouse=True)
def silent_broker() -> Iterator[None]:
    global _ADDR
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    _ADDR = f"127.0.0.1:{s.getsockname()[1]}"
    yield
    s.close()


_ADDR = ""


def _producer(**conf: Any) -> Producer:
    return Producer({"bootstrap.servers": _ADDR, "log_level": 0, **conf})


def _payload(values: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lengths = np.array([len(v) for v in values], np.int64)
    return np.frombuffer(b"".join(values), np.uint8), np.cumsum(lengths) - lengths, lengths


def test_struct_layout_matches_librdkafka() -> None:
    assert MESSAGE_DTYPE.itemsize == 72
    assert MESSAGE_DTYPE.fields["payload"][1] == 24 and MESSAGE_DTYPE.fields["private"][1] == 64


def test_attach_refuses_anything_but_a_real_producer() -> None:
    class NotAProducer:
        pass

    assert BatchProducer.attach(NotAProducer()) is None
    p = _producer()
    assert BatchProducer.attach(p) is not None
    assert KafkaSink(p).batched and not KafkaSink(p, batch_produce=False).batched


def test_whole_batch_is_enqueued_with_keys_and_partitions() -> None:
    p = _producer()
    bp = BatchProducer.attach(p)
    assert bp is not None
    buf, starts, lengths = _payload([f"v{i}".encode() for i in range(500)])
    keys = StrColumn.from_bytes([None if i % 7 == 0 else f"k{i}".encode() for i in range(500)])
    bp.produce("t", buf, starts, lengths, np.arange(500, dtype=np.int32) % 3,
               keys=keys.buf, key_starts=keys.start, key_lengths=keys.length)
    assert len(p) == 500
    p.purge()


def test_full_queue_is_waited_out_by_polling_and_the_tail_retried() -> None:
    p = _producer(**{"queue.buffering.max.messages": 10})
    bp = BatchProducer.attach(p)
    assert bp is not None
    buf, starts, lengths = _payload([b"x"] * 25)
    polls = []

    class Stop(Exception):
        pass

    def poll(timeout: float) -> None:
        polls.append(timeout)
        if len(polls) == 3:
            raise Stop

    with pytest.raises(Stop):
        bp.produce("t", buf, starts, lengths, np.zeros(25, np.int32), poll=poll)
    assert len(p) == 10, "exactly the queue's capacity went in; the tail waits, it is not dropped"
    p.purge()
    polls.clear()
    p.poll(0)
    bp.produce("t", buf[:5], starts[:5], lengths[:5], np.zeros(5, np.int32), poll=poll)
    assert len(p) == 5 and not polls


def test_other_errors_name_the_cause() -> None:
    p = _producer(**{"message.max.bytes": 1000})
    bp = BatchProducer.attach(p)
    assert bp is not None
    buf, starts, lengths = _payload([b"a" * 10, b"b" * 5000])
    with pytest.raises(RuntimeError, match="(?i)too large"):
        bp.produce("t", buf, starts, lengths, np.zeros(2, np.int32))
    p.purge()


def test_sink_acks_only_the_last_message_per_partition_and_enqueues_the_rest_in_one_call() -> None:
    p = _producer()
    sink = KafkaSink(p)
    assert sink.batched
    done: list[BatchAck] = []
    ack = BatchAck(1, done.append)
    parts = np.array([0, 1, 0, 2, 1, 0], np.int32)
    encoded = _payload([bytes([65 + i]) for i in range(6)])
    sink.produce_encoded("out", encoded, StrColumn.from_bytes([b"k"] * 6), ack, partitions=parts)
    assert len(p) == 6
    assert ack.remaining == 3, "one ack per output partition"
    p.purge()


def test_sink_without_batch_produce_slices_values_and_keeps_null_keys() -> None:
    calls: list[tuple[Any, ...]] = []

    class Recorder:
        def produce(self, topic: str, value: bytes, key: bytes | None, partition: int = -1, *,
                    on_delivery: Any = None, headers: Any = None) -> None:
            calls.append((value, key, partition, on_delivery is not None, headers))

        def poll(self, timeout: float = 0) -> int:
            return 0

    sink = KafkaSink(Recorder())  # type: ignore[arg-type]
    assert not sink.batched
    ack = BatchAck(1, lambda a: None)
    encoded = _payload([b"aa", b"b", b"ccc"])
    sink.produce_encoded("out", encoded, StrColumn.from_bytes([b"k0", None, b"k2"]), ack,
                         partitions=np.array([1, 1, 0], np.int32), headers=[("model", b"m")])
    assert [c[:3] for c in calls] == [(b"aa", b"k0", 1), (b"b", None, 1), (b"ccc", b"k2", 0)]
    assert [c[3] for c in calls] == [False, True, True] and calls[0][4] == [("model", b"m")]


def test_transactional_producers_are_recognised() -> None:
    # their first batch per topic fetches metadata first (see BatchProducer._ensure_metadata)
    plain = BatchProducer.attach(_producer())
    txn = BatchProducer.attach(_producer(**{"transactional.id": "t-1"}))
    assert plain is not None and not plain.transactional
    assert txn is not None and txn.transactional
