"""Nested records as dotted-path fields, and logical types as column conversions.

A non-nullable nested record is encoded as its fields in order, with nothing around
them, so inlining it (``payment`` -> ``payment.amount``, ``payment.currency``) changes
no byte of the encoding: the vectorised decoder reads the flattened field list as it
reads a flat record. A nullable record (``["null", {record}]``), a map or an array of
records stays one field (per-record path, a Python object per row).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from schemas.codec.types import NO_DEFAULT, Field, classify
from schemas.columns import BytesColumn, Column
from schemas.errors import SchemaError

_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


def _resolve(t: Any, named: dict[str, Any]) -> Any:
    if isinstance(t, str) and t not in _PRIMITIVES:
        return named.get(t, t)
    return t


def _note_names(t: Any, named: dict[str, Any]) -> None:
    if isinstance(t, dict):
        if t.get("type") in ("record", "error", "enum", "fixed") and "name" in t:
            named[t["name"]] = t
            if t.get("namespace") and "." not in t["name"]:
                named[f"{t['namespace']}.{t['name']}"] = t
        for f in t.get("fields", ()):
            _note_names(f["type"], named)
        for key in ("items", "values"):
            if key in t:
                _note_names(t[key], named)
    elif isinstance(t, list):
        for b in t:
            _note_names(b, named)


def flat_fields(schema: dict[str, Any]) -> tuple[list[Field], set[str]]:
    """The record's leaf fields by dotted path, and the paths of the records that were inlined."""
    if not isinstance(schema, dict) or schema.get("type") not in ("record", "error"):
        raise SchemaError("the batch codec needs a record schema")
    named: dict[str, Any] = {}
    _note_names(schema, named)
    out: list[Field] = []
    inlined: set[str] = set()
    classify_named: dict[str, Any] = {schema.get("name", ""): schema}

    def walk(rec: dict[str, Any], prefix: str, parent_default: Any) -> None:
        for f in rec["fields"]:
            name = prefix + f["name"]
            t = _resolve(f["type"], named)
            default = f.get("default", NO_DEFAULT)
            if default is NO_DEFAULT and isinstance(parent_default, dict) and f["name"] in parent_default:
                default = parent_default[f["name"]]
            aliases = tuple(prefix + a for a in f.get("aliases", ()))
            if isinstance(t, dict) and t.get("type") in ("record", "error"):
                inlined.add(name)
                classify_named[t["name"]] = t
                walk(t, name + ".", default)
                continue
            out.append(Field(name, classify(f["type"], classify_named), f["type"], default, aliases))

    walk(schema, "", NO_DEFAULT)
    return out, inlined


def flatten_record(rec: Any, inlined: set[str], prefix: str = "") -> Any:
    """A decoded (nested dict) record with its inlined records' fields under dotted keys."""
    if not inlined or not isinstance(rec, dict):
        return rec
    out: dict[str, Any] = {}
    for k, v in rec.items():
        path = prefix + k
        if path in inlined and isinstance(v, dict):
            out.update(flatten_record(v, inlined, path + "."))
        else:
            out[path] = v
    return out


@dataclass(frozen=True)
class Decimal:
    scale: int


def logical_fields(schema: dict[str, Any]) -> dict[str, Decimal]:
    """Dotted paths of decimal leaves (bytes or fixed), which decode to float64."""
    named: dict[str, Any] = {}
    _note_names(schema, named)
    out: dict[str, Decimal] = {}

    def leaf(t: Any) -> Any:
        t = _resolve(t, named)
        if isinstance(t, list) and len(t) == 2 and "null" in t:
            return _resolve(t[1 - t.index("null")], named)
        return t

    def walk(rec: dict[str, Any], prefix: str) -> None:
        for f in rec["fields"]:
            t = leaf(f["type"])
            name = prefix + f["name"]
            if isinstance(t, dict) and t.get("type") in ("record", "error") and not isinstance(f["type"], list):
                walk(t, name + ".")
            elif isinstance(t, dict) and t.get("logicalType") == "decimal" and t.get("type") in ("bytes", "fixed"):
                out[name] = Decimal(int(t.get("scale", 0)))

    walk(schema, "")
    return out


def decimal_column(col: Column, scale: int) -> np.ndarray:
    """Big-endian two's-complement unscaled integers -> float64 / 10**scale; null rows NaN."""
    factor = 10.0 ** -scale
    if isinstance(col, BytesColumn):
        n = col.start.shape[0]
        out = np.full(n, np.nan)
        length = col.length
        short = (length > 0) & (length <= 8)
        if short.any():
            rows = np.flatnonzero(short)
            k = length[rows]
            idx = col.start[rows, None] + (np.arange(8) - (8 - k)[:, None])
            valid = idx >= col.start[rows, None]
            raw = np.where(valid, col.buf[np.where(valid, idx, 0)], 0).astype(np.uint64)
            u = np.zeros(rows.shape[0], np.uint64)
            for j in range(8):
                u = (u << np.uint64(8)) | raw[:, j]
            neg = (raw[np.arange(rows.shape[0]), 8 - k] & np.uint64(0x80)) != 0
            shift = (np.uint64(64) - (k.astype(np.uint64) * np.uint64(8)))
            ext = np.where(neg & (k < 8), ~np.uint64(0) << (np.uint64(64) - shift), np.uint64(0))
            out[rows] = (u | ext).view(np.int64) * factor
        out[length == 0] = 0.0
        for i in np.flatnonzero(length > 8).tolist():
            data = bytes(col.buf[col.start[i]:col.start[i] + length[i]])
            out[i] = int.from_bytes(data, "big", signed=True) * factor
        return out
    if not isinstance(col, np.ndarray):
        raise SchemaError(f"a decimal column must hold bytes, not {type(col).__name__}")
    values = [None if v is None else int.from_bytes(bytes(v), "big", signed=True) * factor for v in col.tolist()]
    return np.array([np.nan if v is None else v for v in values], np.float64)
