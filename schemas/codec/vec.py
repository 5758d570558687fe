"""Vectorised Avro primitives over a shared byte buffer and per-row cursors.

Every reader takes ``pos`` (int64 byte offsets, one per row) and returns values for
all rows at once. Reads never fault: the buffer carries ``PAD`` trailing zero bytes and
callers bound how far a corrupt row's cursor can run past its own end.
"""

from __future__ import annotations

import numpy as np

PAD = 64
_HI = np.uint64(0x8080808080808080)
_LO7 = np.uint64(0x7F7F7F7F7F7F7F7F)
_ONE = np.uint64(1)
_64 = np.uint64(64)
_SH = [np.uint64(k) for k in range(64)]
_M1A, _M1B = np.uint64(0x007F007F007F007F), np.uint64(0x7F007F007F007F00)
_M2A, _M2B = np.uint64(0x00003FFF00003FFF), np.uint64(0x3FFF00003FFF0000)
_SIZE_STEPS = np.array([1 << (7 * k) for k in range(1, 10)], np.uint64)  # smallest value needing k+1 bytes
_M3A, _M3B = np.uint64(0x000000000FFFFFFF), np.uint64(0x0FFFFFFF00000000)


class Buffer:
    """A padded uint8 buffer read through aligned 64-bit words.

    Gathers from an unaligned numpy view are an order of magnitude slower than aligned
    ones, so an unaligned 8-byte value is built from the two aligned words it spans.
    Invariant: ``u8`` starts 8-byte aligned and carries at least 16 bytes of padding.
    """

    def __init__(self, data: np.ndarray) -> None:
        if data.ctypes.data % 8:
            data = data.copy()  # numpy allocations are aligned
        self.u8 = data
        self.al = data[: data.shape[0] // 8 * 8].view(np.uint64)

    def words(self, pos: np.ndarray) -> np.ndarray:
        """Little-endian uint64 at each byte offset in ``pos``."""
        q = pos >> 3
        r = ((pos & 7) << 3).astype(np.uint64)
        return (self.al[q] >> r) | (self.al[q + 1] << (_64 - r))  # a shift by 64 gives 0 in numpy

    def words_t(self, pos: np.ndarray, k: int) -> np.ndarray:
        """Words at ``pos + 8*j`` for j < k, shape (k, n): row-major per j keeps the
        shifts on contiguous rows (much faster than broadcasting an (n, 1) shift)."""
        q = pos >> 3
        r = ((pos & 7) << 3).astype(np.uint64)
        w = self.al[np.arange(k + 1)[:, None] + q]
        return (w[:-1] >> r) | (w[1:] << (_64 - r))


def read_uvarint(buf: Buffer, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray | int, np.ndarray | None]:
    """Raw (not zig-zag decoded) varints at ``pos``: (value uint64, byte length, too_long mask)."""
    first = buf.u8[pos]
    if first.size == 0 or int(first.max()) < 0x80:
        return first.astype(np.uint64), 1, None
    w = buf.words(pos)
    stop = ~w & _HI  # high bit clear marks the last byte
    low = stop & (~stop + _ONE)
    mask = (low << _ONE) - _ONE  # bytes up to and including the last one
    length = (np.bitwise_count(mask) >> 3).astype(np.int64)
    v = w & mask & _LO7
    v = (v & _M1A) | ((v & _M1B) >> _SH[1])
    v = (v & _M2A) | ((v & _M2B) >> _SH[2])
    v = (v & _M3A) | ((v & _M3B) >> _SH[4])
    too_long = None
    long_rows = np.flatnonzero(stop == 0)
    if long_rows.size:  # 9 or 10 byte varints: values >= 2**56
        p = pos[long_rows]
        b8 = buf.u8[p + 8].astype(np.uint64)
        b9 = buf.u8[p + 9].astype(np.uint64)
        ext = (b8 & np.uint64(0x7F)) << _SH[56]
        has9 = (b8 & np.uint64(0x80)) != 0
        ext |= np.where(has9, (b9 & _ONE) << _SH[63], np.uint64(0))
        v[long_rows] |= ext
        length[long_rows] = np.where(has9, 10, 9)
        too_long = np.zeros(pos.shape[0], bool)
        too_long[long_rows] = has9 & ((b9 & np.uint64(0x80)) != 0)
    return v, length, too_long


def zigzag_decode(u: np.ndarray) -> np.ndarray:
    return (u >> _ONE).view(np.int64) ^ -(u & _ONE).view(np.int64)


def zigzag_encode(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.int64, copy=False)
    return ((x << 1) ^ (x >> 63)).view(np.uint64)


def uvarint_size(u: np.ndarray) -> np.ndarray:
    """Encoded byte length (1..10) of each uint64."""
    return np.searchsorted(_SIZE_STEPS, u, side="right") + 1


def write_uvarint(out: np.ndarray, pos: np.ndarray, u: np.ndarray, size: np.ndarray | None = None) -> np.ndarray:
    """Write varints at ``pos`` into ``out``; returns their byte lengths."""
    if size is None:
        size = uvarint_size(u)
    if u.size == 0 or int(size.max()) == 1:
        out[pos] = u.astype(np.uint8)
        return size
    width = int(size.max())
    k = np.arange(width, dtype=np.uint64)
    groups = ((u[:, None] >> (k * np.uint64(7))) & np.uint64(0x7F)).astype(np.uint8)
    kk = np.arange(width)
    groups[kk[None, :] < (size[:, None] - 1)] |= 0x80
    live = kk[None, :] < size[:, None]
    out[(pos[:, None] + kk[None, :])[live]] = groups[live]
    return size
