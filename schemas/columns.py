"""Column containers produced by the batch decoder and accepted by the batch encoder.

Invariants:
* every column of a batch has the same number of rows;
* a ``StrColumn`` row with ``length == -1`` is null (a nullable string field);
* a ``RaggedColumn`` has ``len(offsets) == rows + 1`` and ``offsets[0] == 0``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from schemas.errors import DecodeError


def _gather_index(start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Flat byte indices of the segments [start, start+length) laid end to end."""
    length = np.maximum(length, 0)
    total = int(length.sum())
    if total == 0:
        return np.empty(0, np.int64)
    seg_begin = np.cumsum(length) - length
    return np.repeat(start - seg_begin, length) + np.arange(total, dtype=np.int64)


@dataclass
class StrColumn:
    """A utf-8 string column stored as (start, length) slices of a shared byte buffer."""

    buf: np.ndarray
    start: np.ndarray
    length: np.ndarray

    def __len__(self) -> int:
        return int(self.length.shape[0])

    def _items(self) -> list[bytes | None]:
        raw = self.buf.data.cast("B")
        return [None if n < 0 else bytes(raw[s : s + n]) for s, n in zip(self.start.tolist(), self.length.tolist())]

    def to_list(self) -> list[Any]:
        """Python strings, ``None`` for null rows."""
        return [None if b is None else b.decode("utf-8") for b in self._items()]

    def take(self, idx: np.ndarray) -> StrColumn:
        return type(self)(self.buf, self.start[idx], self.length[idx])

    def compact(self) -> StrColumn:
        """A copy whose buffer holds only this column's bytes, in row order."""
        flat = self.buf[_gather_index(self.start, self.length)]
        length = self.length.astype(np.int64, copy=True)
        start = np.cumsum(np.maximum(length, 0)) - np.maximum(length, 0)
        return type(self)(flat, start, length)

    @classmethod
    def from_bytes(cls, items: list[bytes | None]) -> StrColumn:
        try:   # no nulls: C-level loops only
            lengths = np.fromiter(map(len, items), np.int64, len(items))  # type: ignore[arg-type]
            buf = np.frombuffer(b"".join(items), np.uint8)  # type: ignore[arg-type]
        except TypeError:
            lengths = np.fromiter((-1 if b is None else len(b) for b in items), np.int64, len(items))
            buf = np.frombuffer(b"".join(b for b in items if b is not None), np.uint8)
        start = np.cumsum(np.maximum(lengths, 0)) - np.maximum(lengths, 0)
        return cls(buf, start, lengths)

    @classmethod
    def from_list(cls, items: list[str | None]) -> StrColumn:
        return cls.from_bytes([None if s is None else s.encode("utf-8") for s in items])


class BytesColumn(StrColumn):
    """Like ``StrColumn`` but for Avro ``bytes``: ``to_list`` returns ``bytes``."""

    def to_list(self) -> list[Any]:
        return self._items()


@dataclass
class RaggedColumn:
    """Variable-length numeric rows: row i is ``values[offsets[i]:offsets[i+1]]``."""

    values: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return int(self.offsets.shape[0] - 1)

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def to_list(self) -> list[list[Any]]:
        vals = self.values.tolist()
        off = self.offsets.tolist()
        return [vals[a:b] for a, b in zip(off[:-1], off[1:])]

    def to_2d(self) -> np.ndarray:
        """A (rows, width) view when every row has the same length."""
        counts = self.counts
        width = int(counts[0]) if counts.size else 0
        if counts.size and not np.all(counts == width):
            raise ValueError("rows have different lengths; no 2-D view")
        return self.values[self.offsets[0] : self.offsets[0] + width * len(self)].reshape(len(self), width)

    def take(self, idx: np.ndarray) -> RaggedColumn:
        counts = self.counts[idx]
        flat = _gather_index(self.offsets[:-1][idx], counts)
        offsets = np.zeros(counts.shape[0] + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        return RaggedColumn(self.values[flat], offsets)


Column = Union[np.ndarray, StrColumn, RaggedColumn]


def take(col: Column, idx: np.ndarray) -> Column:
    """Rows ``idx`` of any column kind."""
    if isinstance(col, np.ndarray):
        return col[idx]
    return col.take(idx)


def concat(cols: list[Column]) -> Column:
    """Rows of ``cols`` one after another; all must be the same kind."""
    first = cols[0]
    if len(cols) == 1:
        return first
    if isinstance(first, StrColumn):
        strs: list[StrColumn] = [c for c in cols if isinstance(c, StrColumn)]
        if any(c.buf is not first.buf for c in strs):
            strs = [c.compact() for c in strs]
            bases = np.cumsum([0] + [c.buf.shape[0] for c in strs[:-1]])
            buf = np.concatenate([c.buf for c in strs])
            start = np.concatenate([c.start + b for c, b in zip(strs, bases)])
        else:
            buf, start = first.buf, np.concatenate([c.start for c in strs])
        return type(first)(buf, start, np.concatenate([c.length for c in strs]))
    if isinstance(first, RaggedColumn):
        rag: list[RaggedColumn] = [c for c in cols if isinstance(c, RaggedColumn)]
        rag = [c if c.offsets[0] == 0 else c.take(np.arange(len(c))) for c in rag]
        counts = np.concatenate([c.counts for c in rag])
        offsets = np.zeros(counts.shape[0] + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        values = np.concatenate([c.values[: c.offsets[-1]] for c in rag])
        return RaggedColumn(values, offsets)
    return np.concatenate(cols)  # type: ignore[arg-type]


@dataclass
class DecodedBatch:
    """The decoded rows of one micro-batch, column by column.

    ``columns`` hold only the rows that decoded; ``ok_index[i]`` is the input position of
    row i and is strictly increasing. ``errors`` holds every other input position.
    ``nulls`` has a boolean mask (True = null) for each nullable field, and ``symbols``
    the symbols of each enum field (its column holds int32 codes).
    """

    columns: dict[str, Column]
    ok_index: np.ndarray
    errors: list[tuple[int, DecodeError]]
    schema_ids: np.ndarray
    nulls: dict[str, np.ndarray] = field(default_factory=dict)
    symbols: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.ok_index.shape[0])

    def to_records(self) -> list[dict[str, Any]]:
        """The decoded rows as plain dicts (slow; for tests, debugging and DLQ tools)."""
        lists: dict[str, list[Any]] = {}
        for name, col in self.columns.items():
            if name in self.symbols:
                syms = self.symbols[name]
                values: list[Any] = [syms[c] if c >= 0 else None for c in np.asarray(col).tolist()]
            elif isinstance(col, (StrColumn, RaggedColumn)):
                values = col.to_list()
            else:
                values = col.tolist()
            mask = self.nulls.get(name)
            if mask is not None:
                values = [None if m else v for v, m in zip(values, mask.tolist())]
            lists[name] = values
        names = list(lists)
        return [dict(zip(names, row)) for row in zip(*(lists[n] for n in names))] if names else [{} for _ in range(len(self))]
