from __future__ import annotations

import pytest

from schemas.errors import SchemaError, UnknownSchemaError, WireFormatError
from schemas.registry import SchemaRegistry, load_schema
from schemas.wire import frame, unframe

BUNDLED = {"transaction": 1, "prediction": 2, "drift_alert": 3, "text_event": 4, "embedding": 5}


def test_frame_roundtrip() -> None:
    value = frame(258, b"abc")
    assert value == b"\x00\x00\x00\x01\x02abc"
    schema_id, body = unframe(value)
    assert schema_id == 258 and bytes(body) == b"abc"


@pytest.mark.parametrize("value", [None, b"", b"\x00\x00\x01", b"\x01\x00\x00\x00\x01xx", b"\xff\x00\x00\x00\x01"])
def test_unframe_rejects_bad_values_and_keeps_raw(value: bytes | None) -> None:
    with pytest.raises(WireFormatError) as info:
        unframe(value)
    assert info.value.raw == value
    assert info.value.reason == "wire_format"


def test_default_registry_has_fixed_ids() -> None:
    reg = SchemaRegistry.default()
    for name, schema_id in BUNDLED.items():
        assert reg.id_for(name) == schema_id
        assert reg.by_id(schema_id) == reg.schema(name)
        assert reg.schema(name)["name"].startswith("streamscore.")
    names = [f["name"] for f in reg.schema("transaction")["fields"]]
    assert names[:8] == ["event_id", "event_time", "account_id", "amount", "currency", "merchant_category", "country", "channel"]
    assert names[8:] == [f"f{i:02d}" for i in range(1, 16)]
    variant = reg.schema("embedding")["fields"][4]["type"]
    assert variant["symbols"] == ["primary", "canary", "shadow"]


def test_register_is_idempotent_and_allocates_max_plus_one() -> None:
    reg = SchemaRegistry.default()
    assert reg.register(load_schema("prediction")) == 2
    top = max(reg.id_for(n) for n in ("transaction", "prediction", "drift_alert", "text_event", "embedding"))
    top = max(top, *(reg.id_for(n) for n in ("telemetry",) if _has(reg, n)))
    schema = {"type": "record", "name": "X", "fields": [{"name": "a", "type": "long"}]}
    new_id = reg.register(schema, name="x")
    assert new_id == top + 1
    assert reg.register(dict(schema)) == top + 1
    assert reg.id_for("x") == top + 1
    other = {"type": "record", "name": "Y", "fields": [{"name": "a", "type": "long"}]}
    assert reg.register(other) == top + 2


def _has(reg: SchemaRegistry, name: str) -> bool:
    try:
        reg.id_for(name)
        return True
    except Exception:
        return False


def test_unknown_id_and_name() -> None:
    reg = SchemaRegistry.default()
    with pytest.raises(UnknownSchemaError):
        reg.by_id(99)
    with pytest.raises(SchemaError):
        reg.id_for("nope")
    with pytest.raises(SchemaError):
        reg.register({"type": "record", "name": "Bad", "fields": [{"name": "a", "type": "nosuchtype"}]})
