"""The Confluent wire format: magic byte 0, a 4-byte big-endian schema id, the body."""

from __future__ import annotations

import struct

from schemas.errors import WireFormatError

MAGIC = 0
HEADER_SIZE = 5
_HEADER = struct.Struct(">BI")


def frame(schema_id: int, body: bytes) -> bytes:
    """Prefix ``body`` with the wire header for ``schema_id``."""
    if not 0 <= schema_id <= 0xFFFFFFFF:
        raise ValueError(f"schema id {schema_id} does not fit in 4 bytes")
    return _HEADER.pack(MAGIC, schema_id) + body


def header_error(value: bytes | None) -> WireFormatError | None:
    """Why ``value`` is not a wire-format value (empty, shorter than the header, bad magic byte),
    or None if its header is sound. The one wording of these errors, for every decoder."""
    if not value:
        return WireFormatError("empty message value", raw=value)
    if len(value) < HEADER_SIZE:
        return WireFormatError(f"value is {len(value)} bytes, shorter than the 5-byte header", raw=value)
    if value[0] != MAGIC:
        return WireFormatError(f"bad magic byte {value[0]}", raw=bytes(value))
    return None


def unframe(value: bytes | None) -> tuple[int, memoryview]:
    """Split a wire value into (schema id, body); the body is a view, not a copy."""
    err = header_error(value)
    if err is not None:
        raise err
    assert value is not None        # header_error answers for an empty value
    _magic, schema_id = _HEADER.unpack_from(value)
    return schema_id, memoryview(value)[HEADER_SIZE:]
