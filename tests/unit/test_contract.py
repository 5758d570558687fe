"""A pipeline's data contract at startup: reader schema sources and field mapping errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from schemas.errors import ConfigError
from schemas.registry import SchemaRegistry
from streamscore.config import PipelineConfig
from streamscore.contract import field_mapping, reader_schema

ORDER = {"type": "record", "name": "Order", "fields": [
    {"name": "order_id", "type": "string"},
    {"name": "placed_at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    {"name": "payment", "type": {"type": "record", "name": "Payment", "fields": [
        {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}}]}}]}


def _p(**input_kw: Any) -> PipelineConfig:
    return PipelineConfig.model_validate({"name": "p", "input": {"topic": "in", **input_kw}, "model": {"name": "m"},
                                          "output": {"topic": "out"}})


def test_reader_schema_from_a_file_a_bundled_name_or_the_registry(tmp_path: Path) -> None:
    path = tmp_path / "order.avsc"
    path.write_text(json.dumps(ORDER))
    bundled = SchemaRegistry.default()
    assert reader_schema(_p(schema=str(path)), bundled, None)["name"] == "Order"
    assert reader_schema(_p(), bundled, None)["name"].endswith("Transaction")
    with pytest.raises(ConfigError, match="does not exist"):
        reader_schema(_p(schema=str(tmp_path / "nope.avsc")), bundled, None)
    with pytest.raises(ConfigError, match="needs a schema_registry section"):
        reader_schema(_p(schema="registry:orders-value"), bundled, None)
    with pytest.raises(ConfigError, match="input.schema"):
        reader_schema(_p(schema="no_such_bundled"), bundled, None)


def test_field_mapping() -> None:
    m = field_mapping(_p(id_field="order_id", time_field="placed_at"), ORDER)
    assert m.time_field == "placed_at" and m.time_scale == 1000 and m.float_fields == {"payment.amount"}
    assert field_mapping(_p(id_field=None), ORDER).time_field is None     # default name absent: scoring time
    with pytest.raises(ConfigError, match="id_field: 'event_id' is not a field"):
        field_mapping(_p(), ORDER)
    with pytest.raises(ConfigError, match="time_field: 'when' is not a field"):
        field_mapping(_p(id_field=None, time_field="when"), ORDER)
    with pytest.raises(ConfigError, match="must be a long"):
        field_mapping(_p(id_field=None, time_field="order_id"), ORDER)
