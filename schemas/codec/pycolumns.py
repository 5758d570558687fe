"""Columns from Python values: the per-record (fastavro / JSON) paths end here.

The columns built here must be identical to the vectorised decoder's, including the
fill values of null rows (NaN, 0, False, enum code -1, string length -1, empty array).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from schemas.codec.decode import null_column
from schemas.codec.types import DTYPE, NO_DEFAULT, Field, FieldType
from schemas.columns import BytesColumn, Column, RaggedColumn, StrColumn

MISSING = object()
_BOUNDS = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}


def _is_int(v: Any, kind: str) -> bool:
    lo, hi = _BOUNDS[kind]
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_bytes(v: Any) -> bool:
    if isinstance(v, str):  # Avro JSON encodes bytes as latin-1 code points
        return all(ord(ch) < 256 for ch in v)
    return isinstance(v, bytes)


def _scalar_check(ft: FieldType) -> Callable[[Any], bool]:
    kind = ft.kind
    if kind == "boolean":
        return lambda v: isinstance(v, bool)
    if kind in _BOUNDS:
        return lambda v: _is_int(v, kind)
    if kind in ("float", "double"):
        return _is_number
    if kind == "string":
        return lambda v: isinstance(v, str)
    if kind == "bytes":
        return _is_bytes
    if kind == "enum":
        symbols = set(ft.symbols)
        return lambda v: isinstance(v, str) and v in symbols
    item_ok = _scalar_check(FieldType(str(ft.items)))
    return lambda v: isinstance(v, list) and all(item_ok(x) for x in v)


def value_check(ft: FieldType | None) -> Callable[[Any], bool]:
    """A predicate telling whether a Python value fits ``ft``."""
    if ft is None:
        return lambda v: v is not MISSING
    check = _scalar_check(ft)
    if ft.nullable:
        return lambda v: v is None or check(v)
    return check


def _build(ft: FieldType, values: list[Any]) -> Column:
    kind = ft.kind
    if kind == "string":
        return StrColumn.from_list(values)
    if kind == "bytes":
        return BytesColumn.from_bytes([v.encode("latin-1") if isinstance(v, str) else v for v in values])
    if kind == "enum":
        where = {s: i for i, s in enumerate(ft.symbols)}
        return np.fromiter((-1 if v is None else where[v] for v in values), np.int32, len(values))
    if kind == "array":
        counts = np.fromiter((0 if v is None else len(v) for v in values), np.int64, len(values))
        offsets = np.zeros(len(values) + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        flat = [x for v in values if v is not None for x in v]
        return RaggedColumn(np.array(flat, DTYPE[str(ft.items)]), offsets)
    fill = np.nan if DTYPE[kind].kind == "f" else 0
    return np.array([fill if v is None else v for v in values], DTYPE[kind])


def build_column(f: Field, values: list[Any]) -> tuple[Column, np.ndarray | None]:
    """The column (and null mask for nullable fields) of already-checked values."""
    if f.type is None:
        out = np.empty(len(values), object)
        for i, v in enumerate(values):
            out[i] = v
        return out, None
    if not values:
        col = null_column(f.type, 0) if f.type.kind in ("string", "bytes", "array", "enum") else np.empty(0, DTYPE[f.type.kind])
        return col, (np.zeros(0, bool) if f.type.nullable else None)
    col = _build(f.type, values)
    mask = np.fromiter((v is None for v in values), bool, len(values)) if f.type.nullable else None
    return col, mask


def field_value(record: dict[str, Any], f: Field) -> Any:
    """The record's value for ``f``, its default when absent, else MISSING."""
    v = record.get(f.name, MISSING)
    if v is MISSING and f.default is not NO_DEFAULT:
        return f.default
    return v


def records_to_columns(
    records: list[Any], fields: list[Field]
) -> tuple[dict[str, Column], dict[str, np.ndarray], np.ndarray, dict[int, str]]:
    """Check each record against ``fields`` and build columns of the good ones.

    Returns (columns, null masks, local indices of good records, {bad index: message}).
    """
    checks = [value_check(f.type) for f in fields]
    bad: dict[int, str] = {}
    rows: list[list[Any]] = []
    good: list[int] = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            bad[i] = "record is not an object"
            continue
        row = [field_value(rec, f) for f in fields]
        for f, check, v in zip(fields, checks, row):
            if not check(v):
                bad[i] = f"field {f.name!r}: " + ("missing" if v is MISSING else f"bad value {v!r:.60}")
                break
        else:
            rows.append(row)
            good.append(i)
    cols: dict[str, Column] = {}
    nulls: dict[str, np.ndarray] = {}
    for j, f in enumerate(fields):
        cols[f.name], mask = build_column(f, [r[j] for r in rows])
        if mask is not None:
            nulls[f.name] = mask
    return cols, nulls, np.array(good, np.int64), bad
