"""Declarative features: each transform against numpy written out by hand, per-row failures."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from models.base import InputSpec
from schemas.columns import StrColumn
from schemas.errors import ModelError


def _spec(*features: Any, input_name: str = "features") -> InputSpec:
    return InputSpec.from_dict({"input_name": input_name, "features": list(features)})


COLS: dict[str, Any] = {
    "amount": np.array([0.0, 9.0, 99.0, 5.0]),
    "country": StrColumn.from_list(["US", "GB", "ZZ", None]),
    "channel": np.array([0, 1, 3, 2], np.int32),
    "event_time": np.array([0, 3_600_000 * 25, 86_400_000 * 4, 86_400_000 * 3 + 3_600_000 * 23], np.int64),
}
SYMBOLS = {"channel": ("POS", "ECOM", "ATM", "MOTO")}
NULLS = {"country": np.array([False, False, False, True])}


def _build(spec: InputSpec) -> Any:
    return spec.build(COLS, NULLS, SYMBOLS)


def test_numeric_transforms_match_numpy() -> None:
    spec = _spec({"name": "a", "field": "amount", "transforms": ["log1p", {"standardize": {"mean": 1.0, "std": 2.0}}]},
                 {"name": "c", "field": "amount", "transforms": [{"clip": {"min": 1, "max": 10}}]},
                 {"name": "b", "field": "amount", "transforms": [{"bucketize": {"boundaries": [1, 10, 100]}}]},
                 {"name": "z", "field": "amount", "transforms": ["bool"]},
                 {"name": "h", "field": "event_time", "transforms": ["hour"]},
                 {"name": "w", "field": "event_time", "transforms": ["weekday"]})
    out = _build(spec)
    x = COLS["amount"]
    m = out.inputs["features"]
    assert m.dtype == np.float32 and m.shape == (4, 6) and not out.bad
    np.testing.assert_allclose(m[:, 0], ((np.log1p(x) - 1) / 2).astype(np.float32))
    np.testing.assert_array_equal(m[:, 1], np.clip(x, 1, 10))
    np.testing.assert_array_equal(m[:, 2], [0, 1, 2, 1])
    np.testing.assert_array_equal(m[:, 3], [0, 1, 1, 1])
    np.testing.assert_array_equal(m[:, 4], [0, 1, 0, 23])
    np.testing.assert_array_equal(m[:, 5], [3, 4, 0, 6])   # Thu 1970-01-01, Fri, Mon, Sun


def test_one_hot_index_hash_on_strings_and_enums() -> None:
    spec = _spec({"name": "country", "default": "US", "transforms": [{"one_hot": {"vocabulary": ["US", "GB"]}}]},
                 {"name": "ch", "field": "channel", "transforms": [{"one_hot": {"vocabulary": ["ECOM", "POS"],
                                                                                 "unknown": "ignore"}}]},
                 {"name": "ci", "field": "country", "default": "GB",
                  "transforms": [{"index": {"vocabulary": ["GB", "US"]}}]},
                 {"name": "hb", "field": "country", "default": "", "transforms": [{"hash": {"buckets": 7}}]})
    out = _build(spec)
    m = out.inputs["features"]
    assert m.shape == (4, 3 + 2 + 1 + 1) and not out.bad
    np.testing.assert_array_equal(m[:, :3], [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]])  # null -> default US
    np.testing.assert_array_equal(m[:, 3:5], [[0, 1], [1, 0], [0, 0], [0, 0]])
    np.testing.assert_array_equal(m[:, 5], [1, 0, 2, 0])
    import zlib

    want = [zlib.crc32(s.encode()) % 7 for s in ["US", "GB", "ZZ", ""]]
    np.testing.assert_array_equal(m[:, 6], want)


def test_rows_that_cannot_be_built_are_reported_and_the_rest_are_kept() -> None:
    spec = _spec({"name": "country", "transforms": [{"one_hot": {"vocabulary": ["US", "GB"], "unknown": "error"}}]},
                 {"name": "amount", "transforms": ["log1p"]})
    out = _build(spec)
    assert sorted(out.bad) == [2, 3]
    assert "'ZZ' is not in the vocabulary" in out.bad[2] and "null and has no default" in out.bad[3]
    np.testing.assert_array_equal(out.inputs["features"][:2, :2], [[1, 0], [0, 1]])


def test_several_named_inputs_and_string_passthrough() -> None:
    spec = _spec({"name": "amount", "input": "num"}, {"name": "f", "field": "amount", "input": "num",
                                                       "transforms": ["log1p"]},
                 {"name": "country", "dtype": "string", "default": "", "input": "country"},
                 {"name": "channel", "dtype": "string", "input": "channel"})
    assert spec.inputs == {"num": ("float32", 2), "country": ("string", 1), "channel": ("string", 1)}
    out = _build(spec)
    assert out.inputs["country"].tolist() == [["US"], ["GB"], ["ZZ"], [""]]
    assert out.inputs["channel"].ravel().tolist() == ["POS", "ECOM", "MOTO", "ATM"]
    probe = spec.probe(2)
    assert probe["num"].shape == (2, 2) and probe["country"].dtype == object


def test_plain_spec_keeps_the_fast_path_and_round_trips() -> None:
    plain = InputSpec.of(["amount"])
    assert plain.plain and plain.build(COLS).inputs["features"].dtype == np.float32
    rich = _spec({"name": "a", "field": "amount", "default": 0, "transforms": ["log1p", {"clip": {"max": 3}}]})
    assert not rich.plain
    assert InputSpec.from_dict(rich.to_dict()) == rich


@pytest.mark.parametrize("feature, match", [
    ({"name": "a", "transforms": ["sqrt"]}, "unknown transform 'sqrt'"),
    ({"name": "a", "transforms": [{"standardize": {"mean": 0}}]}, "bad parameters"),
    ({"name": "a", "transforms": ["log1p", {"one_hot": {"vocabulary": ["x"]}}]}, "must come first"),
    ({"name": "a", "transforms": [{"one_hot": {"vocabulary": ["x"], "unknown": "drop"}}]}, "not one of"),
    ({"name": "a", "dtype": "float16"}, "dtype"),
    ({"name": "a", "colour": 1}, "unknown key"),
])
def test_bad_feature_specs_name_the_problem(feature: dict[str, Any], match: str) -> None:
    with pytest.raises(ModelError, match=match):
        _spec(feature)
