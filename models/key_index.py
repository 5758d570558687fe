"""Key bytes -> dense codes (0, 1, ... in order of first sight), looked up a batch at a time.

A key of at most ``MAX_BYTES`` bytes is held as its length and its bytes zero-padded into 64-bit words.
With the C kernel (``key_index.c``, built like ``models.agg_window``'s) the index is an open-addressing
hash table of codes, probed and filled in one call per batch with the GIL released. Without it (no
compiler, ``STREAMSCORE_NATIVE=0``), in numpy: a sorted array of the keys' hashes (and a small sorted array
of the latest ones, merged into it now and then, so adding keys costs little). Either way a hit is checked
word for word against the key held under that code, so a hash collision never merges two keys. A longer
key (and, in numpy, one whose hash another key already holds) is kept in a small dict instead (found there
on every later lookup).

``group`` (the kernel only; ``models.features.string_groups`` uses ``np.unique`` without it) codes a string
column's rows by value, numbered in order of first sight.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from schemas.codec.native import I64, P, Kernel

MAX_BYTES = 64                                       # longer keys are coded through the dict
_SRC = Path(__file__).with_name("key_index.c")
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)


_KERNEL = Kernel(_SRC, "ss_key_index", "key index kernel", {
    "ss_group": ([P, P, P, I64, P, I64, P, P, P, P, I64], I64), "ss_index_build": ([P, I64, P, I64, P, I64, I64], None),
    "ss_index": ([P, I64, P, I64, P, I64, P, I64, P, P, I64, P], I64)})


def lib() -> Any:
    """The loaded kernel, or None (the numpy path) when disabled or not buildable."""
    return _KERNEL.get()


def set_enabled(on: bool) -> None:
    """Tests: switch between the kernel and the numpy path (for indexes made after the switch)."""
    _KERNEL.set_enabled(on)


def _table_size(n: int) -> int:
    """Slots of a hash table for ``n`` entries: a power of two, at least twice as many."""
    return 1 << max(4, (2 * n).bit_length())


def group(buf: np.ndarray, start: np.ndarray, length: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes, values): each row's value coded by its rank in order of first sight (-1 for a null row,
    ``length < 0``), and the values in that order as one zero-padded ``S<width>`` array (``width``: at least the
    longest). A row's value is ``buf[start:start + length]`` without its trailing zero bytes. Only call when
    ``lib()`` is not None."""
    n = len(length)
    start, length = np.ascontiguousarray(start, np.int64), np.ascontiguousarray(length, np.int64)
    if len(start) != n or width < 1 or (n and bool(np.any((length > 0) & ((start < 0) | (start + length > len(buf))))
                                                   or int(length.max()) > width)):
        raise ValueError("key index kernel: a string outside its buffer, or wider than the width")
    buf = np.ascontiguousarray(buf, np.uint8)
    table = np.full(_table_size(n), -1, np.int64)
    codes, first, size = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64)
    fixed = np.zeros(n * width, np.uint8)
    k = lib().ss_group(buf.ctypes.data, start.ctypes.data, length.ctypes.data, n, table.ctypes.data, len(table),
                      codes.ctypes.data, first.ctypes.data, size.ctypes.data, fixed.ctypes.data, width)
    return codes, fixed[:k * width].view(f"S{width}")


def _mix(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser (wrapping modulo 2**64)."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def _hash(words: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Each key's hash: its length, then the words its bytes reach (so the hash does not depend on the width)."""
    h = _mix(length.astype(np.uint64) * _GOLD)
    used = -(-length // 8)
    for j in range(words.shape[1]):
        h = np.where(used > j, _mix(h ^ words[:, j]), h)
    return h


class KeyTexts:
    """Distinct keys of one batch as padded words, hashed once (shared by every partition's lookup)."""

    def __init__(self, texts: Sequence[bytes]) -> None:
        self.texts = texts
        self.length = np.fromiter(map(len, texts), np.int64, len(texts))
        longest = int(self.length.max()) if len(texts) else 0
        self.long = self.length > MAX_BYTES
        width = 8 * max(1, -(-min(longest, MAX_BYTES) // 8))
        short = texts if not self.long.any() else [b"" if len(t) > MAX_BYTES else t for t in texts]
        self.words = np.array(short, dtype=f"S{width}").view(np.uint64).reshape(len(texts), width // 8) \
            if len(texts) else np.zeros((0, width // 8), np.uint64)

    @cached_property
    def hash(self) -> np.ndarray:                    # the numpy index's (the kernel hashes as it probes)
        return _hash(self.words, self.length)

    @classmethod
    def padded(cls, texts: Sequence[bytes], fixed: np.ndarray) -> KeyTexts:
        """``KeyTexts(texts)`` where ``texts`` is ``fixed.tolist()``, ``fixed`` an ``S<width>`` array (width at most
        ``MAX_BYTES``): the words cut from its bytes, no Python per key. As ``tolist`` does, a key's length ends at
        its last non-zero byte."""
        m, width = len(fixed), fixed.dtype.itemsize
        if len(texts) != m or width > MAX_BYTES:
            raise ValueError("padded keys: the texts are not the padded array's, or wider than MAX_BYTES")
        out = cls.__new__(cls)
        buf = np.zeros((m, 8 * max(1, -(-width // 8))), np.uint8)
        buf[:, :width] = np.ascontiguousarray(fixed).view(np.uint8).reshape(m, width)
        out.texts = texts
        out.length = np.char.str_len(fixed).astype(np.int64)
        out.long = np.zeros(m, bool)
        out.words = buf.view(np.uint64)
        return out

    def joined(self, idx: np.ndarray) -> tuple[np.ndarray, bytes]:
        """The byte lengths of ``texts[idx]`` and their bytes end to end, cut from the padded words."""
        length = self.length[idx]
        if self.long[idx].any():
            return length, b"".join(self.texts[i] for i in idx.tolist())
        padded = self.words[idx].view(np.uint8)
        return length, padded[np.arange(padded.shape[1]) < length[:, None]].tobytes()


class KeyIndex:
    """Codes of the keys of one store in one partition."""

    def __init__(self) -> None:
        self._lib = lib()
        self._table = np.full(_table_size(0), -1, np.int64) if self._lib is not None else None   # the kernel's
        self._levels = [(np.zeros(0, np.uint64), np.zeros(0, np.int64))] * 2   # (sorted hashes, their codes):
        # the indexed keys, then the latest ones (a hash is in one level at most); numpy only
        self._spill: dict[bytes, int] = {}           # long keys, and keys whose hash another key holds
        self._words = np.zeros((1024, 1), np.uint64)     # word j of code c at [c, j] (spare codes); lengths
        self._len = np.zeros(1024, np.int64)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def text(self, code: int) -> bytes:
        if self._len[code] > MAX_BYTES:
            return next(text for text, c in self._spill.items() if c == code)
        return self._words[code].tobytes()[:int(self._len[code])]

    def nbytes(self) -> int:
        arrays = (*self._levels[0], *self._levels[1], self._words, self._len,
                  *(() if self._table is None else (self._table,)))
        return int(sum(a.nbytes for a in arrays)) + 120 * len(self._spill)

    def codes(self, keys: KeyTexts, which: np.ndarray | None = None) -> np.ndarray:
        """The codes of ``keys.texts[which]`` (every one when None), keys not held numbered on in order."""
        idx = np.arange(len(keys.texts)) if which is None else which
        if self._table is not None:
            return self._native_codes(keys, np.ascontiguousarray(idx, np.int64))
        h = keys.hash[idx]
        code = np.full(len(idx), -1, np.int64)
        hit = np.zeros(len(idx), bool)
        for hashes, codes in self._levels:
            if len(hashes):
                pos = np.minimum(np.searchsorted(hashes, h), len(hashes) - 1)
                found = hashes[pos] == h
                code = np.where(found, codes[pos], code)
                hit |= found
        hit &= ~keys.long[idx]                       # a long key is never indexed (any hash it meets is another's)
        code[~hit] = -1
        cand = np.flatnonzero(hit)
        code[cand] = np.where(self._same(keys, idx[cand], code[cand]), code[cand], -1)
        miss = np.flatnonzero(code < 0)
        if len(miss):
            code[miss] = self._add(keys, idx[miss], hit[miss])
        return code

    def keep(self, live: np.ndarray) -> None:
        """Keep only the codes ``live`` (ascending), renumbered 0, 1, ... in that order."""
        remap = np.full(self._n + 1, -1, np.int64)
        remap[live] = np.arange(len(live))
        self._levels = [(hashes[remap[codes] >= 0], remap[codes[remap[codes] >= 0]]) for hashes, codes in self._levels]
        self._spill = {t: int(remap[c]) for t, c in self._spill.items() if remap[c] >= 0}
        rows = max(1024, 2 * len(live))
        words, length = np.zeros((rows, self._words.shape[1]), np.uint64), np.zeros(rows, np.int64)
        words[:len(live)], length[:len(live)] = self._words[live], self._len[live]
        self._words, self._len, self._n = words, length, len(live)
        if self._table is not None:
            self._rebuild(_table_size(len(live)))

    def _native_codes(self, keys: KeyTexts, idx: np.ndarray) -> np.ndarray:
        """``codes`` through the kernel: the short keys in one call, the long ones through the dict."""
        assert self._table is not None
        out = np.empty(len(idx), np.int64)
        kwords = np.ascontiguousarray(keys.words, np.uint64)
        klen = np.ascontiguousarray(keys.length, np.int64)
        if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= len(klen) or len(kwords) != len(klen)):
            raise ValueError("key index kernel: a key outside the batch's keys")
        self._reserve(len(idx), kwords.shape[1])
        if len(self._table) < 2 * (self._n + len(idx)):
            self._rebuild(_table_size(self._n + len(idx)))
        at = 0
        for i in [*np.flatnonzero(keys.long[idx]).tolist(), len(idx)]:   # the short keys between long ones: numbered
            if i > at:                                                  # in order of first sight all the same
                sub = np.ascontiguousarray(idx[at:i])
                self._n = int(self._lib.ss_index(
                    self._table.ctypes.data, len(self._table), self._words.ctypes.data, self._words.shape[1],
                    self._len.ctypes.data, self._n, kwords.ctypes.data, kwords.shape[1], klen.ctypes.data,
                    sub.ctypes.data, len(sub), out[at:i].ctypes.data))
            if i < len(idx):
                text = keys.texts[int(idx[i])]
                c = self._spill.get(text)
                if c is None:
                    c = self._spill[text] = self._n
                    self._store(keys, idx[i:i + 1])
                out[i] = c
            at = i + 1
        return out

    def _reserve(self, m: int, width: int) -> None:
        """Room for ``m`` more codes of keys ``width`` words wide (the kernel writes in place)."""
        rows, cols = self._words.shape
        if self._n + m > rows or width > cols:
            rows = max(rows, 2 * (self._n + m)) if self._n + m > rows else rows
            words = np.zeros((rows, max(width, cols)), np.uint64)
            words[:self._n, :cols] = self._words[:self._n]
            length = np.zeros(rows, np.int64)
            length[:self._n] = self._len[:self._n]
            self._words, self._len = words, length        # the table holds codes: still valid

    def _rebuild(self, size: int) -> None:
        self._table = np.full(size, -1, np.int64)
        self._lib.ss_index_build(self._table.ctypes.data, size, self._words.ctypes.data, self._words.shape[1],
                                 self._len.ctypes.data, self._n, MAX_BYTES)

    def _same(self, keys: KeyTexts, idx: np.ndarray, code: np.ndarray) -> np.ndarray:
        """Whether each key ``keys.texts[idx[i]]`` is the one held under ``code[i]``."""
        same = keys.length[idx] == self._len[code]
        for j in range(min(keys.words.shape[1], self._words.shape[1])):   # past it, the wider side holds zeros
            same &= self._words[code, j] == keys.words[idx, j]
        return same

    def _add(self, keys: KeyTexts, idx: np.ndarray, hashed: np.ndarray) -> np.ndarray:
        """Codes of keys not found by hash (``hashed``: their hash is indexed, held by another key)."""
        h = keys.hash[idx]
        first = self._n
        order = np.argsort(h)
        if not self._spill and not hashed.any() and not keys.long[idx].any() and bool(np.all(np.diff(h[order]))):
            codes = np.arange(first, first + len(idx))             # all new, each hash its own: no dict
            self._store(keys, idx)
            self._index(h[order], codes[order])
            return codes
        out: list[int] = []
        new: dict[bytes, int] = {}
        stored: list[int] = []
        claimed: set[int] = set()
        fresh_h: list[int] = []
        fresh_c: list[int] = []
        for i, hv, taken, long in zip(idx.tolist(), h.tolist(), hashed.tolist(), keys.long[idx].tolist()):
            text = keys.texts[i]
            c = new.get(text, self._spill.get(text, -1))
            if c < 0:
                c = new[text] = first + len(new)
                stored.append(i)
                if taken or long or hv in claimed:
                    self._spill[text] = c
                else:
                    claimed.add(hv)
                    fresh_h.append(hv)
                    fresh_c.append(c)
            out.append(c)
        self._store(keys, np.array(stored, np.int64))
        fh, fc = np.array(fresh_h, np.uint64), np.array(fresh_c, np.int64)
        order = np.argsort(fh)
        self._index(fh[order], fc[order])
        return np.array(out, np.int64)

    def _store(self, keys: KeyTexts, idx: np.ndarray) -> None:
        """Append new codes (``len(self)``, ... in ``idx`` order): their words and lengths."""
        m, width = len(idx), keys.words.shape[1]
        self._reserve(m, width)
        self._words[self._n:self._n + m] = 0
        self._words[self._n:self._n + m, :width] = keys.words[idx]
        self._len[self._n:self._n + m] = keys.length[idx]
        self._n += m

    def _index(self, h: np.ndarray, codes: np.ndarray) -> None:
        """Index new hashes (ascending) with their codes: into the latest level, merged into the first when it
        outgrows an eighth of it (each key is copied a few times, not once per batch)."""
        if not len(h):
            return
        (main_h, main_c), (new_h, new_c) = self._levels
        at = np.searchsorted(new_h, h)
        new_h, new_c = np.insert(new_h, at, h), np.insert(new_c, at, codes)
        if len(new_h) > max(4096, len(main_h) >> 3):
            at = np.searchsorted(main_h, new_h)
            main_h, main_c = np.insert(main_h, at, new_h), np.insert(main_c, at, new_c)
            new_h, new_c = new_h[:0], new_c[:0]
        self._levels = [(main_h, main_c), (new_h, new_c)]
