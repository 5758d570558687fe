"""Per-row decode state: cursors, record ends and first-error codes."""

from __future__ import annotations

import numpy as np

from schemas.codec.vec import Buffer, read_uvarint, zigzag_decode

# first error per row; 0 = fine. Messages are what a DLQ reader sees.
OK, TRUNCATED, TRAILING, BAD_ENUM, BAD_BRANCH, BAD_LENGTH, BAD_UTF8, INT_RANGE, RESOLUTION, VARINT = range(10)
MESSAGES = {
    TRUNCATED: "record is truncated (the decoder ran past its end)",
    TRAILING: "trailing bytes after the record",
    BAD_ENUM: "enum index out of range",
    BAD_BRANCH: "bad union branch index",
    BAD_LENGTH: "negative or oversized length or count",
    BAD_UTF8: "string is not valid utf-8",
    INT_RANGE: "int value outside the 32-bit range",
    RESOLUTION: "writer value cannot be read with the reader schema",
    VARINT: "varint longer than 10 bytes",
}


class Cursor:
    """Cursors ``pos`` into ``buf`` for a set of rows ending at ``end``."""

    def __init__(self, buf: Buffer, pos: np.ndarray, end: np.ndarray, code: np.ndarray) -> None:
        self.buf = buf
        self.pos = pos
        self.end = end
        self.code = code

    def __len__(self) -> int:
        return int(self.pos.shape[0])

    def flag(self, mask: np.ndarray, code: int) -> None:
        """Record ``code`` for rows in ``mask`` that have no earlier error."""
        hit = mask & (self.code == OK)
        self.code[hit] = code

    def subset(self, rows: np.ndarray) -> Cursor:
        return Cursor(self.buf, self.pos[rows], self.end[rows], self.code[rows])

    def merge(self, rows: np.ndarray, sub: Cursor) -> None:
        self.pos[rows] = sub.pos
        self.code[rows] = sub.code

    def read_long(self) -> np.ndarray:
        u, length, too_long = read_uvarint(self.buf, self.pos)
        self.pos += length
        if too_long is not None and too_long.any():
            self.flag(too_long, VARINT)
        return zigzag_decode(u)

    def read_length(self) -> np.ndarray:
        """A byte length; bad lengths are flagged and read as 0 so cursors stay bounded."""
        n = self.read_long()
        bad = (n < 0) | (n > self.end - self.pos)
        if bad.any():
            self.flag(bad, BAD_LENGTH)
            n[bad] = 0
        return n
