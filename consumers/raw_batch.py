"""Consumed records as arrays: one value buffer, one key buffer, numpy metadata.

What ``consumers.native_consume`` drains instead of one confluent-kafka ``Message`` per
record. Row i's value is ``values[vstart[i]:+vlen[i]]`` (``vlen`` -1: a null value), likewise
its key; ``err`` is librdkafka's error code (0 for a record; an error event's text is its
value). Indexing gives a ``RawMessage`` with ``Message``'s accessors, for the few per-record
readers (dead letters, the ``topic:partition:offset`` id).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence, Union, overload

import numpy as np

from consumers.offsets import TP
from schemas.columns import StrColumn


def _segments(buf: bytes, start: np.ndarray, length: np.ndarray) -> tuple[bytes, np.ndarray]:
    """The segments (length -1: null, no bytes) end to end, and their new starts."""
    n = length.shape[0]
    size = np.maximum(length, 0)
    new_start = np.cumsum(size) - size
    if n == 0:
        return b"", new_start
    if int(size.sum()) == len(buf) and bool(np.all(start[size > 0] == new_start[size > 0])):
        return buf, new_start           # already end to end: no copy
    from schemas.codec.native import copy_segments

    out = np.empty(int(size.sum()), np.uint8)
    copy_segments(out, new_start, np.frombuffer(buf, np.uint8), start.astype(np.int64), size)
    return out.tobytes(), new_start


@dataclass(frozen=True)
class RawBatch:
    topics: tuple[str, ...]          # topic_idx indexes this
    topic_idx: np.ndarray            # int32
    partition: np.ndarray            # int32
    offset: np.ndarray               # int64
    timestamp: np.ndarray            # int64 (ms)
    tstype: np.ndarray               # int32 (confluent-kafka's TIMESTAMP_* codes)
    err: np.ndarray                  # int32, 0 for records
    values: bytes
    vstart: np.ndarray               # int64
    vlen: np.ndarray                 # int64, -1: null
    keys: bytes
    kstart: np.ndarray
    klen: np.ndarray

    def __len__(self) -> int:
        return int(self.offset.shape[0])

    def __getitem__(self, i: int) -> RawMessage:
        return RawMessage(self, i)

    def __iter__(self) -> Iterator[RawMessage]:
        return (RawMessage(self, i) for i in range(len(self)))

    def value(self, i: int) -> bytes | None:
        k = int(self.vlen[i])
        return None if k < 0 else self.values[int(self.vstart[i]):int(self.vstart[i]) + k]

    def key(self, i: int) -> bytes | None:
        k = int(self.klen[i])
        return None if k < 0 else self.keys[int(self.kstart[i]):int(self.kstart[i]) + k]

    def value_list(self) -> list[bytes | None]:
        return [self.value(i) for i in range(len(self))]

    def key_column(self, rows: np.ndarray | None = None) -> StrColumn:
        """Keys of ``rows`` (all when None) as a column over this batch's key bytes (length -1: a null key)."""
        buf = np.frombuffer(self.keys, np.uint8)
        return StrColumn(buf, self.kstart, self.klen) if rows is None else StrColumn(buf, self.kstart[rows], self.klen[rows])

    def tps(self) -> np.ndarray:
        """Each row's (topic index, partition) as one int64, for membership tests."""
        return (self.topic_idx.astype(np.int64) << 32) | self.partition.astype(np.int64)

    def take(self, rows: np.ndarray) -> RawBatch:
        """Rows ``rows`` (an index array or a boolean mask); the buffers are shared, not copied."""
        return RawBatch(self.topics, self.topic_idx[rows], self.partition[rows], self.offset[rows],
                        self.timestamp[rows], self.tstype[rows], self.err[rows], self.values, self.vstart[rows],
                        self.vlen[rows], self.keys, self.kstart[rows], self.klen[rows])

    def without(self, gone: set[TP]) -> RawBatch:
        """The rows not of the partitions ``gone``."""
        codes = [(self.topics.index(t) << 32) | p for t, p in gone if t in self.topics]
        if not codes or len(self) == 0:
            return self
        return self.take(~np.isin(self.tps(), np.array(codes, np.int64)))

    def by_topic(self) -> dict[str, RawBatch]:
        """The rows of each topic, in consumption order."""
        if len(self.topics) == 1:
            return {self.topics[0]: self}
        return {t: self.take(self.topic_idx == i) for i, t in enumerate(self.topics)
                if bool(np.any(self.topic_idx == i))}

    def compact(self) -> RawBatch:
        """The same rows with values and keys end to end in their own buffers (what the decoder reads)."""
        values, vstart = _segments(self.values, self.vstart, self.vlen)
        keys, kstart = _segments(self.keys, self.kstart, self.klen)
        return RawBatch(self.topics, self.topic_idx, self.partition, self.offset, self.timestamp, self.tstype,
                        self.err, values, vstart, self.vlen, keys, kstart, self.klen)

    @staticmethod
    def concat(parts: list[RawBatch]) -> RawBatch:
        """``parts`` one after the other, compacted (values and keys end to end)."""
        if len(parts) == 1:
            return parts[0].compact()
        parts = [p.compact() for p in parts]
        topics = tuple(dict.fromkeys(t for p in parts for t in p.topics))
        remap = [np.array([topics.index(t) for t in p.topics], np.int32) for p in parts]
        vbase = np.cumsum([0] + [len(p.values) for p in parts])
        kbase = np.cumsum([0] + [len(p.keys) for p in parts])
        cat = np.concatenate
        return RawBatch(
            topics, cat([m[p.topic_idx] for m, p in zip(remap, parts)]).astype(np.int32),
            cat([p.partition for p in parts]), cat([p.offset for p in parts]), cat([p.timestamp for p in parts]),
            cat([p.tstype for p in parts]), cat([p.err for p in parts]), b"".join(p.values for p in parts),
            cat([p.vstart + b for p, b in zip(parts, vbase[:-1].tolist())]), cat([p.vlen for p in parts]),
            b"".join(p.keys for p in parts), cat([p.kstart + b for p, b in zip(parts, kbase[:-1].tolist())]),
            cat([p.klen for p in parts]))


class RawMessage:
    """Row ``i`` of a ``RawBatch`` with confluent-kafka ``Message``'s accessors."""

    __slots__ = ("_b", "_i")

    def __init__(self, batch: RawBatch, i: int) -> None:
        self._b, self._i = batch, i

    def value(self) -> bytes | None:
        return self._b.value(self._i)

    def key(self) -> bytes | None:
        return self._b.key(self._i)

    def topic(self) -> str:
        return self._b.topics[int(self._b.topic_idx[self._i])]

    def partition(self) -> int:
        return int(self._b.partition[self._i])

    def offset(self) -> int:
        return int(self._b.offset[self._i])

    def timestamp(self) -> tuple[int, int]:
        return int(self._b.tstype[self._i]), int(self._b.timestamp[self._i])


class RawValues(Sequence[Union[bytes, None]]):
    """The values of a ``RawBatch`` as a read-only sequence, each sliced out when read."""

    def __init__(self, batch: RawBatch) -> None:
        self._b = batch

    def __len__(self) -> int:
        return len(self._b)

    @overload
    def __getitem__(self, i: int) -> bytes | None: ...
    @overload
    def __getitem__(self, i: slice) -> list[bytes | None]: ...

    def __getitem__(self, i: int | slice) -> bytes | None | list[bytes | None]:
        if isinstance(i, slice):
            return [self._b.value(j) for j in range(len(self._b))[i]]
        return self._b.value(i)
