"""The prediction record derived from a model's output spec."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastavro.schema import to_parsing_canonical_form

from schemas.columnar import BatchEncoder
from schemas.errors import ConfigError
from schemas.prediction import OutputSpec, head_fields, prediction_fields, prediction_schema
from schemas.registry import SchemaRegistry, parse_schema

ROOT = Path(__file__).resolve().parents[2]


def bundled_fields() -> list[dict[str, object]]:
    return json.loads((ROOT / "schemas" / "prediction.avsc").read_text())["fields"]  # type: ignore[no-any-return]


def test_one_score_head_is_exactly_the_bundled_prediction_schema_and_bytes() -> None:
    legacy = OutputSpec.from_dict({"name": "score", "dtype": "float32", "shape": ["batch"]})
    derived = prediction_schema(legacy)
    bundled = json.loads((ROOT / "schemas" / "prediction.avsc").read_text())
    assert derived == bundled
    reg = SchemaRegistry.default()
    assert reg.register(derived) == reg.id_for("prediction")
    n = 3
    cols = {"event_id": ["a", "b", "c"], "key": ["k", "", "k2"], "model": ["m"] * n, "version": ["1"] * n,
            "variant": np.zeros(n, np.int64), "score": np.array([0.1, 0.5, 0.9]), "decision": np.array([0, 1, 1], bool),
            "event_time": np.arange(n), "scored_at": np.arange(n) + 5}
    assert BatchEncoder(derived, reg.register(derived)).encode(cols, n) == \
        BatchEncoder(reg.schema("prediction"), reg.id_for("prediction")).encode(cols, n)


def test_several_heads_give_their_fields_in_order() -> None:
    spec = OutputSpec.from_dict({"heads": [
        {"name": "fraud", "kind": "score", "output": "p", "index": 1},
        {"name": "expected_loss", "kind": "value", "output": "loss"},
        {"name": "route", "kind": "classes", "labels": ["a", "b", "c"], "top_k": 2, "prefix": "route_"}]})
    assert spec.fields() == ["score", "decision", "expected_loss", "route_label", "route_probability", "route_scores"]
    fields = head_fields(spec)
    assert fields[-1] == {"name": "route_scores", "type": {"type": "map", "values": "double"}}
    assert prediction_fields(spec)[5:-2] == fields
    assert prediction_fields() == bundled_fields()
    schema = prediction_schema(spec, carried=[{"name": "amount", "type": "double"}])
    names = [f["name"] for f in schema["fields"]]
    assert names[:5] == ["event_id", "key", "model", "version", "variant"] and names[-3:] == ["event_time", "scored_at", "amount"]
    parse_schema(schema)
    assert OutputSpec.from_dict(spec.to_dict()) == spec
    assert to_parsing_canonical_form(parse_schema(schema))


@pytest.mark.parametrize("heads, match", [
    ([{"kind": "score"}, {"kind": "score"}], "duplicate or reserved"),
    ([{"name": "key", "kind": "value"}], "duplicate or reserved"),
    ([{"kind": "classes"}], "needs its class labels"),
    ([{"kind": "histogram"}], "not one of"),
    ([{"kind": "value", "colour": 1}], "unknown key"),
    ([], "at least one head"),
])
def test_bad_output_specs_are_refused(heads: list[dict[str, object]], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        OutputSpec.from_dict({"heads": heads})
