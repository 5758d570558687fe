"""Classify Avro field types into the shapes the vectorised codec can handle.

A ``FieldType`` is either a primitive, an enum, an array of numbers, or one of those
inside a two-branch union with "null". Anything else classifies as ``None`` and sends
the whole schema to the per-record (fastavro) path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from schemas.errors import SchemaError

FIXED_SIZE = {"double": 8, "float": 4, "boolean": 1}
NUMERIC = ("boolean", "int", "long", "float", "double")
SCALAR = NUMERIC + ("string", "bytes", "enum")
DTYPE = {
    "boolean": np.dtype(np.bool_),
    "int": np.dtype(np.int32),
    "long": np.dtype(np.int64),
    "float": np.dtype(np.float32),
    "double": np.dtype(np.float64),
    "enum": np.dtype(np.int32),
}
# writer kind -> reader kinds it may be read as (Avro schema resolution rules)
PROMOTIONS = {
    "int": ("int", "long", "float", "double"),
    "long": ("long", "float", "double"),
    "float": ("float", "double"),
    "double": ("double",),
    "boolean": ("boolean",),
    "string": ("string", "bytes"),
    "bytes": ("bytes", "string"),
}
NO_DEFAULT = object()


@dataclass(frozen=True)
class FieldType:
    kind: str  # one of SCALAR or "array"
    nullable: bool = False
    null_index: int = 0  # branch index of "null" when nullable
    symbols: tuple[str, ...] = ()  # enum symbols
    enum_default: str | None = None
    items: str | None = None  # numeric item kind of an array

    @property
    def base(self) -> FieldType:
        """The same type without the null branch."""
        return FieldType(self.kind, symbols=self.symbols, enum_default=self.enum_default, items=self.items)


@dataclass(frozen=True)
class Field:
    name: str
    type: FieldType | None  # None: not compilable, decoded per record
    raw_type: Any
    default: Any = NO_DEFAULT
    aliases: tuple[str, ...] = ()


def _type_name(t: Any) -> Any:
    return t if isinstance(t, str) else t.get("type") if isinstance(t, dict) else None


def _classify_single(t: Any, named: dict[str, Any]) -> FieldType | None:
    if isinstance(t, str) and t in named:
        t = named[t]
    if isinstance(t, dict):
        kind = t.get("type")
        if kind == "enum":
            named[t["name"]] = t
            return FieldType("enum", symbols=tuple(t["symbols"]), enum_default=t.get("default"))
        if kind == "array":
            items = t.get("items")
            items = items.get("type") if isinstance(items, dict) else items
            return FieldType("array", items=items) if items in NUMERIC else None
        if kind in ("record", "error", "fixed"):
            named[t["name"]] = t
            return None
        t = kind  # a primitive with attributes, e.g. a logicalType annotation
    if t in SCALAR and t != "enum":
        return FieldType(t)
    return None


def classify(t: Any, named: dict[str, Any]) -> FieldType | None:
    """The FieldType of an Avro type, or None when only fastavro can handle it."""
    if isinstance(t, list):
        if len(t) != 2 or "null" not in t:
            for branch in t:  # still record named types defined inside the union
                _classify_single(branch, named)
            return None
        null_index = t.index("null")
        inner = _classify_single(t[1 - null_index], named)
        if inner is None:
            return None
        return FieldType(inner.kind, True, null_index, inner.symbols, inner.enum_default, inner.items)
    return _classify_single(t, named)


def record_fields(schema: dict[str, Any]) -> list[Field]:
    """The top-level fields of a parsed record schema, classified."""
    if not isinstance(schema, dict) or schema.get("type") not in ("record", "error"):
        raise SchemaError("the batch codec needs a record schema")
    named: dict[str, Any] = {schema.get("name", ""): schema}
    return [
        Field(f["name"], classify(f["type"], named), f["type"], f.get("default", NO_DEFAULT), tuple(f.get("aliases", ())))
        for f in schema["fields"]
    ]


def strip_logical(t: Any) -> Any:
    """A copy of a schema without logicalType annotations: codecs see the raw Avro types."""
    if isinstance(t, list):
        return [strip_logical(b) for b in t]
    if isinstance(t, dict):
        return {k: strip_logical(v) for k, v in t.items() if k != "logicalType"}
    return t


def compilable(fields: list[Field]) -> bool:
    return all(f.type is not None for f in fields)


def can_promote(writer: FieldType, reader: FieldType) -> bool:
    """Whether a non-null writer value of ``writer`` can be read as ``reader``."""
    if writer.kind == "enum" or reader.kind == "enum":
        return writer.kind == reader.kind == "enum"
    if writer.kind == "array" or reader.kind == "array":
        return writer.kind == reader.kind == "array" and str(reader.items) in PROMOTIONS[str(writer.items)]
    return reader.kind in PROMOTIONS[writer.kind]
