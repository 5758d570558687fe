"""Decoders for the rows of one writer schema id, all with the same result shape.

``decode`` returns (columns of the good rows, null masks, local indices of the good
rows, [(local index, reason, message)]) so the batch decoder can treat the vectorised,
per-record and failed cases alike.
"""

from __future__ import annotations

import io
from typing import Any, Protocol

import fastavro
import numpy as np
from fastavro.read import SchemaResolutionError

from schemas.codec.cursor import MESSAGES, OK, RESOLUTION
from schemas.codec.flatten import flatten_record
from schemas.codec.program import Program
from schemas.codec.pycolumns import records_to_columns
from schemas.codec.types import Field
from schemas.codec.vec import Buffer
from schemas.columns import Column, take

GroupResult = tuple[dict[str, Column], dict[str, np.ndarray], np.ndarray, list[tuple[int, str, str]]]


class Rows:
    """The rows of one group: cursors into the shared buffer plus lazy body bytes."""

    def __init__(self, buf: Buffer, data: bytes, pos: np.ndarray, end: np.ndarray) -> None:
        self.buf, self.data, self.pos, self.end = buf, data, pos, end

    def bodies(self) -> list[bytes]:
        return [self.data[s:e] for s, e in zip(self.pos.tolist(), self.end.tolist())]


class GroupDecoder(Protocol):
    pad: int

    def decode(self, rows: Rows) -> GroupResult: ...


class CompiledGroup:
    """The vectorised path."""

    def __init__(self, program: Program) -> None:
        self.program = program
        self.pad = program.pad

    def decode(self, rows: Rows) -> GroupResult:
        cols, nulls, code = self.program.run(rows.buf, rows.pos, rows.end)
        bad = np.flatnonzero(code != OK)
        if not bad.size:
            return cols, nulls, np.arange(code.shape[0]), []
        good = np.flatnonzero(code == OK)
        cols = {k: take(c, good) for k, c in cols.items()}
        nulls = {k: m[good] for k, m in nulls.items()}
        errors = [
            (i, "schema_resolution" if c == RESOLUTION else "decode", MESSAGES[c]) for i, c in zip(bad.tolist(), code[bad].tolist())
        ]
        return cols, nulls, good, errors


class FallbackGroup:
    """The per-record path: fastavro into dicts, then the same columns."""

    pad = 0

    def __init__(self, writer: dict[str, Any], reader: dict[str, Any] | None, fields: list[Field],
                 inlined: set[str] | None = None) -> None:
        self.writer = fastavro.parse_schema(writer)
        self.reader = None if reader is None else fastavro.parse_schema(reader)
        self.fields = fields
        self.inlined = inlined or set()     # nested records the reader's fields are flattened from

    def decode(self, rows: Rows) -> GroupResult:
        records: list[Any] = []
        errors: list[tuple[int, str, str]] = []
        for i, body in enumerate(rows.bodies()):
            fo = io.BytesIO(body)
            try:
                rec = fastavro.schemaless_reader(fo, self.writer, self.reader)
            except SchemaResolutionError as exc:
                errors.append((i, "schema_resolution", str(exc)))
                rec = None
            except Exception as exc:  # any failure of fastavro on corrupt bytes is this row's error
                errors.append((i, "decode", f"{type(exc).__name__}: {exc}"))
                rec = None
            else:
                if fo.tell() != len(body):
                    errors.append((i, "decode", MESSAGES[2]))
                    rec = None
            records.append(rec)
        failed = {i for i, _, _ in errors}
        keep = [i for i in range(len(records)) if i not in failed]
        cols, nulls, good, bad = records_to_columns([flatten_record(records[i], self.inlined) for i in keep],
                                                    self.fields)
        errors += [(keep[j], "decode", msg) for j, msg in bad.items()]
        errors.sort()
        return cols, nulls, np.array(keep, np.int64)[good], errors


class FailedGroup:
    """Every row fails with the same reason (incompatible writer schema)."""

    pad = 0

    def __init__(self, reason: str, message: str) -> None:
        self.reason, self.message = reason, message

    def decode(self, rows: Rows) -> GroupResult:
        n = rows.pos.shape[0]
        return {}, {}, np.empty(0, np.int64), [(i, self.reason, self.message) for i in range(n)]
