"""Shared helpers for the schemas tests: random schemas/records and value comparison."""

from __future__ import annotations

import io
import math
from typing import Any

import fastavro
from hypothesis import strategies as st

from schemas.codec.types import strip_logical
from schemas.wire import frame

PRIMS = ["boolean", "int", "long", "float", "double", "string", "bytes"]
NUMS = ["boolean", "int", "long", "float", "double"]
LONG = st.integers(-(2**63), 2**63 - 1)
INT = st.integers(-(2**31), 2**31 - 1)
DOUBLE = st.floats(allow_nan=True, allow_infinity=True)
FLOAT32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
TEXT = st.text(max_size=20)


def norm(v: Any) -> Any:
    """Make values comparable: NaN equals NaN, tuples are lists."""
    if isinstance(v, float) and math.isnan(v):
        return "NaN"
    if isinstance(v, dict):
        return {k: norm(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [norm(x) for x in v]
    return v


def encode_body(parsed: dict[str, Any], record: dict[str, Any]) -> bytes:
    fo = io.BytesIO()
    fastavro.schemaless_writer(fo, parsed, record)
    return fo.getvalue()


def encode(parsed: dict[str, Any], record: dict[str, Any], schema_id: int) -> bytes:
    return frame(schema_id, encode_body(parsed, record))


def fastavro_read(parsed_writer: dict[str, Any], value: bytes, parsed_reader: dict[str, Any] | None = None) -> Any:
    return fastavro.schemaless_reader(io.BytesIO(value[5:]), parsed_writer, parsed_reader)


def parsed(schema: dict[str, Any]) -> dict[str, Any]:
    return fastavro.parse_schema(strip_logical(schema))


@st.composite
def field_types(draw: Any, counter: list[int]) -> Any:
    kind = draw(st.sampled_from(PRIMS + ["enum", "array"]))
    if kind == "enum":
        counter[0] += 1
        symbols = draw(st.lists(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True), min_size=1, max_size=5, unique=True))
        t: Any = {"type": "enum", "name": f"E{counter[0]}", "symbols": symbols}
    elif kind == "array":
        t = {"type": "array", "items": draw(st.sampled_from(NUMS))}
    else:
        t = kind
    if draw(st.booleans()) and draw(st.booleans()):
        t = ["null", t] if draw(st.booleans()) else [t, "null"]
    return t


@st.composite
def record_schemas(draw: Any) -> dict[str, Any]:
    counter = [0]
    n = draw(st.integers(1, 8))
    return {
        "type": "record",
        "name": "R",
        "namespace": "test",
        "fields": [{"name": f"c{i}", "type": draw(field_types(counter))} for i in range(n)],
    }


def value_strategy(t: Any) -> st.SearchStrategy[Any]:
    if isinstance(t, list):
        other = t[1 - t.index("null")]
        return st.one_of(st.none(), value_strategy(other))
    if isinstance(t, dict):
        if t["type"] == "enum":
            return st.sampled_from(t["symbols"])
        if t["type"] == "array":
            return st.lists(value_strategy(t["items"]), max_size=6)
        return value_strategy(t["type"])
    return {
        "boolean": st.booleans(),
        "int": INT,
        "long": LONG,
        "float": FLOAT32,
        "double": DOUBLE,
        "string": TEXT,
        "bytes": st.binary(max_size=12),
    }[t]


def records_for(schema: dict[str, Any], min_size: int = 1, max_size: int = 20) -> st.SearchStrategy[list[dict[str, Any]]]:
    fields = {f["name"]: value_strategy(f["type"]) for f in schema["fields"]}
    return st.lists(st.fixed_dictionaries(fields), min_size=min_size, max_size=max_size)


def random_wire_batch(data: st.DataObject) -> tuple[dict[str, Any], int, list[Any], list[bytes], Any, Any]:
    """Draw a schema and records; (schema, schema id, records, wire values, their DecodedBatch, registry)."""
    from schemas.columnar import BatchDecoder
    from schemas.registry import SchemaRegistry

    schema = data.draw(record_schemas())
    records = data.draw(records_for(schema, min_size=0))
    reg = SchemaRegistry()
    sid = reg.register(schema)
    values = [b"\x00" + sid.to_bytes(4, "big") + encode_body(parsed(reg.by_id(sid)), r) for r in records]
    return schema, sid, records, values, BatchDecoder(schema, reg).decode(values), reg
