"""The native drain (consumers/native_consume.py) against Consumer.consume on a real broker topic:
the same records byte for byte, the same error events, the rebalance callbacks served inside it."""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import pytest
from confluent_kafka import Consumer, KafkaError, Producer

from consumers.native_consume import NativeDrain
from consumers.raw_batch import RawBatch

pytestmark = pytest.mark.integration

Row = tuple[str, int, int, bytes | None, bytes | None, int, int]   # topic partition offset key value tstype ts


def _fill(bootstrap: str, topic: str, n: int) -> None:
    """``n`` records over 3 partitions: values of 0..300 bytes, some null; keys some null, some empty."""
    rng = np.random.default_rng(5)
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(n):
        size = int(rng.integers(0, 300))
        value = None if i % 97 == 0 else rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        key = None if i % 13 == 0 else (b"" if i % 31 == 0 else f"k{i % 50}".encode())
        p.produce(topic, value=value, key=key, partition=i % 3, timestamp=1_700_000_000_000 + i)
        if i % 5000 == 0:
            p.poll(0)
    assert p.flush(60) == 0


def _conf(bootstrap: str, group: str, **extra: Any) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
            "enable.auto.commit": False, **extra}


def _read_plain(consumer: Consumer, n: int, deadline_s: float) -> tuple[list[Row], list[int]]:
    rows: list[Row] = []
    errors: list[int] = []
    end = time.monotonic() + deadline_s
    while (len(rows) < n or errors.count(KafkaError._PARTITION_EOF) < 3) and time.monotonic() < end:
        for m in consumer.consume(500, 0.5):
            if m.error() is not None:
                errors.append(m.error().code())
                continue
            tstype, ts = m.timestamp()
            rows.append((m.topic(), m.partition(), m.offset(), m.key(), m.value(), tstype, ts))
    return rows, errors


def _read_native(drain: NativeDrain, n: int, deadline_s: float) -> tuple[list[Row], list[int]]:
    rows: list[Row] = []
    errors: list[int] = []
    end = time.monotonic() + deadline_s
    while (len(rows) < n or errors.count(KafkaError._PARTITION_EOF) < 3) and time.monotonic() < end:
        b: RawBatch = drain.consume(500, 0.5)
        for i in range(len(b)):
            if int(b.err[i]) != 0:
                errors.append(int(b.err[i]))
                continue
            m = b[i]
            tstype, ts = m.timestamp()
            rows.append((m.topic(), m.partition(), m.offset(), m.key(), m.value(), tstype, ts))
    return rows, errors


def test_native_drain_is_byte_identical_to_consume(bootstrap: str, names: Callable[[str], str],
                                                   topics: Callable[..., None]) -> None:
    topic, n = names("native"), 20_000
    topics({topic: 3})
    _fill(bootstrap, topic, n)

    plain = Consumer(_conf(bootstrap, names("plain"), **{"enable.partition.eof": True}))
    plain.subscribe([topic])
    want, want_err = _read_plain(plain, n, 180)
    plain.close()

    assigned: list[list[tuple[str, int]]] = []
    native = Consumer(_conf(bootstrap, names("native"), **{"enable.partition.eof": True}))
    native.subscribe([topic], on_assign=lambda c, ps: assigned.append([(p.topic, p.partition) for p in ps]))
    drain = NativeDrain.attach(native)
    assert drain is not None, "the native route was refused on this platform"
    try:
        got, got_err = _read_native(drain, n, 180)
    finally:
        drain.close()
        native.close()

    assert len(want) == n and len(got) == n
    # the same records with the same bytes, and within each partition the same order
    assert sorted(got, key=lambda r: (r[1], r[2])) == sorted(want, key=lambda r: (r[1], r[2]))
    for p in range(3):
        assert [r for r in got if r[1] == p] == [r for r in want if r[1] == p]
    assert any(r[4] is None for r in got) and any(r[3] is None for r in got) and any(r[3] == b"" for r in got)
    # the rebalance callback ran inside the drain's librdkafka call (CallState set up as Consumer.consume does)
    assert sorted(tp for a in assigned for tp in a) == [(topic, 0), (topic, 1), (topic, 2)]
    # partition EOF events arrive as error rows, as Message.error() gives them on the plain path
    assert set(want_err) == set(got_err) == {KafkaError._PARTITION_EOF}


def test_a_raising_rebalance_callback_raises_out_of_the_drain(bootstrap: str, names: Callable[[str], str],
                                                               topics: Callable[..., None]) -> None:
    """As from Consumer.consume: an exception in on_assign comes out of the call that served it."""
    topic = names("native-raise")
    topics({topic: 1})
    _fill(bootstrap, topic, 10)

    def boom(consumer: Any, parts: Any) -> None:
        raise ValueError("from on_assign")

    c = Consumer(_conf(bootstrap, names("native-raise")))
    c.subscribe([topic], on_assign=boom)
    drain = NativeDrain.attach(c)
    assert drain is not None
    try:
        with pytest.raises(ValueError, match="from on_assign"):
            end = time.monotonic() + 60
            while time.monotonic() < end:
                drain.consume(10, 0.5)
    finally:
        drain.close()
        c.close()
