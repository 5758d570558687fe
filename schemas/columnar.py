"""Batch Avro codec: wire-format values straight to numpy columns and back.

The decoder works across records, field by field (see ``_program``), so a 1,000-row
batch costs a few hundred numpy calls instead of 1,000 dicts. Schemas it cannot
compile go through fastavro per record and end in the very same columns.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable, Literal, Protocol, Sequence

import numpy as np

from schemas.codec.encode import BatchEncoder
from schemas.codec.flatten import decimal_column, flat_fields, flatten_record, logical_fields
from schemas.codec.groups import CompiledGroup, FailedGroup, FallbackGroup, GroupDecoder, Rows
from schemas.codec.program import Program
from schemas.codec.decode import ResolutionError
from schemas.codec.pycolumns import records_to_columns
from schemas.codec.types import Field, compilable, strip_logical
from schemas.codec.validate import Rules
from schemas.codec.vec import PAD, Buffer, uvarint_size, write_uvarint, zigzag_encode
from schemas.columns import BytesColumn, Column, DecodedBatch, RaggedColumn, StrColumn, concat, take
from schemas.errors import DecodeError, RecordValidationError, SchemaError, UnknownSchemaError, WireFormatError
from schemas.registry import parse_schema
from schemas.wire import HEADER_SIZE, frame, header_error

__all__ = [
    "BatchDecoder",
    "BatchEncoder",
    "BytesColumn",
    "DecodedBatch",
    "RaggedColumn",
    "StrColumn",
    "decimal_paths",
    "leaf_types",
    "long_bytes",
]

Engine = Literal["auto", "numpy", "fastavro"]
log = logging.getLogger(__name__)


def _not_framed(value: bytes | None) -> WireFormatError:
    """Why a value the vectorised header check rejected is not wire format (wire.py's wording)."""
    err = header_error(value)
    assert err is not None, "the header check and wire.header_error disagree"
    return err


class SchemaSource(Protocol):
    """Writer schemas by id: the in-process ``SchemaRegistry`` or a ``RegistryClient``."""

    def by_id(self, schema_id: int) -> dict[str, Any]: ...
    def find(self, schema: dict[str, Any]) -> int | None: ...


def leaf_types(schema: dict[str, Any]) -> dict[str, Any]:
    """The Avro type (logical annotations kept) of each column the decoder makes, by dotted path."""
    fields, _ = flat_fields(parse_schema(schema))
    return {f.name: f.raw_type for f in fields}


def decimal_paths(schema: dict[str, Any]) -> list[str]:
    """The dotted paths of decimal fields (their columns are float64)."""
    return sorted(logical_fields(parse_schema(schema)))


def long_bytes(v: int) -> np.ndarray:
    """The Avro encoding (zig-zag varint) of one long, as uint8, written by the encoder's routines."""
    u = zigzag_encode(np.array([v], np.int64))
    size = uvarint_size(u)
    out = np.zeros(int(size[0]), np.uint8)
    write_uvarint(out, np.zeros(1, np.int64), u, size)
    return out


_PLACEHOLDERS: dict[str, Any] = {"null": None, "boolean": False, "int": 1, "long": 1, "float": 1.0, "double": 1.0,
                                 "bytes": b"\x00", "string": "warm-up"}


def placeholder(t: Any, named: dict[str, Any] | None = None) -> Any:
    """One valid value of Avro type ``t`` (a parsed schema, logical types stripped): the first
    non-null branch of a union, the first enum symbol, empty arrays and maps, ones for numbers."""
    named = {} if named is None else named
    if isinstance(t, list):
        return placeholder(next((b for b in t if b != "null"), "null"), named)
    if isinstance(t, str):
        return placeholder(named[t], named) if t in named else _PLACEHOLDERS[t]
    kind = t["type"]
    if "name" in t:
        named[t["name"]] = t
    if kind == "record":
        return {f["name"]: placeholder(f["type"], named) for f in t["fields"]}
    if kind == "enum":
        return t["symbols"][0]
    if kind == "fixed":
        return bytes(t["size"])
    if kind in ("array", "map"):
        return [] if kind == "array" else {}
    return placeholder(kind, named)


def _join(values: Sequence[bytes | None], pad: int) -> tuple[bytes, np.ndarray]:
    """All values end to end (None as empty) plus ``pad`` zero bytes, and their lengths."""
    n = len(values)
    try:
        lengths = np.fromiter(map(len, values), np.int64, n)  # type: ignore[arg-type]
        data = b"".join([*values, bytes(pad)])  # type: ignore[list-item]
    except TypeError:
        clean = [b"" if v is None else v for v in values]
        lengths = np.fromiter(map(len, clean), np.int64, n)
        data = b"".join([*clean, bytes(pad)])
    return data, lengths


class BatchDecoder:
    """Decode micro-batches of wire-format Avro (or JSON) values into reader columns.

    Columns are named by dotted path (nested records inlined, see ``codec.flatten``);
    decimals decode to float64, other logical types to their Avro base type.
    ``registry.by_id`` may block (a registry outage); it is called once per writer id.
    """

    def __init__(
        self,
        reader_schema: dict[str, Any],
        registry: SchemaSource,
        *,
        fmt: Literal["avro", "json"] = "avro",
        validate: dict[str, Any] | None = None,
        engine: Engine = "auto",
        on_fallback: Callable[[int], None] | None = None,
    ) -> None:
        if fmt not in ("avro", "json"):
            raise SchemaError(f"fmt must be 'avro' or 'json', not {fmt!r}")
        parsed = parse_schema(reader_schema)
        self.decimals = logical_fields(parsed)
        self.reader = strip_logical(parsed)
        self.fields: list[Field]
        self.fields, self._inlined = flat_fields(self.reader)
        self.on_fallback = on_fallback
        self.registry = registry
        self.fmt = fmt
        self.engine = engine
        if engine == "numpy" and not compilable(self.fields):
            raise SchemaError("reader schema has types the vectorised decoder cannot compile")
        self.rules = Rules(validate, self.fields, tuple(self.decimals))
        self.symbols = {f.name: f.type.symbols for f in self.fields if f.type is not None and f.type.kind == "enum"}
        self._groups: dict[int, GroupDecoder] = {}
        self._json_id = registry.find(reader_schema) if fmt == "json" else None

    def _group(self, schema_id: int) -> GroupDecoder:
        group = self._groups.get(schema_id)
        if group is None:
            group = self._compile(schema_id)
            self._groups[schema_id] = group
        return group

    def _compile(self, schema_id: int) -> GroupDecoder:
        writer = strip_logical(self.registry.by_id(schema_id))
        writer_fields, _ = flat_fields(writer)
        vectorised = self.engine != "fastavro" and compilable(writer_fields) and compilable(self.fields)
        if vectorised:
            try:
                return CompiledGroup(Program(writer_fields, self.fields))
            except ResolutionError as exc:
                return FailedGroup("schema_resolution", f"writer schema {schema_id}: {exc}")
        if self.engine != "fastavro":
            odd = [f.name for f in [*writer_fields, *self.fields] if f.type is None]
            log.warning("schema id %d: decoded per record (fastavro): the columnar decoder cannot compile %s",
                        schema_id, sorted(set(odd)))
            if self.on_fallback is not None:
                self.on_fallback(schema_id)
        same = writer == self.reader
        return FallbackGroup(writer, None if same else self.reader, self.fields, self._inlined)

    def samples(self, n: int) -> list[bytes] | None:
        """``n`` values of one placeholder record of the reader schema, in this decoder's input
        format (Avro framed with the reader schema's id), for warming the decode path up; None
        when the reader schema has no id in ``registry`` (nothing framed would resolve)."""
        import io

        import fastavro

        record = placeholder(self.reader)
        if self.fmt == "json":
            value = json.dumps(record, default=lambda b: b.decode("latin-1")).encode()
        else:
            schema_id = self.registry.find(self.reader)
            if schema_id is None:
                return None
            out = io.BytesIO()
            fastavro.schemaless_writer(out, parse_schema(self.reader), record)
            value = frame(schema_id, out.getvalue())
        return [value] * n

    def decode(self, values: Sequence[bytes | None]) -> DecodedBatch:
        """Decode ``values``; a bad value becomes an entry in ``errors``, never an exception."""
        if self.fmt == "json":
            return self._decode_json(values)
        data, lengths = _join(values, PAD)
        return self.decode_joined(data, lengths, values)

    def decode_joined(self, data: bytes, lengths: np.ndarray, values: Sequence[bytes | None]) -> DecodedBatch:
        """``decode`` of values already laid end to end in ``data`` (a null as empty, then ``PAD``
        zero bytes) with their ``lengths``; ``values[i]`` is read only for a bad record's raw bytes."""
        if self.fmt == "json":
            return self._decode_json(values)
        buf = Buffer(np.frombuffer(data, np.uint8))
        starts = np.cumsum(lengths) - lengths
        errors: list[tuple[int, DecodeError]] = []
        framed = lengths >= HEADER_SIZE
        head = np.where(framed, starts, 0)
        framed &= buf.u8[head] == 0
        ids = ((buf.words(head) >> np.uint64(8)) & np.uint64(0xFFFFFFFF)).astype(np.uint32).byteswap().astype(np.int64)
        if not framed.all():
            for i in np.flatnonzero(~framed).tolist():
                errors.append((i, _not_framed(values[i])))
        results: list[tuple[np.ndarray, dict[str, Column], dict[str, np.ndarray]]] = []
        good_rows = np.flatnonzero(framed)
        uniq = np.unique(ids[good_rows]) if good_rows.size else np.empty(0, np.int64)
        for schema_id in uniq.tolist():
            rows = good_rows if uniq.size == 1 else good_rows[ids[good_rows] == schema_id]
            try:
                group = self._group(schema_id)
            except UnknownSchemaError:
                errors += [(i, UnknownSchemaError(f"unknown schema id {schema_id}", raw=values[i])) for i in rows.tolist()]
                continue
            if group.pad > PAD:
                data = data + bytes(group.pad)
                buf = Buffer(np.frombuffer(data, np.uint8))
            cols, nulls, local_ok, local_errors = group.decode(Rows(buf, data, starts[rows] + HEADER_SIZE, starts[rows] + lengths[rows]))
            for j, reason, message in local_errors:
                i = int(rows[j])
                errors.append((i, DecodeError(f"schema id {schema_id}: {message}", raw=values[i], reason=reason)))
            if local_ok.size:
                results.append((rows[local_ok], cols, nulls))
        return self._finish(results, errors, ids, values)

    def _decode_json(self, values: Sequence[bytes | None]) -> DecodedBatch:
        errors: list[tuple[int, DecodeError]] = []
        parsed: list[Any] = []
        index: list[int] = []
        for i, v in enumerate(values):
            if not v:
                errors.append((i, _not_framed(v)))
                continue
            try:
                parsed.append(flatten_record(json.loads(v), self._inlined))
            except (ValueError, TypeError) as exc:
                errors.append((i, DecodeError(f"bad JSON: {exc}", raw=v)))
                continue
            index.append(i)
        cols, nulls, good, bad = records_to_columns(parsed, self.fields)
        rows = np.array(index, np.int64)
        errors += [(int(rows[j]), DecodeError(msg, raw=values[int(rows[j])])) for j, msg in bad.items()]
        results = [(rows[good], cols, nulls)] if good.size else []
        ids = np.full(len(values), -1 if self._json_id is None else self._json_id, np.int64)
        return self._finish(results, errors, ids, values)

    def _empty_columns(self) -> tuple[dict[str, Column], dict[str, np.ndarray]]:
        cols, nulls, _, _ = records_to_columns([], self.fields)
        return cols, nulls

    def _finish(
        self,
        results: list[tuple[np.ndarray, dict[str, Column], dict[str, np.ndarray]]],
        errors: list[tuple[int, DecodeError]],
        ids: np.ndarray,
        values: Sequence[bytes | None],
    ) -> DecodedBatch:
        if not results:
            ok = np.empty(0, np.int64)
            cols, nulls = self._empty_columns()
        elif len(results) == 1:
            ok, cols, nulls = results[0]
        else:
            ok = np.concatenate([r[0] for r in results])
            order = np.argsort(ok, kind="stable")
            ok = ok[order]
            cols = {k: take(concat([r[1][k] for r in results]), order) for k in results[0][1]}
            nulls = {k: np.concatenate([r[2][k] for r in results])[order] for k in results[0][2]}
        for name, dec in self.decimals.items():
            if name in cols:
                cols[name] = decimal_column(cols[name], dec.scale)
        if self.rules and ok.size:
            bad = self.rules.check(cols, nulls, ok.shape[0])
            if bad:
                for j, msg in bad.items():
                    i = int(ok[j])
                    errors.append((i, RecordValidationError(msg, raw=values[i])))
                keep = np.setdiff1d(np.arange(ok.shape[0]), np.fromiter(bad, np.int64, len(bad)))
                ok = ok[keep]
                cols = {k: take(c, keep) for k, c in cols.items()}
                nulls = {k: m[keep] for k, m in nulls.items()}
        errors.sort(key=lambda e: e[0])
        return DecodedBatch(cols, ok, errors, ids[ok], nulls, dict(self.symbols))
