"""The output record: prediction fields for a model's outputs, plus fields carried from the input.

``output_schema(prediction_fields(), carried_fields(...))`` is the one derivation of what a
scoring pipeline writes; it is registered under the output subject, so the stock Avro
deserializer reads it. A new model output kind adds its fields in ``prediction_fields``.
"""

from __future__ import annotations

import copy
from typing import Any, Literal, Mapping, Sequence

from schemas.errors import ConfigError
from schemas.registry import load_schema

SubjectStrategy = Literal["topic", "record"]
OUTPUT_NAME, OUTPUT_NAMESPACE = "Prediction", "streamscore"


def prediction_fields() -> list[dict[str, Any]]:
    """The prediction fields of a binary-score model: event id, key, model, version, variant,
    score, decision, event time, scored time (``schemas/prediction.avsc``)."""
    return copy.deepcopy(load_schema("prediction")["fields"])


def carried_name(path: str) -> str:
    """The output field name of a carried input path: ``payment.amount`` -> ``payment_amount``."""
    return path.replace(".", "_")


def _carried_type(path: str, t: Any, decimal: bool) -> Any:
    if decimal:     # decimals decode to float64
        return ["null", "double"] if isinstance(t, list) else "double"
    if isinstance(t, str) and t not in ("null", "boolean", "int", "long", "float", "double", "bytes", "string"):
        raise ConfigError(f"output.carry: {path!r} refers to the named type {t!r} defined elsewhere; "
                          f"carry the field that defines it")
    return copy.deepcopy(t)


def carried_fields(paths: Sequence[str], leaf_types: Mapping[str, Any], decimals: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Output fields copying input leaves (dotted paths) with their Avro types; optionals default to null."""
    out: list[dict[str, Any]] = []
    for path in paths:
        if path not in leaf_types:
            raise ConfigError(f"output.carry: {path!r} is not a field of the input schema; valid: {sorted(leaf_types)}")
        t = _carried_type(path, leaf_types[path], path in decimals)
        field: dict[str, Any] = {"name": carried_name(path), "type": t}
        if isinstance(t, list) and "null" in t:
            field["type"] = ["null", *[b for b in t if b != "null"]]
            field["default"] = None
        out.append(field)
    return out


def output_schema(prediction: list[dict[str, Any]], carried: list[dict[str, Any]], *,
                  name: str = OUTPUT_NAME, namespace: str = OUTPUT_NAMESPACE) -> dict[str, Any]:
    """The Avro record a pipeline writes: ``prediction`` fields, then ``carried`` ones."""
    taken = {f["name"] for f in prediction}
    clash = [f["name"] for f in carried if f["name"] in taken]
    if clash:
        raise ConfigError(f"output.carry: {clash} clash with prediction fields {sorted(taken)}")
    return {"type": "record", "name": name, "namespace": namespace, "fields": [*prediction, *carried]}


def output_subject(topic: str, strategy: SubjectStrategy, schema: Mapping[str, Any]) -> str:
    """TopicNameStrategy (``<topic>-value``) or RecordNameStrategy (``<namespace>.<name>``)."""
    if strategy == "record":
        return f"{schema.get('namespace', '')}.{schema['name']}".lstrip(".")
    return f"{topic}-value"
