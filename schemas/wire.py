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


def unframe(value: bytes | None) -> tuple[int, memoryview]:
    """Split a wire value into (schema id, body); the body is a view, not a copy."""
    if not value:
        raise WireFormatError("empty message value", raw=value)
    if len(value) < HEADER_SIZE:
        raise WireFormatError(f"value is {len(value)} bytes, shorter than the 5-byte header", raw=value)
    magic, schema_id = _HEADER.unpack_from(value)
    if magic != MAGIC:
        raise WireFormatError(f"bad magic byte {magic}", raw=bytes(value))
    return schema_id, memoryview(value)[HEADER_SIZE:]
