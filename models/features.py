"""Declarative features: model input columns built from input fields, vectorised over a batch.

One feature reads one input field (a decoded column, by its name or dotted path), fills
null / missing values with its ``default``, and applies its transforms in order:

    categorical (first, on strings or enum symbols)
        one_hot {vocabulary, unknown: extra|ignore|error}   -> len(vocabulary) (+1 for extra) columns
        index {vocabulary, unknown: extra|ignore|error}     -> position; extra = len(vocabulary), ignore = -1
        hash {buckets}                                      -> crc32(utf-8 value) mod buckets
    numeric
        log1p, standardize {mean, std}, clip {min, max}, bucketize {boundaries}
        (np.searchsorted side=right), bool (value != 0), hour / weekday of a
        timestamp-millis (UTC; Monday = 0)

A feature of dtype ``string`` passes the value through (for graphs that encode strings
themselves, such as a scikit-learn OneHotEncoder converted to ONNX).

Invariant: ``FeatureBuilder.build`` returns every model input with exactly one row per
batch row; a row whose feature cannot be built is reported in ``bad`` (row -> reason) and
its values in the inputs are placeholders that must not be scored.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models import key_index
from schemas.columns import StrColumn
from schemas.errors import ConfigError

INPUT_DTYPES: tuple[str, ...] = ("float32", "float64", "int32", "int64", "string")
CATEGORICAL = ("one_hot", "index", "hash")
NUMERIC = ("log1p", "standardize", "clip", "bucketize", "bool", "hour", "weekday")
_PARAMS: dict[str, tuple[str, ...]] = {
    "one_hot": ("vocabulary", "unknown"), "index": ("vocabulary", "unknown"), "hash": ("buckets",),
    "standardize": ("mean", "std"), "clip": ("min", "max"), "bucketize": ("boundaries",),
    "log1p": (), "bool": (), "hour": (), "weekday": (),
}
_UNKNOWN = ("extra", "ignore", "error")
_MAX_FIXED = 64        # strings up to this many bytes are grouped as fixed-width bytes (kernel or np.unique)


@dataclass(frozen=True)
class Transform:
    kind: str
    params: tuple[tuple[str, Any], ...] = ()

    def get(self, key: str, default: Any = None) -> Any:
        return dict(self.params).get(key, default)

    @property
    def width(self) -> int:
        if self.kind == "one_hot":
            return len(self.get("vocabulary")) + (1 if self.get("unknown", "extra") == "extra" else 0)
        return 1

    def to_obj(self) -> Any:
        return self.kind if not self.params else {self.kind: {k: (list(v) if isinstance(v, tuple) else v)
                                                              for k, v in self.params}}

    @classmethod
    def parse(cls, raw: Any, where: str) -> Transform:
        params: Any
        if isinstance(raw, str):
            kind, params = raw, {}
        elif isinstance(raw, Mapping) and len(raw) == 1:
            kind, params = next(iter(raw.items()))
            params = params or {}
        else:
            raise ConfigError(f"{where}: a transform is a name or a one-key mapping, got {raw!r}")
        if kind not in _PARAMS:
            raise ConfigError(f"{where}: unknown transform {kind!r}; valid: {sorted(_PARAMS)}")
        if not isinstance(params, Mapping):
            raise ConfigError(f"{where}.{kind}: parameters must be a mapping, got {params!r}")
        unknown = sorted(set(params) - set(_PARAMS[kind]))
        if unknown:
            raise ConfigError(f"{where}.{kind}: unknown parameter(s) {unknown}; valid: {list(_PARAMS[kind])}")
        p = dict(params)
        try:
            if kind in ("one_hot", "index"):
                p["vocabulary"] = tuple(str(v) for v in p["vocabulary"])
                p["unknown"] = p.get("unknown", "extra")
                if p["unknown"] not in _UNKNOWN:
                    raise ConfigError(f"{where}.{kind}.unknown: {p['unknown']!r} is not one of {list(_UNKNOWN)}")
            elif kind == "hash":
                p["buckets"] = int(p["buckets"])
                if p["buckets"] < 1:
                    raise ValueError("buckets must be >= 1")
            elif kind == "standardize":
                p["mean"], p["std"] = float(p["mean"]), float(p["std"])
                if p["std"] <= 0:
                    raise ValueError("std must be > 0")
            elif kind == "clip":
                p["min"] = None if p.get("min") is None else float(p["min"])
                p["max"] = None if p.get("max") is None else float(p["max"])
            elif kind == "bucketize":
                p["boundaries"] = tuple(float(b) for b in p["boundaries"])
                if list(p["boundaries"]) != sorted(p["boundaries"]):
                    raise ValueError("boundaries must be sorted")
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{where}.{kind}: bad parameters {dict(params)!r}: {exc}") from exc
        return cls(kind, tuple(sorted(p.items())))


@dataclass(frozen=True)
class Feature:
    """One model input column (several for one_hot) built from one input field."""

    name: str
    field: str
    dtype: str = "float32"
    default: Any = None
    transforms: tuple[Transform, ...] = ()
    input: str | None = None       # the model input it goes to (None: the spec's input_name)

    @property
    def width(self) -> int:
        return self.transforms[0].width if self.transforms else 1

    @property
    def plain(self) -> bool:
        """Read as-is: the input spec's fast float32 path applies."""
        return self.field == self.name and self.default is None and not self.transforms and self.dtype == "float32"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "dtype": self.dtype}
        if self.field != self.name:
            out["field"] = self.field
        if self.default is not None:
            out["default"] = self.default
        if self.transforms:
            out["transforms"] = [t.to_obj() for t in self.transforms]
        if self.input is not None:
            out["input"] = self.input
        return out

    @classmethod
    def parse(cls, raw: Any, where: str) -> Feature:
        if isinstance(raw, str):
            raw = {"name": raw}
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}: a feature is a mapping, got {raw!r}")
        valid = ("name", "field", "dtype", "default", "transforms", "input")
        unknown = sorted(set(raw) - set(valid))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown} (valid keys here: {', '.join(valid)})")
        name = raw.get("name") or raw.get("field")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}: a feature needs a name (or a field)")
        dtype = str(raw.get("dtype", "float32"))
        if dtype not in INPUT_DTYPES:
            raise ConfigError(f"{where}.dtype: {dtype!r} is not one of {list(INPUT_DTYPES)}")
        ts = raw.get("transforms") or []
        if isinstance(ts, (str, Mapping)):
            ts = [ts]
        transforms = tuple(Transform.parse(t, f"{where}.transforms[{i}]") for i, t in enumerate(ts))
        for i, t in enumerate(transforms):
            if t.kind in CATEGORICAL and i != 0:
                raise ConfigError(f"{where}.transforms[{i}]: {t.kind} reads the raw value and must come first")
            if t.kind == "one_hot" and i != len(transforms) - 1:
                raise ConfigError(f"{where}.transforms[{i}]: one_hot gives several columns and must come last")
        if dtype == "string" and transforms:
            raise ConfigError(f"{where}: a string feature passes the value through; it takes no transforms")
        return cls(name=name, field=str(raw.get("field") or name), dtype=dtype, default=raw.get("default"),
                   transforms=transforms, input=raw.get("input"))


@dataclass
class FeatureBatch:
    """A batch's model inputs (name -> (n, width) array) and the rows that could not be built."""

    inputs: dict[str, np.ndarray] | None
    bad: dict[int, str] = field(default_factory=dict)


def string_bytes(col: StrColumn, n: int) -> tuple[np.ndarray, list[bytes]] | None:
    """(codes into ``uniques``, uniques as bytes) of a string column whose values are at most ``_MAX_FIXED``
    bytes (None for a longer one), numbered in order of first sight (``models.key_index.group``, or one
    ``np.unique``); code -1 = null."""
    grouped = string_groups(col, n)
    return None if grouped is None else (grouped[0], grouped[1].tolist())


def string_groups(col: StrColumn, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``string_bytes`` with the uniques as one zero-padded fixed-width bytes array (``S<width>``)."""
    length = col.length
    width = int(length.max()) if n else 0
    if width > _MAX_FIXED:
        return None
    if key_index.lib() is not None:                  # one hashing pass; only the distinct values padded
        return key_index.group(col.buf, col.start, length, max(width, 1))
    valid = np.flatnonzero(length >= 0)
    uniq, first, inv = np.unique(_padded(col, valid, max(width, 1)), return_index=True, return_inverse=True)
    by_first = np.argsort(first)                           # numbered in order of first sight, as the kernel does
    rank = np.empty(len(uniq), np.int64)
    rank[by_first] = np.arange(len(uniq))
    codes = np.full(n, -1, np.int64)
    codes[valid] = rank[inv.reshape(-1)]
    return codes, uniq[by_first]


def _padded(col: StrColumn, rows: np.ndarray, w: int) -> np.ndarray:
    """The values of ``rows`` (not null) as one zero-padded ``S<w>`` array."""
    pos = col.start[rows][:, None] + np.arange(w)[None, :]
    inside = np.arange(w)[None, :] < col.length[rows][:, None]
    src = col.buf[np.minimum(pos, max(col.buf.shape[0] - 1, 0))] if col.buf.shape[0] else np.zeros(pos.shape, np.uint8)
    return np.ascontiguousarray(np.where(inside, src, 0).astype(np.uint8)).view(f"S{w}").reshape(len(rows))


def string_values(col: Any, symbols: Sequence[str] | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes into ``uniques``, uniques as Python str) of a string / enum column; code -1 = null."""
    if symbols is not None:
        codes = np.asarray(col, np.int64)
        return codes, np.array(list(symbols), dtype=object)
    if isinstance(col, StrColumn):
        grouped = string_bytes(col, n)
        if grouped is not None:
            codes, raw = grouped
            return codes, np.array([u.decode("utf-8", "replace") for u in raw], dtype=object)
        items = col.to_list()
    else:
        items = [None if v is None else str(v) for v in (col.tolist() if isinstance(col, np.ndarray) else col)]
    uniq_map: dict[str, int] = {}
    codes = np.fromiter((-1 if v is None else uniq_map.setdefault(v, len(uniq_map)) for v in items), np.int64, n)
    return codes, np.array(list(uniq_map), dtype=object)


class _Bad:
    """Collects per-row failures: the first reason a row fails is the one reported."""

    def __init__(self, n: int) -> None:
        self.mask = np.zeros(n, bool)
        self.reasons: dict[int, str] = {}

    def add(self, rows: np.ndarray, reason: str) -> None:
        for r in np.flatnonzero(rows & ~self.mask).tolist():
            self.reasons[r] = reason
        self.mask |= rows


class FeatureBuilder:
    """Builds every model input of a spec from a decoded batch's columns."""

    def __init__(self, features: Sequence[Feature], default_input: str) -> None:
        self.features = tuple(features)
        self.inputs: dict[str, tuple[str, int]] = {}      # input name -> (dtype, width), in spec order
        for f in self.features:
            name = f.input or default_input
            dtype, width = self.inputs.get(name, (f.dtype, 0))
            if dtype != f.dtype:
                raise ConfigError(f"features: input {name!r} mixes dtypes {dtype} and {f.dtype} "
                                  f"(feature {f.name!r}); one input has one dtype")
            self.inputs[name] = (dtype, width + f.width)
        self.default_input = default_input

    def column_names(self) -> dict[str, list[str]]:
        """Model input -> the name of each of its columns: the feature's name, or
        ``name=value`` for each one_hot column (``name=<other>`` for the extra one)."""
        out: dict[str, list[str]] = {name: [] for name in self.inputs}
        for f in self.features:
            names = [f.name]
            if f.width > 1:
                t = f.transforms[0]
                names = [f"{f.name}={v}" for v in t.get("vocabulary")] + [f"{f.name}=<other>"][:f.width - len(t.get("vocabulary"))]
            out[f.input or self.default_input].extend(names)
        return out

    def build(self, columns: Mapping[str, Any], nulls: Mapping[str, np.ndarray],
              symbols: Mapping[str, Sequence[str]], n: int) -> FeatureBatch:
        bad = _Bad(n)
        parts: dict[str, list[np.ndarray]] = {name: [] for name in self.inputs}
        for f in self.features:
            parts[f.input or self.default_input].append(self._one(f, columns, nulls, symbols, n, bad))
        out: dict[str, np.ndarray] = {}
        for name, cols in parts.items():
            dtype, _ = self.inputs[name]
            if dtype == "string":
                out[name] = np.stack(cols, axis=1) if len(cols) > 1 else cols[0].reshape(n, 1)
            else:
                mat = np.empty((n, self.inputs[name][1]), dtype=dtype)
                j = 0
                for c in cols:
                    w = 1 if c.ndim == 1 else c.shape[1]
                    mat[:, j:j + w] = c.reshape(n, w)
                    j += w
                out[name] = mat
        return FeatureBatch(out, bad.reasons)

    def _one(self, f: Feature, columns: Mapping[str, Any], nulls: Mapping[str, np.ndarray],
             symbols: Mapping[str, Sequence[str]], n: int, bad: _Bad) -> np.ndarray:
        col = columns.get(f.field)
        first = f.transforms[0] if f.transforms else None
        categorical = f.dtype == "string" or (first is not None and first.kind in CATEGORICAL)
        if col is None:
            if f.default is None:
                bad.add(np.ones(n, bool), f"feature {f.name!r}: field {f.field!r} is missing")
            if categorical:
                return self._categorical(f, np.zeros(n, np.int64), np.array([f.default], dtype=object), n, bad)
            values = np.full(n, np.nan if f.default is None else float(f.default))
            return self._numeric(f, values, bad)
        null = nulls.get(f.field)
        if categorical:
            codes, uniques = string_values(col, symbols.get(f.field), n)
            missing = codes < 0 if null is None else (codes < 0) | null
            if missing.any():
                if f.default is None:
                    bad.add(missing, f"feature {f.name!r}: field {f.field!r} is null and has no default")
                uniques = np.append(uniques, np.array([str(f.default)], dtype=object))
                codes = np.where(missing, len(uniques) - 1, codes)
            return self._categorical(f, codes, uniques, n, bad)
        if isinstance(col, StrColumn):
            raise ConfigError(f"feature {f.name!r}: field {f.field!r} holds strings; give it a categorical "
                              f"transform ({', '.join(CATEGORICAL)}) or dtype string")
        values = np.asarray(col, dtype=np.float64)
        missing = np.isnan(values) if null is None else null | np.isnan(values)
        if missing.any():
            if f.default is None:
                bad.add(missing, f"feature {f.name!r}: field {f.field!r} is null and has no default")
            else:
                values = np.where(missing, float(f.default), values)
        return self._numeric(f, values, bad)

    def _categorical(self, f: Feature, codes: np.ndarray, uniques: np.ndarray, n: int, bad: _Bad) -> np.ndarray:
        if f.dtype == "string":
            return uniques[codes] if len(uniques) else np.full(n, "", dtype=object)
        t = f.transforms[0]
        if t.kind == "hash":
            buckets = int(t.get("buckets"))
            table = np.array([zlib.crc32(str(u).encode("utf-8")) % buckets for u in uniques.tolist()], np.int64)
            return self._numeric(f, table[codes].astype(np.float64), bad, start=1)
        vocab = {v: i for i, v in enumerate(t.get("vocabulary"))}
        where = np.array([vocab.get(str(u), -1) for u in uniques.tolist()], np.int64)
        pos = where[codes] if len(where) else np.full(n, -1, np.int64)
        unknown = pos < 0
        policy = t.get("unknown", "extra")
        if unknown.any() and policy == "error":
            first = uniques[codes[np.flatnonzero(unknown)[0]]]
            bad.add(unknown, f"feature {f.name!r}: {first!r} is not in the vocabulary of field {f.field!r}")
        size = len(vocab)
        if t.kind == "index":
            idx = np.where(unknown, size if policy == "extra" else -1, pos)
            return self._numeric(f, idx.astype(np.float64), bad, start=1)
        out = np.zeros((n, t.width), dtype=f.dtype)
        hit = ~unknown
        out[np.flatnonzero(hit), pos[hit]] = 1
        if policy == "extra":
            out[np.flatnonzero(unknown), size] = 1
        return out

    @staticmethod
    def _numeric(f: Feature, values: np.ndarray, bad: _Bad, start: int = 0) -> np.ndarray:
        x = values
        for t in f.transforms[start:]:
            k = t.kind
            if k == "log1p":
                with np.errstate(invalid="ignore", divide="ignore"):
                    x = np.log1p(x)
            elif k == "standardize":
                x = (x - t.get("mean")) / t.get("std")
            elif k == "clip":
                x = np.clip(x, t.get("min"), t.get("max"))
            elif k == "bucketize":
                x = np.searchsorted(np.asarray(t.get("boundaries")), x, side="right").astype(np.float64)
            elif k == "bool":
                x = (x != 0).astype(np.float64)
            elif k == "hour":
                x = np.floor_divide(x, 3_600_000) % 24
            elif k == "weekday":
                x = (np.floor_divide(x, 86_400_000) + 3) % 7     # 1970-01-01 was a Thursday
        bad_rows = ~np.isfinite(x)
        if bad_rows.any():
            bad.add(bad_rows, f"feature {f.name!r}: not a finite number after its transforms")
            x = np.where(bad_rows, 0, x)
        return x.astype(f.dtype)
