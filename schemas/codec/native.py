"""Byte kernels in C (``native.c``), loaded with ctypes, with numpy fallbacks.

The columnar encoder copies many short segments (strings, fixed-width field runs) into
one buffer. In numpy that needs an int64 index per byte copied; the C loops use memcpy.
The decoder asks of every string whether it has a byte >= 0x80 (only those need a real
UTF-8 check); in numpy that is a gather of 8-byte words and masks, in C one pass.
The shared object is compiled on first use with the system C compiler into a cache
directory keyed by the source's hash (``make setup`` does it ahead of time). Without a
compiler, or with ``STREAMSCORE_NATIVE=0``, every kernel runs its numpy equivalent with
identical results (the unit tests run both).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
_SRC = Path(__file__).with_name("native.c")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "streamscore" / "native"


def build(source: Path, stem: str) -> Path | None:
    """``source`` (one C file) compiled into the cache as ``<stem>-<hash>.so``; None without a
    compiler or when it does not compile (logged). Safe against concurrent builders."""
    src = source.read_bytes()
    out = cache_dir() / f"{stem}-{hashlib.sha1(src).hexdigest()[:12]}.so"
    if out.exists():
        return out
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        res = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", tmp, str(source)], capture_output=True, text=True,
                             timeout=60)
        if res.returncode != 0:
            log.warning("%s not built (%s): %s", source.name, cc, res.stderr.strip()[:500])
            return None
        os.replace(tmp, out)      # atomic: concurrent builders never load a half-written file
        return out
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load(source: Path, stem: str, what: str) -> Any:
    """``source`` built (``build``) and loaded with ctypes, or None where the numpy fallback runs:
    ``STREAMSCORE_NATIVE=0``, no compiler, or a failed build or load (logged, naming ``what``)."""
    if os.environ.get("STREAMSCORE_NATIVE", "1") == "0":
        return None
    try:
        path = build(source, stem)
        return None if path is None else ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("%s unavailable, using numpy: %s", what, exc)
        return None


Signatures = Mapping[str, tuple[Sequence[Any], Any]]    # function name -> (argtypes, restype)
P, I64 = ctypes.c_void_p, ctypes.c_int64


class Kernel:
    """One C source built and loaded on first use (``load``), its functions' signatures set: ``get()`` is
    the library, or None where the numpy path runs; ``set_enabled`` switches between them (tests)."""

    def __init__(self, source: Path, stem: str, what: str, signatures: Signatures) -> None:
        self.source, self.stem, self.what, self.signatures = source, stem, what, dict(signatures)
        self._lib: Any = None
        self._tried = False

    def get(self) -> Any:
        if not self._tried:
            self._tried = True
            so = load(self.source, self.stem, self.what)
            if so is not None:
                for name, (args, res) in self.signatures.items():
                    fn = getattr(so, name)
                    fn.argtypes, fn.restype = list(args), res
            self._lib = so
        return self._lib

    def set_enabled(self, on: bool) -> None:
        self._lib, self._tried = None, not on


_KERNEL = Kernel(_SRC, "ss_native", "native kernels", {
    "ss_copy_segments": ([P, P, P, P, P, I64], None), "ss_copy_packed": ([P, P, P, P, I64], None),
    "ss_copy_rows": ([P, P, P, I64, I64, I64], None), "ss_non_ascii": ([P, P, P, I64, P], None)})


def lib() -> Any:
    """The loaded kernels, or None (numpy fallbacks) when disabled or not buildable."""
    return _KERNEL.get()


def set_enabled(on: bool) -> None:
    """Tests: switch between the C kernels and the numpy fallbacks."""
    _KERNEL.set_enabled(on)


def _i64(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.int64)


def _check_dst(dst: np.ndarray) -> None:
    if not (dst.dtype == np.uint8 and dst.flags.c_contiguous and dst.flags.writeable):
        raise ValueError("destination must be a writeable contiguous uint8 array")


def _check(dst: np.ndarray, dst_pos: np.ndarray, length: np.ndarray, src: np.ndarray,
           src_pos: np.ndarray | None) -> None:
    """Every copy stays inside both buffers (the C loops trust their arguments)."""
    _check_dst(dst)
    pos = length > 0
    if not pos.any():
        return
    d, k = dst_pos[pos], length[pos]
    if int(d.min()) < 0 or int((d + k).max()) > dst.shape[0]:
        raise ValueError("segment outside the destination buffer")
    if src_pos is None:
        if int(k.sum()) > src.shape[0]:
            raise ValueError("segments longer than the source buffer")
    else:
        s = src_pos[pos]
        if int(s.min()) < 0 or int((s + k).max()) > src.shape[0]:
            raise ValueError("segment outside the source buffer")


def copy_segments(dst: np.ndarray, dst_pos: np.ndarray, src: np.ndarray, src_pos: np.ndarray | None,
                  length: np.ndarray) -> None:
    """``dst[dst_pos[i]:+length[i]] = src[src_pos[i]:+length[i]]``; ``src_pos=None``: source segments
    lie end to end. Lengths <= 0 copy nothing."""
    from schemas.columns import _gather_index

    n = length.shape[0]
    if n == 0:
        return
    so = lib()
    if so is None:
        dst[_gather_index(dst_pos, length)] = src[:int(np.maximum(length, 0).sum())] if src_pos is None \
            else src[_gather_index(src_pos, length)]
        return
    src = np.ascontiguousarray(src, dtype=np.uint8)
    dst_pos, length = _i64(dst_pos), _i64(length)
    src_pos = None if src_pos is None else _i64(src_pos)
    _check(dst, dst_pos, length, src, src_pos)
    if src_pos is None:
        so.ss_copy_packed(dst.ctypes.data, dst_pos.ctypes.data, src.ctypes.data, length.ctypes.data, n)
    else:
        so.ss_copy_segments(dst.ctypes.data, dst_pos.ctypes.data, src.ctypes.data, src_pos.ctypes.data,
                            length.ctypes.data, n)


def copy_rows(dst: np.ndarray, dst_pos: np.ndarray, rows: np.ndarray) -> None:
    """``dst[dst_pos[i]:+w] = rows[i]`` for a (n, w) uint8 matrix, or the same w bytes for every i
    when ``rows`` is 1-D."""
    n = dst_pos.shape[0]
    if n == 0:
        return
    width = rows.shape[-1]
    so = lib()
    if so is None:
        dst[dst_pos[:, None] + np.arange(width)] = rows
        return
    rows = np.ascontiguousarray(rows, dtype=np.uint8)
    if rows.ndim == 2 and rows.shape[0] != n:
        raise ValueError(f"{rows.shape[0]} rows for {n} positions")
    dst_pos = _i64(dst_pos)
    _check_dst(dst)
    if width and (int(dst_pos.min()) < 0 or int(dst_pos.max()) + width > dst.shape[0]):
        raise ValueError("row outside the destination buffer")
    so.ss_copy_rows(dst.ctypes.data, dst_pos.ctypes.data, rows.ctypes.data, width if rows.ndim == 2 else 0,
                    width, n)


def non_ascii(buf: np.ndarray, start: np.ndarray, length: np.ndarray) -> np.ndarray | None:
    """Per segment ``buf[start[i]:+length[i]]``: does it hold a byte >= 0x80? None without the
    kernels (the caller has its numpy way). Lengths <= 0 are empty segments."""
    so = lib()
    if so is None:
        return None
    n = start.shape[0]
    out = np.zeros(n, np.uint8)
    if n == 0:
        return out.view(bool)
    buf = np.ascontiguousarray(buf, dtype=np.uint8)
    start, length = _i64(start), _i64(length)   # the C loop reads nothing for a length <= 0
    pos = length > 0
    if pos.any() and (int(start[pos].min()) < 0 or int((start + length)[pos].max()) > buf.shape[0]):
        raise ValueError("segment outside the buffer")
    so.ss_non_ascii(buf.ctypes.data, start.ctypes.data, length.ctypes.data, n, out.ctypes.data)
    return out.view(bool)
