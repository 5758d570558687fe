"""The native drain (consumers/native_consume.py) against Consumer.consume on a real broker topic:
the same records byte for byte, the same error events, the rebalance callbacks served inside it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from confluent_kafka import Consumer, KafkaError, Producer

from consumers.native_consume import NativeDrain
from consumers.raw_batch import RawBatch
from models.demo_data import generate
from streamscore.produce import encode_transactions
from tests.integration.helpers import ScorerProcess, decode_prediction, read_all, write_config

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
    while (len(rows) < n or errors.count(KafkaError._PARTITION_EOF) < 6) and time.monotonic() < end:
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
    while (len(rows) < n or errors.count(KafkaError._PARTITION_EOF) < 6) and time.monotonic() < end:
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
    topic, other, n = names("native"), names("native-b"), 20_000
    topics({topic: 3, other: 3})
    _fill(bootstrap, topic, n - 2_000)
    _fill(bootstrap, other, 2_000)          # two topics: names come from librdkafka's topic handles

    plain = Consumer(_conf(bootstrap, names("plain"), **{"enable.partition.eof": True}))
    plain.subscribe([topic, other])
    want, want_err = _read_plain(plain, n, 180)
    plain.close()

    assigned: list[list[tuple[str, int]]] = []
    native = Consumer(_conf(bootstrap, names("native"), **{"enable.partition.eof": True}))
    native.subscribe([topic, other], on_assign=lambda c, ps: assigned.append([(p.topic, p.partition) for p in ps]))
    drain = NativeDrain.attach(native)
    assert drain is not None, "the native route was refused on this platform"
    try:
        got, got_err = _read_native(drain, n, 180)
    finally:
        drain.close()
        native.close()

    assert len(want) == n and len(got) == n
    # the same records with the same bytes, and within each partition the same order
    assert sorted(got, key=lambda r: r[:3]) == sorted(want, key=lambda r: r[:3])
    for t in (topic, other):
        for p in range(3):
            assert [r for r in got if r[:2] == (t, p)] == [r for r in want if r[:2] == (t, p)]
    assert any(r[4] is None for r in got) and any(r[3] is None for r in got) and any(r[3] == b"" for r in got)
    # the rebalance callback ran inside the drain's librdkafka call (CallState set up as Consumer.consume does)
    assert sorted(tp for a in assigned for tp in a) == sorted((t, p) for t in (topic, other) for p in range(3))
    # partition EOF events arrive as error rows, as Message.error() gives them on the plain path
    assert set(want_err) == set(got_err) == {KafkaError._PARTITION_EOF}


def test_a_raising_rebalance_callback_raises_out_of_the_drain(bootstrap: str, names: Callable[[str], str],
                                                               topics: Callable[..., None],
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """As from Consumer.consume: an exception in on_assign comes out of the call that served it."""
    topic = names("native-raise")
    topics({topic: 1})
    _fill(bootstrap, topic, 10)

    def boom(consumer: Any, parts: Any) -> None:
        raise ValueError("from on_assign")

    c = Consumer(_conf(bootstrap, names("native-raise")))
    c.subscribe([topic], on_assign=boom)
    drain = NativeDrain.attach(c)
    assert drain is not None, caplog.text
    raised: BaseException | None = None
    try:
        end = time.monotonic() + 60
        while raised is None and time.monotonic() < end:
            try:
                drain.consume(10, 0.5)
            except BaseException as exc:  # noqa: BLE001 - whatever comes out is the finding
                raised = exc
    finally:
        drain.close()
        c.close()
    assert isinstance(raised, ValueError) and "from on_assign" in str(raised), repr(raised)


def test_scorer_on_the_native_drain_scores_every_event_once(tmp_path: Path, bootstrap: str,
                                                            names: Callable[[str], str],
                                                            topics: Callable[..., None]) -> None:
    """``kafka.native_consume: true``: the scorer drains into arrays (its log says so), scores every good
    event once with its key and input partition, and dead-letters the bad ones with their original bytes."""
    n = 6_000
    t_in, t_out = names("tx"), names("pred")
    dlq = f"{t_in}.dlq"
    topics({t_in: 4, t_out: 4, dlq: 1})
    cols = generate(n, seed=9)
    good = encode_transactions(cols, n)
    bad = {17: b"\x00\x00\x00\x00\x01garbage", 2500: b"not avro at all", 4999: good[4999][:20]}
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i, v in enumerate(good):
        p.produce(t_in, bad.get(i, v), cols["account_id"][i].encode(), partition=i % 4)
    assert p.flush(30) == 0
    pipeline = {"name": "fraud", "input": {"topic": t_in}, "model": {"name": "fraud-mlp"}, "output": {"topic": t_out}}
    cfg = write_config(tmp_path / "p.yaml", bootstrap, names("g"), [pipeline],
                       kafka={"bootstrap_servers": bootstrap, "native_consume": True})
    scorer = ScorerProcess(cfg, tmp_path / "scorer.log", env={"STREAMSCORE_NATIVE_CONSUME": ""})
    try:
        preds = read_all(bootstrap, t_out, expect=n - len(bad), timeout=180, idle=2.0, alive=scorer)
        dead = read_all(bootstrap, dlq, expect=len(bad), timeout=60)
        assert scorer.terminate() == 0, scorer.output()
    finally:
        scorer.close()
    assert "native consume: draining" in scorer.output()
    ids = [decode_prediction(m.value())["event_id"] for m in preds]
    assert len(ids) == len(set(ids)), "an event scored twice"
    assert set(ids) == {e for i, e in enumerate(cols["event_id"].tolist()) if i not in bad}
    index = {e: i for i, e in enumerate(cols["event_id"].tolist())}
    for m, e in zip(preds, ids):
        i = index[e]
        assert m.key() == cols["account_id"][i].encode() and m.partition() == i % 4
    by_source = {(int(dict(m.headers())["source.partition"]), int(dict(m.headers())["source.offset"])): m.value()
                 for m in dead}
    assert sorted(by_source.values()) == sorted(bad.values()), "dead letters carry the original bytes"
    assert {k[0] for k in by_source} == {i % 4 for i in bad}
