"""Vectorised Avro encoding of columns into wire-framed values.

Each field is first sized for every row (varint widths, string lengths), the rows are
laid out in one uint8 buffer, every field is written for all rows at once, and the
buffer is cut into one ``bytes`` per row. Invariant: ``_Piece.write`` writes exactly
``_Piece.size`` bytes per row, so row boundaries computed up front stay right.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import fastavro
import numpy as np

from schemas.codec.types import DTYPE, FIXED_SIZE, Field, FieldType, compilable, record_fields, strip_logical
from schemas.codec.vec import uvarint_size, write_uvarint, zigzag_encode
from schemas.codec.native import copy_rows, copy_segments
from schemas.columns import RaggedColumn, StrColumn
from schemas.errors import SchemaError
from schemas.registry import parse_schema
from schemas.wire import frame

ColumnLike = Any  # np.ndarray | StrColumn | RaggedColumn | Sequence


@dataclass
class _Piece:
    size: np.ndarray  # bytes per row
    write: Callable[[np.ndarray, np.ndarray], None]  # (out, pos) -> None


def _null_mask(col: ColumnLike, ft: FieldType, n: int, nan_is_null: bool) -> np.ndarray:
    """Null rows: None, NaN (unless an explicit mask is given), a -1 string length or
    (for enums) a -1 code."""
    if isinstance(col, StrColumn):
        return col.length < 0
    if isinstance(col, RaggedColumn):
        return np.zeros(n, bool)
    arr = np.asarray(col) if not isinstance(col, list) else None
    if arr is not None and arr.dtype.kind == "f":
        return np.isnan(arr) if nan_is_null else np.zeros(n, bool)
    if arr is not None and arr.dtype.kind in "iu" and ft.kind == "enum":
        return arr < 0
    if arr is not None and arr.dtype.kind in "biu":
        return np.zeros(n, bool)
    return np.fromiter((v is None or (nan_is_null and isinstance(v, float) and v != v) for v in col), bool, n)


def _subset(col: ColumnLike, rows: np.ndarray) -> ColumnLike:
    if isinstance(col, (StrColumn, RaggedColumn)):
        return col.take(rows)
    if isinstance(col, np.ndarray):
        return col[rows]
    return [col[i] for i in rows.tolist()]


def _varint_piece(u: np.ndarray) -> _Piece:
    size = uvarint_size(u)

    def write(out: np.ndarray, pos: np.ndarray) -> None:
        write_uvarint(out, pos, u, size)

    return _Piece(size, write)


def _segments(col: ColumnLike, kind: str, n: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(source bytes, start or None when the rows lie end to end in source, length)."""
    if isinstance(col, StrColumn):
        return col.buf, col.start, np.maximum(col.length, 0)
    items = col.tolist() if isinstance(col, np.ndarray) else list(col)
    try:
        if kind != "string":
            raise TypeError
        joined = "".join(items).encode("utf-8")  # TypeError unless every item is a str
        length = np.fromiter(map(len, items), np.int64, n)
        if len(joined) != int(length.sum()):  # non-ASCII: byte lengths differ from char counts
            enc = [s.encode("utf-8") for s in items]
            joined, length = b"".join(enc), np.fromiter(map(len, enc), np.int64, n)
    except TypeError:
        enc = [b"" if s is None else s.encode("utf-8") if isinstance(s, str) else bytes(s) for s in items]
        joined, length = b"".join(enc), np.fromiter(map(len, enc), np.int64, n)
    return np.frombuffer(joined, np.uint8), None, length


def _string_piece(col: ColumnLike, kind: str, n: int) -> _Piece:
    src, start, length = _segments(col, kind, n)
    head = _varint_piece(zigzag_encode(length))

    def write(out: np.ndarray, pos: np.ndarray) -> None:
        head.write(out, pos)
        copy_segments(out, pos + head.size, src, start, length)

    return _Piece(head.size + length, write)


def _fixed_bytes(col: ColumnLike, kind: str, n: int) -> np.ndarray:
    """(n, size) little-endian bytes of a double/float/boolean column."""
    if kind == "boolean":
        return np.asarray(col, bool).astype(np.uint8).reshape(n, 1)
    dtype = "<f8" if kind == "double" else "<f4"
    return np.ascontiguousarray(np.asarray(col, dtype=float), dtype).view(np.uint8).reshape(n, FIXED_SIZE[kind])


def _fixed_run(blocks: list[np.ndarray], n: int) -> _Piece:
    """Consecutive fixed-size fields as one (n, total width) block: one scatter instead of one per field."""
    data = blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=1)
    return _Piece(np.full(n, data.shape[1], np.int64), lambda out, pos: copy_rows(out, pos, data))


def _enum_codes(col: ColumnLike, ft: FieldType, name: str, n: int) -> np.ndarray:
    arr = col if isinstance(col, np.ndarray) else np.asarray(col, object)
    if arr.dtype.kind in "iu":
        codes = arr.astype(np.int64)
    else:
        where = {s: i for i, s in enumerate(ft.symbols)}
        try:
            codes = np.fromiter((where[s] for s in arr.tolist()), np.int64, n)
        except KeyError as exc:
            raise SchemaError(f"field {name!r}: {exc.args[0]!r} is not one of {list(ft.symbols)}") from exc
    if codes.size and (codes.min() < 0 or codes.max() >= len(ft.symbols)):
        raise SchemaError(f"field {name!r}: enum code out of range 0..{len(ft.symbols) - 1}")
    return codes


def _ragged(col: ColumnLike, items: str, n: int) -> RaggedColumn:
    if isinstance(col, RaggedColumn):
        return col
    arr = col if isinstance(col, np.ndarray) and col.dtype != object else None
    if arr is not None and arr.ndim == 2:
        return RaggedColumn(arr.reshape(-1), np.arange(n + 1, dtype=np.int64) * arr.shape[1])
    rows = [[] if r is None else list(r) for r in col]
    counts = np.fromiter(map(len, rows), np.int64, n)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    return RaggedColumn(np.array([x for r in rows for x in r], DTYPE[items]), offsets)


def _array_piece(col: ColumnLike, items: str, n: int) -> _Piece:
    """One block per non-empty row (count, items) and the 0 terminator."""
    rag = _ragged(col, items, n)
    counts = rag.counts
    first = rag.offsets[:-1] - rag.offsets[0]  # row starts within ``values``
    values = rag.values[rag.offsets[0] : rag.offsets[-1]]
    head_u = zigzag_encode(counts)
    head = np.where(counts > 0, uvarint_size(head_u), 0)
    has = np.flatnonzero(counts > 0)
    if items in FIXED_SIZE:
        data = _fixed_bytes(values, items, values.shape[0]).reshape(-1)
        body = counts * FIXED_SIZE[items]

        def write_items(out: np.ndarray, p: np.ndarray) -> None:
            copy_segments(out, p, data, None, body)

    else:
        u = zigzag_encode(np.asarray(values, np.int64))
        isz = uvarint_size(u)
        cs = np.zeros(u.shape[0] + 1, np.int64)
        np.cumsum(isz, out=cs[1:])
        body = cs[first + counts] - cs[first]
        within = cs[:-1] - np.repeat(cs[first], counts)

        def write_items(out: np.ndarray, p: np.ndarray) -> None:
            write_uvarint(out, np.repeat(p, counts) + within, u, isz)

    def write(out: np.ndarray, pos: np.ndarray) -> None:
        if has.size:
            write_uvarint(out, pos[has], head_u[has], head[has])
        write_items(out, pos + head)
        out[pos + head + body] = 0

    return _Piece(head + body + 1, write)


def _value_piece(f: Field, ft: FieldType, col: ColumnLike, n: int) -> _Piece:
    kind = ft.kind
    if kind in ("long", "int"):
        v = np.asarray(col, np.int64)
        if kind == "int" and v.size and (v.min() < -(2**31) or v.max() > 2**31 - 1):
            raise SchemaError(f"field {f.name!r}: value outside the 32-bit int range")
        return _varint_piece(zigzag_encode(v))
    if kind in FIXED_SIZE:
        return _fixed_run([_fixed_bytes(col, kind, n)], n)
    if kind in ("string", "bytes"):
        return _string_piece(col, kind, n)
    if kind == "enum":
        return _varint_piece(zigzag_encode(_enum_codes(col, ft, f.name, n)))
    return _array_piece(col, str(ft.items), n)


def _nullable_piece(f: Field, ft: FieldType, col: ColumnLike, n: int, given: np.ndarray | None) -> _Piece:
    null = _null_mask(col, ft, n, nan_is_null=given is None)
    if given is not None:
        null = null | np.asarray(given, bool)
    rows = np.flatnonzero(~null)
    inner = _value_piece(f, ft.base, _subset(col, rows), rows.shape[0])
    size = np.ones(n, np.int64)
    size[rows] += inner.size
    branch = np.where(null, 2 * ft.null_index, 2 * (1 - ft.null_index)).astype(np.uint8)

    def write(out: np.ndarray, pos: np.ndarray) -> None:
        out[pos] = branch
        inner.write(out, pos[rows] + 1)

    return _Piece(size, write)


class BatchEncoder:
    """Encode columns into wire-framed Avro values of one schema."""

    def __init__(self, schema: dict[str, Any], schema_id: int) -> None:
        self.schema = strip_logical(parse_schema(schema))
        self.fields = record_fields(self.schema)
        self.header = np.frombuffer(frame(schema_id, b""), np.uint8)
        self.compiled = compilable(self.fields)
        self._parsed = fastavro.parse_schema(self.schema)

    def enum_code(self, field: str, symbol: str) -> int:
        """The code of ``symbol`` in enum field ``field`` (enum columns may be given as codes)."""
        for f in self.fields:
            if f.name == field and f.type is not None and f.type.kind == "enum":
                try:
                    return list(f.type.symbols).index(symbol)
                except ValueError:
                    raise SchemaError(f"field {field!r}: {symbol!r} is not one of {list(f.type.symbols)}") from None
        raise SchemaError(f"no enum field {field!r}")

    def _column(self, columns: Mapping[str, ColumnLike], name: str, n: int) -> ColumnLike:
        try:
            col = columns[name]
        except KeyError as exc:
            raise SchemaError(f"no column for field {name!r}") from exc
        if len(col) != n:
            raise SchemaError(f"column {name!r} has {len(col)} rows, expected {n}")
        return col

    def encode(
        self, columns: Mapping[str, ColumnLike], n: int, *, nulls: Mapping[str, np.ndarray] | None = None
    ) -> list[bytes]:
        """One wire-framed value per row; raises SchemaError for values the schema rejects.

        Null rows of a nullable field: None, enum code -1, string length -1, and NaN in
        float columns; when ``nulls`` (e.g. ``DecodedBatch.nulls``) has a mask for the
        field, that mask replaces the NaN rule, so a real NaN value round-trips.
        """
        nulls = nulls or {}
        if not self.compiled:
            return self._encode_records(columns, n, nulls)
        out, starts, lengths = self.encode_buffer(columns, n, nulls=nulls)
        data = out.tobytes()
        return [data[s:s + k] for s, k in zip(starts.tolist(), lengths.tolist())]

    def encode_buffer(
        self, columns: Mapping[str, ColumnLike], n: int, *, nulls: Mapping[str, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The same values end to end in one uint8 array, with each value's start and length.

        This is what a batch producer wants: no Python object per value.
        """
        nulls = nulls or {}
        if not self.compiled:
            values = self._encode_records(columns, n, nulls)
            lengths = np.fromiter(map(len, values), np.int64, n)
            starts = np.cumsum(lengths) - lengths
            return np.frombuffer(b"".join(values), np.uint8), starts, lengths
        out, starts, sizes, _ = self._encode_buffer(columns, n, nulls, None)
        return out, starts, sizes

    def encode_buffer_marked(
        self, columns: Mapping[str, ColumnLike], n: int, field: str
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``encode_buffer`` plus where ``field``'s encoding starts in each row (compiled schemas only).

        Lets a caller rewrite a fixed-width value in place (the load generator's send time).
        """
        if not self.compiled:
            raise SchemaError("field positions need a compiled schema")
        if all(f.name != field for f in self.fields):
            raise SchemaError(f"no field {field!r}")
        out, starts, sizes, marks = self._encode_buffer(columns, n, {}, field)
        assert marks is not None
        return out, starts, sizes, marks

    def _encode_buffer(
        self, columns: Mapping[str, ColumnLike], n: int, nulls: Mapping[str, np.ndarray], mark: str | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        pieces: list[_Piece] = []
        names: list[str] = []
        fixed: list[tuple[str, np.ndarray]] = []   # a run of non-nullable fixed-size fields: written as one block

        def end_run() -> None:
            if fixed:
                pieces.append(_fixed_run([d for _, d in fixed], n))
                names.append(fixed[0][0])
                fixed.clear()

        for f in self.fields:
            ft = f.type
            assert ft is not None
            col = self._column(columns, f.name, n)
            if not ft.nullable and ft.kind in FIXED_SIZE and f.name != mark:
                fixed.append((f.name, _fixed_bytes(col, ft.kind, n)))
                continue
            end_run()
            names.append(f.name)
            if ft.nullable:
                pieces.append(_nullable_piece(f, ft, col, n, nulls.get(f.name)))
            else:
                pieces.append(_value_piece(f, ft, col, n))
        end_run()
        row_size = np.full(n, self.header.shape[0], np.int64)
        for p in pieces:
            row_size += p.size
        ends = np.cumsum(row_size)
        starts = ends - row_size
        out = np.zeros(int(ends[-1]) if n else 0, np.uint8)
        copy_rows(out, starts, self.header)
        pos = starts + self.header.shape[0]
        marks = None
        for name, p in zip(names, pieces):
            if name == mark:
                marks = pos
            p.write(out, pos)
            pos = pos + p.size
        return out, starts, row_size, marks

    def _encode_records(self, columns: Mapping[str, ColumnLike], n: int, nulls: Mapping[str, np.ndarray]) -> list[bytes]:
        lists = {f.name: _python_values(f, self._column(columns, f.name, n), nulls.get(f.name)) for f in self.fields}
        names = list(lists)
        out = []
        for row in zip(*(lists[k] for k in names)) if names else [() for _ in range(n)]:
            fo = io.BytesIO()
            try:
                fastavro.schemaless_writer(fo, self._parsed, dict(zip(names, row)))
            except Exception as exc:
                raise SchemaError(f"cannot encode record: {exc}") from exc
            out.append(bytes(self.header) + fo.getvalue())
        return out


def _python_values(f: Field, col: ColumnLike, null: np.ndarray | None) -> list[Any]:
    ft = f.type
    if isinstance(col, (StrColumn, RaggedColumn)):
        values = col.to_list()
    elif isinstance(col, np.ndarray):
        values = [list(r) for r in col.tolist()] if col.ndim == 2 else col.tolist()
    else:
        values = list(col)
    if ft is not None and ft.kind == "enum":
        values = [(ft.symbols[v] if v >= 0 else None) if isinstance(v, int) else v for v in values]
    if ft is not None and ft.nullable:
        if null is not None:  # an explicit mask wins: NaN stays a value
            values = [None if m else v for v, m in zip(values, np.asarray(null, bool).tolist())]
        else:
            values = [None if (v is None or (isinstance(v, float) and v != v)) else v for v in values]
    return values
