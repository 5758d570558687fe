from __future__ import annotations

import io
from typing import Any

import avro.io
import avro.schema
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.codec.types import strip_logical
from schemas.columnar import BatchDecoder, BatchEncoder, RaggedColumn, StrColumn
from schemas.errors import SchemaError
from schemas.registry import SchemaRegistry
from tests.unit._schemas_helpers import encode_body, fastavro_read, norm, parsed, random_wire_batch

REG = SchemaRegistry.default()
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def apache_read(schema: dict[str, Any], value: bytes) -> Any:
    import json

    s = avro.schema.parse(json.dumps(strip_logical(schema)))
    return avro.io.DatumReader(s).read(avro.io.BinaryDecoder(io.BytesIO(value[5:])))


def prediction_columns(n: int) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    return {
        "event_id": [f"e-{i}-ü" for i in range(n)],
        "key": np.array([f"k{i}" for i in range(n)], dtype=object),
        "model": StrColumn.from_list(["fraud"] * n),
        "version": ["v3"] * n,
        "variant": np.array([0, 1, 2] * (n // 3) + [0] * (n % 3), np.int32),
        "score": rng.random(n),
        "decision": rng.random(n) > 0.5,
        "event_time": np.arange(n, dtype=np.int64) * 977 + 1_700_000_000_000,
        "scored_at": np.array([-(2**63), 2**63 - 1] + [0] * (n - 2), np.int64),
    }


def test_prediction_encodes_to_what_apache_avro_and_fastavro_read() -> None:
    n = 9
    cols = prediction_columns(n)
    values = BatchEncoder(REG.schema("prediction"), 2).encode(cols, n)
    assert all(v[:5] == b"\x00\x00\x00\x00\x02" for v in values)
    p = parsed(REG.schema("prediction"))
    for i, v in enumerate(values):
        ref = apache_read(REG.schema("prediction"), v)
        assert ref == fastavro_read(p, v)
        assert ref["event_id"] == f"e-{i}-ü" and ref["model"] == "fraud"
        assert ref["variant"] == ["primary", "canary", "shadow"][i % 3]
        assert ref["score"] == cols["score"][i] and ref["decision"] == bool(cols["decision"][i])
        assert ref["event_time"] == int(cols["event_time"][i]) and ref["scored_at"] == int(cols["scored_at"][i])
        assert v[5:] == encode_body(p, ref)  # byte-identical to fastavro


def test_embedding_with_2d_ragged_symbols_and_nulls() -> None:
    n = 4
    emb = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    cols = {"event_id": ["a", "b", "c", "d"], "key": ["k"] * n, "model": ["m"] * n, "version": ["1"] * n,
            "variant": ["shadow", "primary", "canary", "shadow"], "embedding": emb,
            "label": ["x", None, "", None], "event_time": np.zeros(n, np.int64), "scored_at": np.ones(n, np.int64)}
    enc = BatchEncoder(REG.schema("embedding"), 5)
    values = enc.encode(cols, n)
    recs = [apache_read(REG.schema("embedding"), v) for v in values]
    assert [r["label"] for r in recs] == ["x", None, "", None]
    assert [r["variant"] for r in recs] == ["shadow", "primary", "canary", "shadow"]
    assert recs[2]["embedding"] == [6.0, 7.0, 8.0]
    ragged = RaggedColumn(np.array([1.0, 2.0, 3.0], np.float32), np.array([0, 0, 1, 3, 3]))
    again = enc.encode({**cols, "embedding": ragged}, n)
    assert [apache_read(REG.schema("embedding"), v)["embedding"] for v in again] == [[], [1.0], [2.0, 3.0], []]
    batch = BatchDecoder(REG.schema("embedding"), REG).decode(values)
    reenc = enc.encode(batch.columns, len(batch))
    assert reenc == values  # decode -> encode is the identity


@SETTINGS
@given(st.data())
def test_random_schema_roundtrip_through_columns(data: st.DataObject) -> None:
    schema, sid, records, values, batch, reg = random_wire_batch(data)
    p = parsed(reg.by_id(sid))
    out = BatchEncoder(schema, sid).encode(batch.columns, len(batch), nulls=batch.nulls)
    assert out == values
    buf, starts, lengths = BatchEncoder(schema, sid).encode_buffer(batch.columns, len(batch), nulls=batch.nulls)
    assert [buf[a:a + k].tobytes() for a, k in zip(starts, lengths)] == values and buf.size == sum(map(len, values))
    rows = [dict(r) for r in records]
    python_cols = {f["name"]: [r[f["name"]] for r in rows] for f in schema["fields"]}
    out2 = BatchEncoder(schema, sid).encode(python_cols, len(rows))
    nullable = {f["name"] for f in schema["fields"] if isinstance(f["type"], list)}

    def nan_to_null(rec: dict[str, Any]) -> dict[str, Any]:  # without a mask, NaN in a nullable field is null
        return {k: None if k in nullable and isinstance(v, float) and v != v else v for k, v in rec.items()}

    assert norm([fastavro_read(p, v) for v in out2]) == norm([nan_to_null(fastavro_read(p, v)) for v in values])


def test_fallback_encoder_for_uncompilable_schema() -> None:
    schema = {"type": "record", "name": "M", "fields": [{"name": "m", "type": {"type": "map", "values": "long"}},
                                                        {"name": "s", "type": "string"}]}
    enc = BatchEncoder(schema, 9)
    assert not enc.compiled
    values = enc.encode({"m": [{"a": 1}, {}], "s": StrColumn.from_list(["x", "y"])}, 2)
    assert [apache_read(schema, v) for v in values] == [{"m": {"a": 1}, "s": "x"}, {"m": {}, "s": "y"}]
    buf, starts, lengths = enc.encode_buffer({"m": [{"a": 1}, {}], "s": StrColumn.from_list(["x", "y"])}, 2)
    assert [buf[a:a + k].tobytes() for a, k in zip(starts, lengths)] == values


def test_encoder_rejects_bad_input() -> None:
    enc = BatchEncoder(REG.schema("prediction"), 2)
    cols = prediction_columns(3)
    with pytest.raises(SchemaError):
        enc.encode({**cols, "variant": ["primary", "nope", "canary"]}, 3)
    with pytest.raises(SchemaError):
        enc.encode({k: v for k, v in cols.items() if k != "score"}, 3)
    with pytest.raises(SchemaError):
        enc.encode(cols, 4)
