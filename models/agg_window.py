"""The windowed reductions of ``models.aggregates`` in C (``agg_window.c``), loaded with ctypes.

One pass over each query's entries for every aggregate of a store, read in place from two runs sorted by
(key, time, offset) (a partition's segment and its recent entries) and merged on the fly, instead of numpy's
gathered, sorted entries and (query, entry) pair arrays; and the merge of a partition's recent entries into
its segment in place, from the back (no new columns per merge). The foreign calls release the GIL. Built
like the codec's kernels (``schemas.codec.native.Kernel``: compiled on first use into a cache keyed by the
source's hash); without a compiler, or with ``STREAMSCORE_NATIVE=0``, ``models.aggregates`` keeps its numpy
path, with bit-for-bit the same results (the unit tests run both). Also ``by_key``, a counting sort of entries
by key code, and the checks of ``windows``' arguments.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from schemas.codec.native import I64, P, Kernel

_SRC = Path(__file__).with_name("agg_window.c")
OPS = {"count": 1, "sum": 2, "mean": 3, "min": 4, "max": 5, "distinct_count": 6}   # a count without field: 0


class Run(NamedTuple):
    """Entries sorted by (key, time, offset): their record times and offsets (int64)."""

    t: np.ndarray
    o: np.ndarray


class Agg(NamedTuple):
    """One aggregate: its op (of ``OPS``, 0: a count of events), window, and the values it reads of each run's
    entries (float64, or int64 text hashes for a distinct count; None for a count of events)."""

    op: int
    window_ms: int
    a: np.ndarray | None
    b: np.ndarray | None


class _CAgg(ctypes.Structure):
    _fields_ = [("op", ctypes.c_int64), ("window", ctypes.c_int64), ("af", ctypes.c_void_p),
                ("bf", ctypes.c_void_p), ("ai", ctypes.c_void_p), ("bi", ctypes.c_void_p), ("out", ctypes.c_void_p),
                ("table", ctypes.c_void_p), ("stamp", ctypes.c_void_p), ("mask", ctypes.c_int64)]


_KERNEL = Kernel(_SRC, "ss_agg_window", "aggregate kernel", {
    "ss_windows": ([P, P, P, P, P, P, P, P, P, P, P, I64, I64, I64, I64, P, P, P], None),
    "ss_windows_check": ([P, P, I64, P, P, I64, P, I64, P], I64), "ss_by_key": ([P, P, P, I64, I64, P, P], I64),
    "ss_merge": ([I64, P, I64, P, I64], None)})


def lib() -> Any:
    """The loaded kernel, or None (the numpy path) when disabled or not buildable."""
    return _KERNEL.get()


def set_enabled(on: bool) -> None:
    """Tests: switch between the kernel and the numpy path."""
    _KERNEL.set_enabled(on)


def _values(x: np.ndarray | None, op: int, entries: int, keep: list[np.ndarray]) -> int | None:
    """The address of one run's values for ``op``, checked."""
    if op == 0:
        return None
    want = np.int64 if op == OPS["distinct_count"] else np.float64
    if x is None or x.dtype != want:
        raise ValueError(f"aggregate kernel: op {op} reads {np.dtype(want).name} values")
    if len(x) != entries:
        raise ValueError("aggregate kernel: arrays of unequal lengths")
    x = np.ascontiguousarray(x)
    keep.append(x)
    return int(x.ctypes.data)


def windows(aggs: Sequence[Agg], a: Run, b: Run, alo: np.ndarray, ahi: np.ndarray, blo: np.ndarray,
            bhi: np.ndarray, qt: np.ndarray, qo: np.ndarray, null_hash: int,
            order: np.ndarray | None = None) -> list[np.ndarray]:
    """Each aggregate per query over its entries ``a[alo:ahi]`` and ``b[blo:bhi]`` (index arrays, one per
    query) that are at or before it and inside the aggregate's window, all in one pass; ``order``: a
    permutation of the queries to work through them in (by key reads the entries nearly in sequence). Only
    call when ``lib()`` is not None."""
    so = lib()
    at, ao, bt, bo = (np.ascontiguousarray(x, np.int64) for x in (*a, *b))
    alo, ahi, blo, bhi, qt, qo = (np.ascontiguousarray(x, np.int64) for x in (alo, ahi, blo, bhi, qt, qo))
    nq = len(alo)
    outs = [np.empty(nq, np.float64) for _ in aggs]
    if not nq or not aggs:
        return outs
    order = np.arange(nq, dtype=np.int64) if order is None else np.ascontiguousarray(order, np.int64)
    if not (len(at) == len(ao) and len(bt) == len(bo)
            and len(ahi) == len(blo) == len(bhi) == len(qt) == len(qo) == len(order) == nq):
        raise ValueError("aggregate kernel: arrays of unequal lengths")
    seen = np.zeros(nq, np.uint8)
    most = so.ss_windows_check(alo.ctypes.data, ahi.ctypes.data, len(at), blo.ctypes.data, bhi.ctypes.data, len(bt),
                               order.ctypes.data, nq, seen.ctypes.data)
    if most == -1:
        raise ValueError("aggregate kernel: an entry range outside the entries")
    if most == -2:
        raise ValueError("aggregate kernel: order is not a permutation of the queries")
    keep: list[np.ndarray] = []                  # the arrays the structs point into, alive through the call
    longest = max(g.window_ms for g in aggs)
    structs = (_CAgg * len(aggs))()
    for c, g, out in zip(structs, aggs, outs):
        if g.op not in (0, *OPS.values()) or g.window_ms <= 0:
            raise ValueError(f"aggregate kernel: op {g.op}, window {g.window_ms}")
        xa, xb = _values(g.a, g.op, len(at), keep), _values(g.b, g.op, len(bt), keep)
        size = 1 << max(1, (2 * most + 1).bit_length()) if g.op == OPS["distinct_count"] else 1
        table, stamp = np.zeros(size, np.int64), np.zeros(size, np.int64)
        keep += [table, stamp]
        floats = g.op != OPS["distinct_count"]
        c.op, c.window, c.mask = g.op, g.window_ms, size - 1
        c.af, c.bf = (xa, xb) if floats else (None, None)
        c.ai, c.bi = (None, None) if floats else (xa, xb)
        c.out, c.table, c.stamp = out.ctypes.data, table.ctypes.data, stamp.ctypes.data
    n, acc = np.zeros(len(aggs), np.int64), np.zeros(len(aggs), np.float64)
    so.ss_windows(at.ctypes.data, ao.ctypes.data, bt.ctypes.data, bo.ctypes.data, alo.ctypes.data, ahi.ctypes.data,
                  blo.ctypes.data, bhi.ctypes.data, qt.ctypes.data, qo.ctypes.data, order.ctypes.data, nq, longest,
                  null_hash, len(aggs), ctypes.addressof(structs), n.ctypes.data, acc.ctypes.data)
    return outs


def merge(a: Sequence[np.ndarray], na: int, b: Sequence[np.ndarray], nb: int) -> None:
    """Merge the sorted run ``b[c][:nb]`` into the sorted run ``a[c][:na]`` in place (``a``'s columns have room
    for ``na + nb``), by (key, time, offset) (columns 0, 1, 2), ``a``'s entries first among equal ones. Every
    column is 8 bytes wide and contiguous. Only call when ``lib()`` is not None."""
    if len(a) != len(b) or len(a) < 3 or not all(
            x.dtype.itemsize == 8 and x.flags.c_contiguous and x.ndim == 1 for x in (*a, *b)) \
            or any(len(x) < na + nb for x in a) or any(len(x) < nb for x in b) or na < 0 or nb < 0 \
            or any(x.dtype != np.int64 for x in (*a[:3], *b[:3])):
        raise ValueError("merge kernel: columns of unequal count, width or room")
    ptrs = ctypes.c_void_p * len(a)
    lib().ss_merge(len(a), ptrs(*(x.ctypes.data for x in a)), na, ptrs(*(x.ctypes.data for x in b)), nb)


def by_key(k: np.ndarray, t: np.ndarray, o: np.ndarray, nkeys: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(order, starts): the order of the entries by (key, time, offset) from a counting sort by key (codes in
    ``[0, nkeys)``), and where each key's entries begin in that order (``nkeys + 1`` values); None when a key's
    entries are not in (time, offset) order by arrival, or when ``nkeys`` dwarfs the entries (sort them
    instead). Only call when ``lib()`` is not None."""
    n = len(k)
    if nkeys > 16 * n + 65536:
        return None
    k, t, o = (np.ascontiguousarray(x, np.int64) for x in (k, t, o))
    if not len(t) == len(o) == n:
        raise ValueError("by-key kernel: arrays of unequal lengths")
    starts, order = np.zeros(nkeys + 1, np.int64), np.empty(n, np.int64)
    got = lib().ss_by_key(k.ctypes.data, t.ctypes.data, o.ctypes.data, n, nkeys, starts.ctypes.data, order.ctypes.data)
    if got < 0:
        raise ValueError("by-key kernel: a key code outside [0, nkeys)")
    return None if got else (order, starts)
