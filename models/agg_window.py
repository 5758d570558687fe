"""The windowed reductions of ``models.aggregates`` in C (``agg_window.c``), loaded with ctypes.

One loop per aggregate over each query's entries, instead of numpy's (query, entry) pair arrays; the
foreign call releases the GIL. Built like the codec's kernels (``schemas.codec.native.build``: compiled on
first use into a cache keyed by the source's hash); without a compiler, or with ``STREAMSCORE_NATIVE=0``,
``models.aggregates`` keeps its numpy path, with bit-for-bit the same results (the unit tests run both).
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import numpy as np

from schemas.codec.native import load

_SRC = Path(__file__).with_name("agg_window.c")
OPS = {"count": 1, "sum": 2, "mean": 3, "min": 4, "max": 5, "distinct_count": 6}   # a count without field: 0
_lib: Any = None
_tried = False


def lib() -> Any:
    """The loaded kernel, or None (the numpy path) when disabled or not buildable."""
    global _lib, _tried
    if _tried:
        return _lib
    _tried = True
    so = load(_SRC, "ss_agg_window", "aggregate kernel")
    if so is None:
        return None
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    so.ss_window.argtypes = [p, p, p, p, i64, p, p, p, p, i64, i64, i64, p, p, p, i64]
    so.ss_window.restype = None
    _lib = so
    return _lib


def set_enabled(on: bool) -> None:
    """Tests: switch between the kernel and the numpy path."""
    global _lib, _tried
    _lib, _tried = None, False
    if not on:
        _tried = True


def window(op: int, window_ms: int, et: np.ndarray, eo: np.ndarray, x: np.ndarray | None, null_hash: int,
           lo: np.ndarray, hi: np.ndarray, qt: np.ndarray, qo: np.ndarray) -> np.ndarray:
    """One aggregate (``op`` of ``OPS``, 0: a count of events) per query: entries ``lo[q]:hi[q]`` (int64
    arrays, contiguous; ``x`` float64, or int64 hashes for a distinct count) at or before the query and
    inside the window. Only call when ``lib()`` is not None."""
    so = _lib
    et, eo, lo, hi, qt, qo = (np.ascontiguousarray(a, np.int64) for a in (et, eo, lo, hi, qt, qo))
    if x is not None:
        x = np.ascontiguousarray(x)
    nq = len(lo)
    out = np.empty(nq, np.float64)
    if not nq:
        return out
    if not (len(et) == len(eo) and (x is None or len(x) == len(et)) and len(hi) == len(qt) == len(qo) == nq):
        raise ValueError("aggregate kernel: arrays of unequal lengths")
    if int(lo.min()) < 0 or int(hi.max()) > len(et) or bool(np.any(hi < lo)):
        raise ValueError("aggregate kernel: an entry range outside the entries")
    xf = x if x is not None and x.dtype == np.float64 else None
    xi = x if x is not None and x.dtype == np.int64 else None
    size = 1
    if op == OPS["distinct_count"]:
        if xi is None:
            raise ValueError("aggregate kernel: a distinct count reads int64 hashes")
        size = 1 << max(1, int(2 * int((hi - lo).max()) + 1).bit_length())
    elif op != 0 and xf is None:
        raise ValueError("aggregate kernel: this op reads float64 values")
    table, stamp = np.zeros(size, np.int64), np.zeros(size, np.int64)
    so.ss_window(et.ctypes.data, eo.ctypes.data, 0 if xf is None else xf.ctypes.data,
                 0 if xi is None else xi.ctypes.data, null_hash, lo.ctypes.data, hi.ctypes.data, qt.ctypes.data,
                 qo.ctypes.data, nq, window_ms, op, out.ctypes.data, table.ctypes.data, stamp.ctypes.data, size - 1)
    return out
