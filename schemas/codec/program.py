"""A compiled decoder for one (writer schema, reader schema) pair.

Steps run in writer field order; consecutive fixed-size fields (double, float,
boolean) are fused into one gather. Reader-only fields are filled from their
defaults. Construction raises ``ResolutionError`` when Avro resolution rules say the
writer can never be read with the reader.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from schemas.codec.cursor import BAD_UTF8, OK, RESOLUTION, TRAILING, TRUNCATED, Cursor
from schemas.codec.decode import ResolutionError, gather_fixed, null_column, read_field
from schemas.codec.native import non_ascii
from schemas.codec.types import DTYPE, FIXED_SIZE, NO_DEFAULT, Field, FieldType, can_promote
from schemas.codec.vec import Buffer
from schemas.columns import BytesColumn, Column, RaggedColumn, StrColumn, _gather_index

_VARINT = 10


@dataclass
class _Target:
    name: str  # reader field name
    writer: FieldType
    reader: FieldType
    enum_map: np.ndarray | None = None  # writer code -> reader code; last entry maps -1


def _enum_map(w: FieldType, r: FieldType) -> np.ndarray:
    where = {s: i for i, s in enumerate(r.symbols)}
    fallback = where.get(r.enum_default, -1) if r.enum_default is not None else -1
    return np.array([where.get(s, fallback) for s in w.symbols] + [-1], np.int32)


def _width(ft: FieldType) -> int:
    """Upper bound of bytes a read of ``ft`` can move a corrupt row's cursor past its end."""
    base = FIXED_SIZE.get(ft.kind, 3 * _VARINT if ft.kind == "array" else _VARINT)
    return base + (_VARINT if ft.nullable else 0)


def _default_column(ft: FieldType, default: Any, n: int) -> tuple[Column, np.ndarray | None]:
    if ft.nullable:
        if default is None:
            return null_column(ft, n), np.ones(n, bool)
        col, _ = _default_column(ft.base, default, n)
        return col, np.zeros(n, bool)
    if ft.kind in ("string", "bytes"):
        data = default.encode("utf-8") if ft.kind == "string" else default.encode("latin-1")
        cls = StrColumn if ft.kind == "string" else BytesColumn
        return cls(np.frombuffer(data, np.uint8), np.zeros(n, np.int64), np.full(n, len(data), np.int64)), None
    if ft.kind == "enum":
        return np.full(n, ft.symbols.index(default), np.int32), None
    if ft.kind == "array":
        values = np.tile(np.asarray(default, DTYPE[str(ft.items)]), n)
        return RaggedColumn(values, np.arange(n + 1, dtype=np.int64) * len(default)), None
    return np.full(n, default, DTYPE[ft.kind]), None


def _convert(cur: Cursor, t: _Target, col: Column, mask: np.ndarray | None) -> tuple[Column, np.ndarray | None]:
    w, r = t.writer, t.reader
    if w.nullable and not r.nullable:
        if mask is not None and mask.any():
            cur.flag(mask, RESOLUTION)
        mask = None
    elif r.nullable and mask is None:
        mask = np.zeros(len(cur), bool)
    if t.enum_map is not None and isinstance(col, np.ndarray):
        col = t.enum_map[col]
        missing = col < 0 if mask is None else (col < 0) & ~mask
        if missing.any():
            cur.flag(missing, RESOLUTION)
    elif isinstance(col, StrColumn) and w.kind != r.kind:
        col = (StrColumn if r.kind == "string" else BytesColumn)(col.buf, col.start, col.length)
    elif isinstance(col, RaggedColumn) and w.items != r.items:
        col = RaggedColumn(col.values.astype(DTYPE[str(r.items)]), col.offsets)
    elif isinstance(col, np.ndarray) and w.kind != r.kind:
        col = col.astype(DTYPE[r.kind])
        if mask is not None and col.dtype.kind == "f":
            col[mask] = np.nan
    return col, mask


class Program:
    """Decode rows written with ``writer`` into columns of ``reader``."""

    def __init__(self, writer: list[Field], reader: list[Field]) -> None:
        by_name: dict[str, Field] = {}
        for f in reader:
            by_name.setdefault(f.name, f)
            for alias in f.aliases:
                by_name.setdefault(alias, f)
        self.reader_names = [f.name for f in reader]
        self.steps: list[tuple[FieldType, _Target | None]] = []
        seen: set[str] = set()
        for wf in writer:
            rf = by_name.get(wf.name)
            assert wf.type is not None
            if rf is None:
                self.steps.append((wf.type, None))
                continue
            assert rf.type is not None
            if not can_promote(wf.type.base, rf.type.base):
                raise ResolutionError(f"field {rf.name!r}: writer type cannot be read as the reader type")
            emap = _enum_map(wf.type, rf.type) if rf.type.kind == "enum" else None
            self.steps.append((wf.type, _Target(rf.name, wf.type, rf.type, emap)))
            seen.add(rf.name)
        self.defaults: list[Field] = []
        for f in reader:
            if f.name not in seen:
                if f.default is NO_DEFAULT:
                    raise ResolutionError(f"reader field {f.name!r} is missing from the writer and has no default")
                self.defaults.append(f)
        self.strings = [f.name for f in reader if f.type is not None and f.type.kind == "string"]
        self.pad = sum(_width(ft) for ft, _ in self.steps) + 2 * _VARINT

    def _run_fixed(self, cur: Cursor, run: list[tuple[FieldType, _Target | None]], out: dict[str, Column], nulls: dict[str, np.ndarray]) -> None:
        offsets = np.cumsum([0] + [FIXED_SIZE[ft.kind] for ft, _ in run])
        by_kind: dict[str, list[int]] = {}
        for i, (ft, t) in enumerate(run):
            if t is not None:
                by_kind.setdefault(ft.kind, []).append(i)
        for kind, idx in by_kind.items():
            if kind == "double" and len(idx) > 1 and idx == list(range(idx[0], idx[0] + len(idx))):
                # adjacent doubles: one (n, k) gather of consecutive words
                first = int(offsets[idx[0]])
                cols = cur.buf.words_t(cur.pos + first, len(idx)).view(np.float64)
            else:
                cols = np.stack([gather_fixed(cur.buf, cur.pos + int(offsets[i]), kind) for i in idx])
            for j, i in enumerate(idx):
                t = run[i][1]
                assert t is not None
                out[t.name], mask = _convert(cur, t, cols[j], None)
                if mask is not None:
                    nulls[t.name] = mask
        cur.pos += int(offsets[-1])

    def run(self, buf: Buffer, pos: np.ndarray, end: np.ndarray) -> tuple[dict[str, Column], dict[str, np.ndarray], np.ndarray]:
        """Columns (all rows, reader order), null masks and per-row error codes."""
        n = pos.shape[0]
        cur = Cursor(buf, pos.copy(), end, np.zeros(n, np.int8))
        out: dict[str, Column] = {}
        nulls: dict[str, np.ndarray] = {}
        i = 0
        while i < len(self.steps):
            j = i
            while j < len(self.steps) and self.steps[j][0].kind in FIXED_SIZE and not self.steps[j][0].nullable:
                j += 1
            if j > i:
                self._run_fixed(cur, self.steps[i:j], out, nulls)
                i = j
                continue
            ft, t = self.steps[i]
            col, mask = read_field(cur, ft)
            if t is not None:
                out[t.name], mask = _convert(cur, t, col, mask)
                if mask is not None:
                    nulls[t.name] = mask
            i += 1
        for f in self.defaults:
            assert f.type is not None
            out[f.name], mask = _default_column(f.type, f.default, n)
            if mask is not None:
                nulls[f.name] = mask
        self._check_utf8(cur, [out[s] for s in self.strings])
        cur.flag(cur.pos > end, TRUNCATED)
        cur.flag(cur.pos < end, TRAILING)
        return {name: out[name] for name in self.reader_names}, nulls, cur.code

    @staticmethod
    def _check_utf8(cur: Cursor, cols: list[Column]) -> None:
        strs = [c for c in cols if isinstance(c, StrColumn) and c.buf is cur.buf.u8]
        if not strs:
            return
        n = len(cur)
        start = np.concatenate([c.start for c in strs])
        length = np.concatenate([c.length for c in strs])
        length = np.where(np.tile(cur.code, len(strs)) == OK, np.maximum(length, 0), 0)
        suspects = np.flatnonzero(_non_ascii(cur.buf, start, length))
        if not suspects.size:
            return
        raw = cur.buf.u8.data.cast("B")
        bad = np.zeros(n, bool)
        for seg in suspects.tolist():
            s, ln = int(start[seg]), int(length[seg])
            try:
                bytes(raw[s : s + ln]).decode("utf-8")
            except UnicodeDecodeError:
                bad[seg % n] = True
        cur.flag(bad, BAD_UTF8)


_HI8 = np.uint64(0x8080808080808080)
_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)
_SHORT = 32  # strings up to this many bytes are scanned 8 bytes at a time


def _non_ascii(buf: Buffer, start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Per segment: does it contain a byte >= 0x80 (and so need a real utf-8 check)?"""
    fast = non_ascii(buf.u8, start, length)
    if fast is not None:
        return fast
    out = np.zeros(start.shape[0], bool)
    short = length <= _SHORT
    rows = np.flatnonzero(short)
    if rows.size:
        lens = length[rows]
        k = max(1, (int(lens.max()) + 7) // 8)
        words = buf.words_t(start[rows], k)  # (k, n); reads stay within the padding
        valid = np.clip(lens - 8 * np.arange(k)[:, None], 0, 8).astype(np.uint64)
        mask = _ALL >> ((np.uint64(8) - valid) << np.uint64(3))  # low ``valid`` bytes; >> 64 gives 0
        out[rows] = ((words & mask & _HI8) != 0).any(axis=0)
    rows = np.flatnonzero(~short)
    if rows.size:
        hi = np.flatnonzero(buf.u8[_gather_index(start[rows], length[rows])] >= 0x80)
        out[rows[np.unique(np.searchsorted(np.cumsum(length[rows]), hi, side="right"))]] = True
    return out
