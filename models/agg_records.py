"""The binary value of an aggregate changelog record: a block of state entries, columnar.

One record holds the entries one batch added to one store in one partition (split in blocks of at
most ``MAX_BYTES``). All integers little-endian; a text table is ``u32 count``, ``u32[count]``
byte lengths, then the bytes end to end (a key or text value as received, UTF-8)::

    u8 VERSION, u32 n
    i64[n] offsets, i64[n] record times (ms)
    u32[n] key index, key table
    per store field, in layout order:
        float: f64[n] (NaN for null; any float round-trips bit for bit)
        text:  i32[n] index (-1 for null), text table
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Union

import numpy as np

VERSION = b"\x02"                        # a JSON value of the per-event format starts with "["
MAX_BYTES = 512 * 1024                   # a block stays well under Kafka's default 1 MB message limit
FIXED_BYTES = 8 + 8 + 4                  # per entry: offset, time, key index (a field adds 8 or 4)
Kind = Literal["float", "text"]
FieldValues = Union[np.ndarray, tuple[np.ndarray, list[bytes]]]   # f64 values, or (i32 index, text table)
Texts = Union[list[bytes], tuple[np.ndarray, bytes]]      # a text table: the texts, or their lengths and bytes end to end

_I64, _U32, _I32, _F64 = np.dtype("<i8"), np.dtype("<u4"), np.dtype("<i4"), np.dtype("<f8")


@dataclass
class Block:
    """The entries of one record: ``keys[kidx[i]]`` is entry i's key."""

    offsets: np.ndarray
    times: np.ndarray
    kidx: np.ndarray
    keys: Texts                  # decode gives the list
    fields: list[FieldValues]


def encode(block: Block) -> bytes:
    n = len(block.offsets)
    parts = [VERSION, np.uint32(n).astype(_U32).tobytes(), block.offsets.astype(_I64).tobytes(),
             block.times.astype(_I64).tobytes(), block.kidx.astype(_U32).tobytes(), _table(block.keys)]
    for values in block.fields:
        if isinstance(values, tuple):
            parts += [values[0].astype(_I32).tobytes(), _table(values[1])]
        else:
            parts.append(values.astype(_F64).tobytes())
    return b"".join(parts)


def decode(value: bytes, kinds: Sequence[Kind]) -> Block:
    """A record's block; ``ValueError`` when ``value`` is not one of this layout."""
    if value[:1] != VERSION:
        raise ValueError("not a block record")
    view = memoryview(value)
    pos = 1
    n, pos = _read(view, pos, _U32, 1)
    count = int(n[0])
    offsets, pos = _read(view, pos, _I64, count)
    times, pos = _read(view, pos, _I64, count)
    kidx, pos = _read(view, pos, _U32, count)
    keys, pos = _read_table(view, pos)
    fields: list[FieldValues] = []
    for kind in kinds:
        if kind == "float":
            vals, pos = _read(view, pos, _F64, count)
            fields.append(vals)
        else:
            idx, pos = _read(view, pos, _I32, count)
            texts, pos = _read_table(view, pos)
            if count and (int(idx.max()) >= len(texts) or int(idx.min()) < -1):
                raise ValueError("a text index is out of its table")
            fields.append((idx, texts))
    if pos != len(value):
        raise ValueError(f"{len(value) - pos} bytes after the block")
    if count and int(kidx.max()) >= len(keys):
        raise ValueError("a key index is out of its table")
    return Block(offsets, times, kidx, keys, fields)


def _table(texts: Texts) -> bytes:
    if isinstance(texts, tuple):
        lengths, data = texts[0].astype(_U32), texts[1]
    else:
        lengths, data = np.fromiter(map(len, texts), _U32, len(texts)), b"".join(texts)
    return np.uint32(len(lengths)).astype(_U32).tobytes() + lengths.tobytes() + data


def _read(view: memoryview, pos: int, dtype: np.dtype, count: int) -> tuple[np.ndarray, int]:
    end = pos + dtype.itemsize * count
    if end > len(view):
        raise ValueError("the block is cut short")
    return np.frombuffer(view[pos:end], dtype).astype(dtype.newbyteorder("="), copy=True), end


def _read_table(view: memoryview, pos: int) -> tuple[list[bytes], int]:
    n, pos = _read(view, pos, _U32, 1)
    lengths, pos = _read(view, pos, _U32, int(n[0]))
    ends = np.cumsum(lengths, dtype=np.int64).tolist()
    end = pos + (ends[-1] if ends else 0)
    if end > len(view):
        raise ValueError("the block is cut short")
    raw = bytes(view[pos:end])
    return [raw[a:b] for a, b in zip([0, *ends[:-1]], ends)], end
