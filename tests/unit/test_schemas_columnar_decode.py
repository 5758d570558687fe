from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.columnar import BatchDecoder, RaggedColumn, StrColumn
from schemas.errors import DecodeError, UnknownSchemaError, WireFormatError
from schemas.registry import SchemaRegistry
from tests.unit._schemas_helpers import (
    DOUBLE,
    LONG,
    TEXT,
    encode,
    fastavro_read,
    norm,
    parsed,
    record_schemas,
    records_for,
)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
REG = SchemaRegistry.default()
TX = REG.schema("transaction")
PTX = parsed(TX)


def tx_records() -> st.SearchStrategy[list[dict[str, Any]]]:
    fields: dict[str, Any] = {
        "event_id": TEXT,
        "event_time": LONG,
        "account_id": TEXT,
        "amount": DOUBLE,
        "currency": TEXT,
        "merchant_category": TEXT,
        "country": TEXT,
        "channel": st.sampled_from(["POS", "ECOM", "ATM", "MOTO"]),
    }
    fields.update({f"f{i:02d}": DOUBLE for i in range(1, 16)})
    return st.lists(st.fixed_dictionaries(fields), min_size=0, max_size=30)


def simple_tx(i: int) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "event_id": f"e{i}", "event_time": 1_700_000_000_000 + i, "account_id": f"a{i % 7}", "amount": 10.5 * i,
        "currency": "EUR", "merchant_category": "5411", "country": "DE", "channel": ["POS", "ECOM", "ATM", "MOTO"][i % 4],
    }
    rec.update({f"f{k:02d}": float(i * k) for k in range(1, 16)})
    return rec


@SETTINGS
@given(tx_records())
def test_transaction_matches_fastavro(records: list[dict[str, Any]]) -> None:
    values = [encode(PTX, r, 1) for r in records]
    batch = BatchDecoder(TX, REG).decode(values)
    assert batch.errors == []
    assert batch.ok_index.tolist() == list(range(len(records)))
    assert norm(batch.to_records()) == norm([fastavro_read(PTX, v) for v in values])
    assert batch.columns["f03"].dtype == np.float64 and batch.columns["event_time"].dtype == np.int64
    assert batch.columns["channel"].dtype == np.int32
    assert isinstance(batch.columns["event_id"], StrColumn)
    assert (batch.schema_ids == 1).all()


@SETTINGS
@given(st.data())
def test_random_schemas_match_fastavro_and_fallback(data: st.DataObject) -> None:
    schema = data.draw(record_schemas())
    records = data.draw(records_for(schema))
    reg = SchemaRegistry()
    sid = reg.register(schema)
    p = parsed(reg.by_id(sid))
    values = [encode(p, r, sid) for r in records]
    fast = BatchDecoder(schema, reg, engine="numpy").decode(values)
    slow = BatchDecoder(schema, reg, engine="fastavro").decode(values)
    expected = norm([fastavro_read(p, v) for v in values])
    assert fast.errors == [] and slow.errors == []
    assert norm(fast.to_records()) == expected
    assert norm(slow.to_records()) == expected
    assert_same_columns(fast.columns, slow.columns)
    assert {k: m.tolist() for k, m in fast.nulls.items()} == {k: m.tolist() for k, m in slow.nulls.items()}


def assert_same_columns(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert list(a) == list(b)
    for name in a:
        x, y = a[name], b[name]
        assert type(x) is type(y), name
        if isinstance(x, StrColumn):
            assert x.to_list() == y.to_list() and x.length.tolist() == y.length.tolist()
        elif isinstance(x, RaggedColumn):
            assert x.offsets.tolist() == y.offsets.tolist()
            assert x.values.dtype == y.values.dtype
            np.testing.assert_array_equal(x.values, y.values)
        else:
            assert x.dtype == y.dtype, name
            np.testing.assert_array_equal(x, y)


def test_fallback_for_uncompilable_schema() -> None:
    schema = {
        "type": "record", "name": "N", "fields": [
            {"name": "id", "type": "long"},
            {"name": "inner", "type": {"type": "record", "name": "In", "fields": [{"name": "x", "type": "int"}]}},
            {"name": "tags", "type": {"type": "map", "values": "string"}},
            {"name": "u", "type": ["null", "int", "string"]},
        ],
    }
    reg = SchemaRegistry()
    sid = reg.register(schema)
    p = parsed(schema)
    recs = [{"id": i, "inner": {"x": i}, "tags": {"a": str(i)}, "u": [None, 3, "s"][i % 3]} for i in range(5)]
    values = [encode(p, r, sid) for r in recs] + [b"\x00\x00\x00\x00\x01\x02"]
    batch = BatchDecoder(schema, reg).decode(values)
    # a nested record's fields are columns by dotted path
    assert batch.to_records() == [{"id": r["id"], "inner.x": r["inner"]["x"], "tags": r["tags"], "u": r["u"]} for r in recs]
    assert batch.columns["id"].dtype == np.int64
    assert [i for i, _ in batch.errors] == [5]
    with pytest.raises(Exception):
        BatchDecoder(schema, reg, engine="numpy")


def corrupt_variants() -> dict[str, bytes]:
    good = encode(PTX, simple_tx(3), 1)
    bad_enum = bytearray(good)
    # channel is the byte after the "DE" country string
    idx = bytes(good).index(b"\x04DE") + 3
    bad_enum[idx] = 0x08  # zig-zag 4: no fifth symbol
    neg_len = bytearray(good)
    neg_len[5] = 0x03  # event_id length -2
    return {
        "truncated": good[:-3],
        "trailing": good + b"\x00",
        "bad_enum": bytes(bad_enum),
        "negative_length": bytes(neg_len),
        "huge_length": good[:5] + b"\xfe\xff\xff\xff\xff\xff\xff\xff\x7f" + good[7:],
        "random": b"\x00\x00\x00\x00\x01" + bytes(np.random.default_rng(7).integers(0, 256, 40, dtype=np.uint8)),
        "varint_too_long": good[:5] + b"\xff" * 12,
    }


@pytest.mark.parametrize("engine", ["numpy", "fastavro"])
@pytest.mark.parametrize("kind", list(corrupt_variants()))
def test_one_corrupt_record_does_not_spoil_the_batch(kind: str, engine: str) -> None:
    records = [simple_tx(i) for i in range(6)]
    values = [encode(PTX, r, 1) for r in records]
    bad = corrupt_variants()[kind]
    values.insert(2, bad)
    batch = BatchDecoder(TX, REG, engine=engine).decode(values)  # type: ignore[arg-type]
    assert [i for i, _ in batch.errors] == [2]
    err = batch.errors[0][1]
    assert isinstance(err, DecodeError) and err.raw == bad and err.reason == "decode"
    assert batch.ok_index.tolist() == [0, 1, 3, 4, 5, 6]
    assert batch.to_records() == records


def test_wire_and_unknown_id_errors_are_per_record() -> None:
    good = encode(PTX, simple_tx(1), 1)
    values = [good, None, b"", b"\x00\x01", b"\x05" + good[1:], good[:4] + b"\x63" + good[5:], good]
    batch = BatchDecoder(TX, REG).decode(values)
    kinds = {i: type(e) for i, e in batch.errors}
    assert kinds == {1: WireFormatError, 2: WireFormatError, 3: WireFormatError, 4: WireFormatError, 5: UnknownSchemaError}
    assert batch.errors[4][1].raw == values[5]
    assert batch.ok_index.tolist() == [0, 6]
    assert batch.to_records() == [simple_tx(1), simple_tx(1)]


def test_empty_batch_and_all_bad() -> None:
    dec = BatchDecoder(TX, REG)
    empty = dec.decode([])
    assert len(empty) == 0 and empty.errors == [] and set(empty.columns) == {f["name"] for f in TX["fields"]}
    allbad = dec.decode([b"\x00\x00\x00\x00\x01\x07"])
    assert len(allbad) == 0 and len(allbad.errors) == 1 and len(allbad.columns["f01"]) == 0


def test_nullable_and_arrays_and_2d_view() -> None:
    emb = REG.schema("embedding")
    p = parsed(emb)
    recs = [
        {"event_id": str(i), "key": "k", "model": "m", "version": "1", "variant": "shadow", "embedding": [float(i)] * 4,
         "label": None if i % 2 else "lbl", "event_time": i, "scored_at": -i}
        for i in range(5)
    ]
    batch = BatchDecoder(emb, REG).decode([encode(p, r, 5) for r in recs])
    assert batch.to_records() == recs
    assert batch.columns["embedding"].to_2d().shape == (5, 4)
    assert batch.columns["embedding"].values.dtype == np.float32
    assert batch.nulls["label"].tolist() == [False, True, False, True, False]
    assert batch.columns["label"].to_list() == ["lbl", None, "lbl", None, "lbl"]
    assert batch.symbols["variant"] == ("primary", "canary", "shadow")


def test_multi_block_and_negative_block_arrays() -> None:
    schema = {"type": "record", "name": "A", "fields": [{"name": "xs", "type": {"type": "array", "items": "long"}},
                                                        {"name": "ys", "type": {"type": "array", "items": "double"}}]}
    reg = SchemaRegistry()
    sid = reg.register(schema)
    # xs: block of 2 (count 2), block of -1 with byte size 1 -> 1 item, end; ys: block of -2 with size 16
    body = b"\x04\x02\x04" + b"\x01\x02\x06" + b"\x00" + b"\x03\x20" + np.array([1.5, -2.0]).tobytes() + b"\x00"
    batch = BatchDecoder(schema, reg).decode([b"\x00" + sid.to_bytes(4, "big") + body] * 3)
    assert batch.errors == []
    assert batch.to_records() == [{"xs": [1, 2, 3], "ys": [1.5, -2.0]}] * 3
