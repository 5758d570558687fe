"""Vectorised readers: one Avro field type decoded for every row of a cursor at once.

Rows that hit corrupt data get an error code (see ``_cursor``) and are dropped by the
caller; their batch-mates are unaffected because every row has its own cursor.
"""

from __future__ import annotations

import numpy as np

from schemas.codec.cursor import BAD_BRANCH, BAD_ENUM, INT_RANGE, TRUNCATED, Cursor
from schemas.codec.types import DTYPE, FIXED_SIZE, FieldType
from schemas.codec.vec import Buffer
from schemas.columns import BytesColumn, Column, RaggedColumn, StrColumn
from schemas.errors import SchemaError

_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
_LOW32 = np.uint64(0xFFFFFFFF)


class ResolutionError(SchemaError):
    """The writer schema cannot be read with the reader schema."""


def gather_fixed(buf: Buffer, p: np.ndarray, kind: str) -> np.ndarray:
    """Fixed-size values (double, float, boolean) starting at byte offsets ``p``."""
    if kind == "boolean":
        return buf.u8[p] != 0
    w = buf.words(p)
    if kind == "double":
        return w.view(np.float64)
    return (w & _LOW32).astype(np.uint32).view(np.float32)


def _read_int(cur: Cursor) -> np.ndarray:
    v = cur.read_long()
    bad = (v < _INT_MIN) | (v > _INT_MAX)
    if bad.any():
        cur.flag(bad, INT_RANGE)
    return v.astype(np.int32)


def _read_array(cur: Cursor, items: str) -> RaggedColumn:
    n = len(cur)
    size = FIXED_SIZE.get(items)
    rows_parts: list[np.ndarray] = []
    vals_parts: list[np.ndarray] = []
    active = np.arange(n)
    while active.size:
        sub = cur.subset(active)
        count = sub.read_long()
        neg = count < 0
        if neg.any():  # a negative block count is followed by the block's byte size
            count = np.abs(count)
            skip = sub.subset(np.flatnonzero(neg))
            skip.read_long()
            sub.merge(np.flatnonzero(neg), skip)
        room = (sub.end - sub.pos) // (size or 1)
        bad = (count < 0) | (count > room)
        if bad.any():
            sub.flag(bad, TRUNCATED)
            count[bad] = 0
        if size is not None:
            total = int(count.sum())
            if total:
                first = np.cumsum(count) - count
                idx = np.repeat(sub.pos - first * size, count) + np.arange(total, dtype=np.int64) * size
                rows_parts.append(np.repeat(active, count))
                vals_parts.append(gather_fixed(sub.buf, idx, items))
            sub.pos += count * size
        else:
            _read_varint_items(sub, count, active, rows_parts, vals_parts, items)
        cur.merge(active, sub)
        active = active[count != 0]
    return _assemble_ragged(cur, n, rows_parts, vals_parts, items)


def _read_varint_items(
    sub: Cursor, count: np.ndarray, active: np.ndarray, rows: list[np.ndarray], vals: list[np.ndarray], items: str
) -> None:
    left = count.copy()
    while True:
        live = np.flatnonzero(left > 0)
        if not live.size:
            return
        item = sub.subset(live)
        v = item.read_long()
        if items == "int":
            bad = (v < _INT_MIN) | (v > _INT_MAX)
            if bad.any():
                item.flag(bad, INT_RANGE)
        sub.merge(live, item)
        rows.append(active[live])
        vals.append(v)
        left[live] -= 1


def _assemble_ragged(cur: Cursor, n: int, rows_parts: list[np.ndarray], vals_parts: list[np.ndarray], items: str) -> RaggedColumn:
    dtype = DTYPE[items]
    offsets = np.zeros(n + 1, np.int64)
    if not rows_parts:
        return RaggedColumn(np.empty(0, dtype), offsets)
    rows = np.concatenate(rows_parts) if len(rows_parts) > 1 else rows_parts[0]
    vals = np.concatenate(vals_parts) if len(vals_parts) > 1 else vals_parts[0]
    if len(rows_parts) > 1:
        order = np.argsort(rows, kind="stable")
        rows, vals = rows[order], vals[order]
    np.cumsum(np.bincount(rows, minlength=n), out=offsets[1:])
    return RaggedColumn(vals.astype(dtype, copy=False), offsets)


def read_value(cur: Cursor, ft: FieldType) -> Column:
    """Decode one non-null value of ``ft`` (in writer terms) for every row of ``cur``."""
    kind = ft.kind
    if kind in FIXED_SIZE:
        v = gather_fixed(cur.buf, cur.pos, kind)
        cur.pos += FIXED_SIZE[kind]
        return v
    if kind == "long":
        return cur.read_long()
    if kind == "int":
        return _read_int(cur)
    if kind in ("string", "bytes"):
        length = cur.read_length()
        start = cur.pos.copy()
        cur.pos += length
        return (StrColumn if kind == "string" else BytesColumn)(cur.buf.u8, start, length)
    if kind == "enum":
        idx = cur.read_long()
        bad = (idx < 0) | (idx >= len(ft.symbols))
        if bad.any():
            cur.flag(bad, BAD_ENUM)
            idx[bad] = -1
        return idx.astype(np.int32)
    return _read_array(cur, str(ft.items))


def null_column(ft: FieldType, n: int, buf: np.ndarray | None = None) -> Column:
    """A column of ``n`` null rows for a nullable field (the shared null fill values)."""
    if ft.kind in ("string", "bytes"):
        cls = StrColumn if ft.kind == "string" else BytesColumn
        return cls(buf if buf is not None else np.empty(0, np.uint8), np.zeros(n, np.int64), np.full(n, -1, np.int64))
    if ft.kind == "array":
        return RaggedColumn(np.empty(0, DTYPE[str(ft.items)]), np.zeros(n + 1, np.int64))
    if ft.kind == "enum":
        return np.full(n, -1, np.int32)
    dtype = DTYPE[ft.kind]
    return np.full(n, np.nan if dtype.kind == "f" else 0, dtype)


def _scatter(sub: Column, rows: np.ndarray, n: int, ft: FieldType, buf: np.ndarray) -> Column:
    out = null_column(ft, n, buf)
    if isinstance(out, StrColumn) and isinstance(sub, StrColumn):
        out.start[rows], out.length[rows] = sub.start, sub.length
    elif isinstance(out, RaggedColumn) and isinstance(sub, RaggedColumn):
        counts = np.zeros(n, np.int64)
        counts[rows] = sub.counts
        np.cumsum(counts, out=out.offsets[1:])
        out.values = sub.values
    elif isinstance(out, np.ndarray):
        out[rows] = sub
    return out


def read_field(cur: Cursor, ft: FieldType) -> tuple[Column, np.ndarray | None]:
    """Decode a field (in writer terms); returns (column, null mask or None)."""
    if not ft.nullable:
        return read_value(cur, ft), None
    branch = cur.read_long()
    bad = (branch != 0) & (branch != 1)
    if bad.any():
        cur.flag(bad, BAD_BRANCH)
    is_null = (branch == ft.null_index) | bad
    rows = np.flatnonzero(~is_null)
    if rows.size == len(cur):
        return read_value(cur, ft.base), is_null
    sub = cur.subset(rows)
    col = read_value(sub, ft.base)
    cur.merge(rows, sub)
    return _scatter(col, rows, len(cur), ft, cur.buf.u8), is_null
