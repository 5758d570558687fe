from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from schemas.columnar import BatchDecoder
from schemas.errors import ConfigError, DecodeError, RecordValidationError
from schemas.registry import SchemaRegistry
from tests.unit._schemas_helpers import encode, parsed

REG = SchemaRegistry.default()
TX = REG.schema("transaction")


def tx(i: int, **over: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {"event_id": f"e{i}", "event_time": 1_700_000_000_000 + i, "account_id": "a", "amount": 12.5,
                           "currency": "EUR", "merchant_category": "5411", "country": "DE", "channel": "ECOM"}
    rec.update({f"f{k:02d}": 0.25 * k for k in range(1, 16)})
    rec.update(over)
    return rec


def test_json_decode_matches_records_and_reports_bad_ones() -> None:
    good = [tx(i) for i in range(3)]
    missing = tx(9)
    del missing["f07"]
    values = [json.dumps(good[0]).encode(), b"{not json", json.dumps(tx(4, amount="12")).encode(),
              json.dumps(good[1]).encode(), json.dumps(missing).encode(), json.dumps(tx(5, channel="FAX")).encode(),
              b"[1, 2]", json.dumps(good[2]).encode(), None]
    batch = BatchDecoder(TX, REG, fmt="json").decode(values)
    assert batch.ok_index.tolist() == [0, 3, 7]
    assert [i for i, _ in batch.errors] == [1, 2, 4, 5, 6, 8]
    assert all(isinstance(e, DecodeError) and e.raw == values[i] for i, e in batch.errors)
    assert batch.to_records() == good
    assert batch.columns["f03"].dtype == np.float64
    assert batch.schema_ids.tolist() == [1, 1, 1]


def test_json_and_avro_give_the_same_columns() -> None:
    recs = [tx(i, amount=float(i)) for i in range(5)]
    a = BatchDecoder(TX, REG).decode([encode(parsed(TX), r, 1) for r in recs])
    j = BatchDecoder(TX, REG, fmt="json").decode([json.dumps(r).encode() for r in recs])
    assert a.to_records() == j.to_records()
    np.testing.assert_array_equal(a.columns["channel"], j.columns["channel"])


@pytest.mark.parametrize("fmt", ["avro", "json"])
def test_validation_rejects_nonfinite_and_out_of_range_rows(fmt: str) -> None:
    recs = [tx(0), tx(1, f02=float("nan")), tx(2, amount=-1.0), tx(3, f15=float("inf")), tx(4, amount=1e7), tx(5, f05=float("nan"))]
    if fmt == "avro":
        values = [encode(parsed(TX), r, 1) for r in recs]
    else:
        values = [json.dumps(r).encode() for r in recs]
    dec = BatchDecoder(TX, REG, fmt=fmt, validate={"finite": ["f02", "f15"], "ranges": {"amount": [0, 1e7]}})  # type: ignore[arg-type]
    batch = dec.decode(values)
    assert batch.ok_index.tolist() == [0, 4, 5]
    assert [(i, type(e)) for i, e in batch.errors] == [(1, RecordValidationError), (2, RecordValidationError), (3, RecordValidationError)]
    assert batch.errors[0][1].reason == "validation" and batch.errors[0][1].raw == values[1]
    every = BatchDecoder(TX, REG, fmt=fmt, validate={"finite": True}).decode(values)  # type: ignore[arg-type]
    assert every.ok_index.tolist() == [0, 2, 4]


def test_validation_config_errors() -> None:
    with pytest.raises(ConfigError):
        BatchDecoder(TX, REG, validate={"finite": ["currency"]})
    with pytest.raises(ConfigError):
        BatchDecoder(TX, REG, validate={"ranges": {"nope": [0, 1]}})
    with pytest.raises(ConfigError):
        BatchDecoder(TX, REG, validate={"finit": True})
