from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from schemas.columnar import BatchDecoder
from schemas.registry import SchemaRegistry
from tests.unit._schemas_helpers import encode, fastavro_read, parsed


def rec(name: str, fields: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "record", "name": name, "namespace": "t", "fields": fields}


READER = rec("Ev", [
    {"name": "id", "type": "string"},
    {"name": "n", "type": "long"},
    {"name": "x", "type": "double"},
    {"name": "note", "type": ["null", "string"], "default": None},
    {"name": "level", "type": {"type": "enum", "name": "Level", "symbols": ["lo", "hi"], "default": "lo"}},
])


def decode_with_writer(writer: dict[str, Any], records: list[dict[str, Any]], engine: str) -> tuple[Any, list[Any]]:
    reg = SchemaRegistry()
    reg.register(READER)
    wid = reg.register(writer)
    values = [encode(parsed(writer), r, wid) for r in records]
    batch = BatchDecoder(READER, reg, engine=engine).decode(values)  # type: ignore[arg-type]
    expected = [fastavro_read(parsed(writer), v, parsed(READER)) for v in values]
    return batch, expected


@pytest.mark.parametrize("engine", ["auto", "fastavro"])
def test_writer_reordered_promoted_extra_and_missing_optional(engine: str) -> None:
    writer = rec("Ev", [
        {"name": "extra", "type": {"type": "array", "items": "int"}},  # reader lacks it: skipped
        {"name": "x", "type": "int"},  # int -> double
        {"name": "n", "type": "int"},  # int -> long
        {"name": "level", "type": {"type": "enum", "name": "Level", "symbols": ["hi", "mid", "lo"]}},
        {"name": "id", "type": "string"},
    ])
    records = [{"extra": [i, -i], "x": i, "n": -(2**31) + i, "level": ["hi", "mid", "lo"][i % 3], "id": f"r{i}"} for i in range(6)]
    batch, expected = decode_with_writer(writer, records, engine)
    assert batch.errors == []
    assert batch.to_records() == expected
    assert batch.to_records()[1] == {"id": "r1", "n": -(2**31) + 1, "x": 1.0, "note": None, "level": "lo"}  # mid -> default lo
    assert batch.columns["x"].dtype == np.float64 and batch.columns["n"].dtype == np.int64
    assert batch.nulls["note"].all()
    assert list(batch.columns) == ["id", "n", "x", "note", "level"]


def test_mixed_writer_ids_in_one_batch_keep_input_order() -> None:
    reg = SchemaRegistry()
    rid = reg.register(READER)
    old = rec("Ev", [{"name": "id", "type": "string"}, {"name": "n", "type": "int"}, {"name": "x", "type": "float"},
                     {"name": "level", "type": {"type": "enum", "name": "Level", "symbols": ["lo", "hi"]}}])
    oid = reg.register(old)
    values = []
    for i in range(8):
        if i % 2:
            values.append(encode(parsed(old), {"id": f"o{i}", "n": i, "x": 0.5, "level": "hi"}, oid))
        else:
            values.append(encode(parsed(READER), {"id": f"n{i}", "n": i, "x": 2.0, "note": "z", "level": "lo"}, rid))
    batch = BatchDecoder(READER, reg).decode(values)
    assert batch.errors == []
    assert batch.schema_ids.tolist() == [rid, oid] * 4
    assert batch.columns["id"].to_list() == [("o" if i % 2 else "n") + str(i) for i in range(8)]
    assert batch.columns["note"].to_list() == ["z", None] * 4


@pytest.mark.parametrize("engine", ["auto", "fastavro"])
@pytest.mark.parametrize("writer_fields", [
    [{"name": "id", "type": "string"}, {"name": "x", "type": "double"}, {"name": "level", "type": {"type": "enum", "name": "Level", "symbols": ["lo"]}}],  # n missing, no default
    [{"name": "id", "type": "string"}, {"name": "n", "type": "double"}, {"name": "x", "type": "double"}, {"name": "level", "type": {"type": "enum", "name": "Level", "symbols": ["lo"]}}],  # double -> long
])
def test_incompatible_writer_is_per_record_schema_resolution(writer_fields: list[dict[str, Any]], engine: str) -> None:
    writer = rec("Ev", writer_fields)
    reg = SchemaRegistry()
    rid = reg.register(READER)
    wid = reg.register(writer)
    rec_w = {f["name"]: {"string": "a", "double": 1.0}.get(f["type"], "lo") if isinstance(f["type"], str) else "lo" for f in writer_fields}
    good = encode(parsed(READER), {"id": "g", "n": 1, "x": 1.0, "note": None, "level": "hi"}, rid)
    values = [good, encode(parsed(writer), rec_w, wid), good]
    batch = BatchDecoder(READER, reg, engine=engine).decode(values)  # type: ignore[arg-type]
    assert [(i, e.reason) for i, e in batch.errors] == [(1, "schema_resolution")]
    assert batch.ok_index.tolist() == [0, 2]


def test_writer_null_into_non_nullable_reader_is_resolution_error() -> None:
    reader = rec("Z", [{"name": "v", "type": "long"}])
    writer = rec("Z", [{"name": "v", "type": ["null", "long"]}])
    reg = SchemaRegistry()
    reg.register(reader)
    wid = reg.register(writer)
    values = [encode(parsed(writer), {"v": v}, wid) for v in (1, None, 3)]
    batch = BatchDecoder(reader, reg).decode(values)
    assert [(i, e.reason) for i, e in batch.errors] == [(1, "schema_resolution")]
    assert batch.columns["v"].tolist() == [1, 3]
