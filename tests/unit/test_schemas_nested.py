"""Nested records, logical types and the output schema: the columnar path and the per-record
path give identical columns."""

from __future__ import annotations

import datetime
import decimal
import io
import json
import uuid
from typing import Any

import fastavro
import numpy as np
import pytest

from schemas.columnar import BatchDecoder, decimal_paths, leaf_types
from schemas.errors import ConfigError
from schemas.output import carried_fields, output_schema, output_subject, prediction_fields
from schemas.registry import SchemaRegistry
from schemas.wire import frame

ORDER: dict[str, Any] = {"type": "record", "name": "Order", "namespace": "shop", "fields": [
    {"name": "order_id", "type": {"type": "string", "logicalType": "uuid"}},
    {"name": "placed_at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    {"name": "payment", "type": {"type": "record", "name": "Payment", "fields": [
        {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 20, "scale": 2}},
        {"name": "method", "type": {"type": "enum", "name": "Method", "symbols": ["CARD", "CASH", "WIRE"]}},
        {"name": "geo", "type": {"type": "record", "name": "Geo", "fields": [
            {"name": "lat", "type": "double"}, {"name": "lon", "type": "double"}]}}]}},
    {"name": "coupon", "type": ["null", "string"], "default": None},
    {"name": "day", "type": {"type": "int", "logicalType": "date"}},
]}
ORDER_V2 = json.loads(json.dumps(ORDER))
ORDER_V2["fields"].append({"name": "tags", "type": {"type": "map", "values": "string"}, "default": {}})


def _encode(schema: dict[str, Any], recs: list[dict[str, Any]], sid: int) -> list[bytes]:
    p = fastavro.parse_schema(schema)
    out = []
    for r in recs:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, p, r)
        out.append(frame(sid, buf.getvalue()))
    return out


def _orders(n: int) -> list[dict[str, Any]]:
    amounts = ["12.34", "-0.05", "123456789012.34", "0.00", "-99999999999999999.99"]
    return [{"order_id": str(uuid.UUID(int=i)), "placed_at": datetime.datetime(2026, 1, 1, 0, 0, i, tzinfo=datetime.timezone.utc),
             "payment": {"amount": decimal.Decimal(amounts[i % 5]), "method": ["CARD", "CASH", "WIRE"][i % 3],
                         "geo": {"lat": i / 2, "lon": -i / 4}},
             "coupon": None if i % 2 else f"c{i}", "day": datetime.date(2026, 1, 1 + i % 28)} for i in range(n)]


def test_nested_columns_same_on_both_paths() -> None:
    reg = SchemaRegistry()
    v1, v2 = reg.register(ORDER), reg.register(ORDER_V2)
    recs = _orders(10)
    values = _encode(ORDER, recs, v1) + _encode(ORDER_V2, [dict(r, tags={"k": "v"}) for r in recs], v2)
    fallbacks: list[int] = []
    fast = BatchDecoder(ORDER, reg, on_fallback=fallbacks.append).decode(values)
    slow = BatchDecoder(ORDER, reg, engine="fastavro").decode(values)
    assert fallbacks == [v2]            # v2 has a map: per record, counted once
    assert not fast.errors and fast.to_records() == slow.to_records()
    rows = fast.to_records()
    assert sorted(rows[0]) == ["coupon", "day", "order_id", "payment.amount", "payment.geo.lat", "payment.geo.lon",
                               "payment.method", "placed_at"]
    assert rows[2]["payment.amount"] == pytest.approx(123456789012.34)
    assert rows[4]["payment.amount"] == pytest.approx(-99999999999999999.99)   # more than 8 bytes
    assert rows[1]["payment.amount"] == pytest.approx(-0.05) and rows[1]["coupon"] is None
    assert rows[3]["placed_at"] == 1767225603000000 and rows[0]["day"] == 20454
    assert fast.columns["payment.amount"].dtype == np.float64


def test_reader_default_for_a_missing_nested_record() -> None:
    old = {"type": "record", "name": "Order", "namespace": "shop", "fields": [{"name": "id", "type": "string"}]}
    reader = {"type": "record", "name": "Order", "namespace": "shop", "fields": [
        {"name": "id", "type": "string"},
        {"name": "geo", "type": {"type": "record", "name": "Geo", "fields": [{"name": "lat", "type": "double"}]},
         "default": {"lat": 1.5}}]}
    reg = SchemaRegistry()
    sid = reg.register(old)
    batch = BatchDecoder(reader, reg).decode(_encode(old, [{"id": "a"}], sid))
    assert batch.to_records() == [{"id": "a", "geo.lat": 1.5}]


def test_output_schema_carries_leaves() -> None:
    leaves = leaf_types(ORDER)
    carried = carried_fields(["payment.amount", "payment.method", "coupon", "placed_at"], leaves, decimal_paths(ORDER))
    schema = output_schema(prediction_fields(), carried)
    names = [f["name"] for f in schema["fields"]]
    assert names[-4:] == ["payment_amount", "payment_method", "coupon", "placed_at"]
    assert carried[0]["type"] == "double" and carried[2] == {"name": "coupon", "type": ["null", "string"], "default": None}
    fastavro.parse_schema(schema)
    assert output_subject("preds", "topic", schema) == "preds-value"
    assert output_subject("preds", "record", schema) == "streamscore.Prediction"
    with pytest.raises(ConfigError, match="not a field"):
        carried_fields(["payment.nope"], leaves)
    with pytest.raises(ConfigError, match="clash"):
        output_schema(prediction_fields(), [{"name": "score", "type": "double"}])
