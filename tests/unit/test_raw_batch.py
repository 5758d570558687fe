"""RawBatch (records drained into arrays) and its decode: the same Work as from Message objects."""

from __future__ import annotations

from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from consumers.decode_stage import decode_work
from consumers.raw_batch import RawBatch
from monitoring.metrics import ScorerMetrics
from schemas.columns import StrColumn
from streamscore.app import build_runtime, registry_for
from streamscore.config import PipelineFile, parse_config


class _Msg:
    def __init__(self, topic: str, partition: int, offset: int, value: bytes | None, key: bytes | None,
                 ts: int) -> None:
        self.t, self.p, self.o, self.v, self.k, self.ts = topic, partition, offset, value, key, ts

    def topic(self) -> str:
        return self.t

    def partition(self) -> int:
        return self.p

    def offset(self) -> int:
        return self.o

    def value(self) -> bytes | None:
        return self.v

    def key(self) -> bytes | None:
        return self.k

    def timestamp(self) -> tuple[int, int]:
        return (1, self.ts)

    def error(self) -> None:
        return None


def _raw(msgs: list[_Msg]) -> RawBatch:
    """What the native drain returns for ``msgs``: values and keys end to end, metadata as arrays."""
    topics = tuple(dict.fromkeys(m.t for m in msgs))
    vlen = np.array([-1 if m.v is None else len(m.v) for m in msgs], np.int64)
    klen = np.array([-1 if m.k is None else len(m.k) for m in msgs], np.int64)
    vs, ks = np.maximum(vlen, 0), np.maximum(klen, 0)
    return RawBatch(topics, np.array([topics.index(m.t) for m in msgs], np.int32),
                    np.array([m.p for m in msgs], np.int32), np.array([m.o for m in msgs], np.int64),
                    np.array([m.ts for m in msgs], np.int64), np.ones(len(msgs), np.int32),
                    np.zeros(len(msgs), np.int32), b"".join(m.v or b"" for m in msgs), np.cumsum(vs) - vs, vlen,
                    b"".join(m.k or b"" for m in msgs), np.cumsum(ks) - ks, klen)


def _rows(b: Any) -> list[tuple[Any, ...]]:
    return [(m.topic(), m.partition(), m.offset(), m.value(), m.key(), m.timestamp()) for m in b]


def _msgs(n: int, values: list[bytes | None] | None = None) -> list[_Msg]:
    out = []
    for i in range(n):
        v = values[i] if values is not None else (None if i % 7 == 0 else bytes([i % 256]) * (i % 5))
        out.append(_Msg("a" if i % 3 else "b", i % 4, 100 + i, v, None if i % 5 == 0 else f"k{i}".encode(), 1000 + i))
    return out


def test_take_without_by_topic_and_concat_keep_every_byte() -> None:
    msgs = _msgs(40)
    raw = _raw(msgs)
    assert _rows(raw) == _rows(msgs)
    gone = {("a", 1), ("b", 2), ("zz", 0)}
    assert _rows(raw.without(gone)) == _rows([m for m in msgs if (m.t, m.p) not in gone])
    groups = raw.by_topic()
    assert _rows(groups["a"]) == _rows([m for m in msgs if m.t == "a"])
    assert _rows(groups["b"]) == _rows([m for m in msgs if m.t == "b"])
    joined = RawBatch.concat([raw.take(np.arange(0, 10)), raw.without(gone), raw.take(raw.partition == 3)])
    want = msgs[:10] + [m for m in msgs if (m.t, m.p) not in gone] + [m for m in msgs if m.p == 3]
    assert _rows(joined) == _rows(want)
    assert joined.values == b"".join(m.v or b"" for m in want), "compacted: values end to end"
    assert joined.key_column()._items() == [m.k for m in want]


def _runtime() -> Any:
    cfg = PipelineFile.model_validate({
        "kafka": {"bootstrap_servers": "127.0.0.1:1"}, "group_id": "g",
        "pipelines": [{"name": "fraud", "input": {"topic": "a", "max_message_bytes": 200},
                       "model": {"name": "fraud-mlp"}, "output": {"topic": "out"}}]})
    return build_runtime(cfg, cfg.pipelines[0], registry_for(cfg), None, [],  # type: ignore[arg-type]
                         ScorerMetrics(registry=CollectorRegistry()))


def _same_work(rt: Any, msgs: list[_Msg]) -> None:
    a = decode_work(rt, msgs, batch_id=1)  # type: ignore[arg-type]
    b = decode_work(rt, _raw(msgs), batch_id=1)
    assert a.ranges == b.ranges and a.dead == b.dead and a.keys._items() == b.keys._items()
    assert np.array_equal(a.in_parts, b.in_parts)
    assert np.array_equal(a.decoded.ok_index, b.decoded.ok_index)
    assert a.decoded.columns.keys() == b.decoded.columns.keys()
    for name, col in a.decoded.columns.items():
        other = b.decoded.columns[name]
        if isinstance(col, StrColumn):
            assert col.to_list() == other.to_list(), name
        else:
            assert np.array_equal(np.asarray(col), np.asarray(other)), name
    assert [(i, str(e)) for i, e in a.decoded.errors] == [(i, str(e)) for i, e in b.decoded.errors]


def test_decode_of_drained_records_equals_decode_of_messages() -> None:
    rt = _runtime()
    good = rt.decoder.samples(1)[0]
    values: list[bytes | None] = [good] * 30
    _same_work(rt, _msgs(30, values))
    values[3], values[8], values[11] = None, b"not avro", good[:-3]   # tombstone, unframed, truncated
    _same_work(rt, _msgs(30, values))
    values[20] = good + bytes(300)                                    # oversized (max_message_bytes 200)
    _same_work(rt, _msgs(30, values))


def test_native_consume_is_on_by_default_and_switched_by_file_or_env() -> None:
    minimal = {"pipelines": [{"name": "f", "input": {"topic": "tx"}, "model": {"name": "fraud-mlp"},
                              "output": {"topic": "pred"}}]}
    assert parse_config(minimal, env={}).kafka.native_consume is True
    assert parse_config({**minimal, "kafka": {"native_consume": False}}, env={}).kafka.native_consume is False
    assert parse_config(minimal, env={"STREAMSCORE_NATIVE_CONSUME": "0"}).kafka.native_consume is False
    assert parse_config({**minimal, "kafka": {"native_consume": False}},
                        env={"STREAMSCORE_NATIVE_CONSUME": "1"}).kafka.native_consume is True
    assert parse_config({**minimal, "kafka": {"native_consume": True}},
                        env={"STREAMSCORE_NATIVE_CONSUME": "0"}).kafka.native_consume is False
