"""From a decoded batch to prediction fields: features (or a pre hook), model, post hook, heads.

Hooks (``"package.module:function"``), on a columnar batch:

    pre(columns: Mapping[str, np.ndarray], n: int) -> Mapping[str, np.ndarray]
        every model input by name, each an (n, width) array (replaces declarative features)
    post(outputs: Mapping[str, np.ndarray], columns: Mapping[str, np.ndarray], n: int)
        -> Mapping[str, np.ndarray]
        the outputs the heads read (model outputs to keep, new ones added), each with n rows

``columns`` are numpy arrays, one row per event: numbers as numbers, strings and enum
symbols as object arrays of ``str`` (None where null).

Invariants: ``score`` returns one value per requested row or raises; an exception a hook
raises is the rows' problem (isolated by bisection), a result of the wrong shape is the
hook's (``HookContractError``, which stops the pipeline with one message naming the hook).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.base import InputSpec
from models.features import FeatureBatch, string_values
from schemas.columns import StrColumn, take
from schemas.errors import ConfigError, HookContractError, HookError, PredictError
from schemas.prediction import Head, OutputSpec

Columns = Mapping[str, np.ndarray]
PreHook = Callable[[Columns, int], Mapping[str, np.ndarray]]
PostHook = Callable[[Mapping[str, np.ndarray], Columns, int], Mapping[str, np.ndarray]]


def load_hook(ref: str, path: str | None = None) -> Callable[..., Any]:
    """``"package.module:function"`` from ``sys.path`` (``path`` first, if given)."""
    module, sep, attr = ref.partition(":")
    if not sep or not module or not attr:
        raise ConfigError(f"hook {ref!r}: expected 'package.module:function'")
    if path and path not in sys.path:
        sys.path.insert(0, path)
    try:
        fn = getattr(importlib.import_module(module), attr)
    except ImportError as exc:
        raise ConfigError(f"hook {ref!r}: cannot import {module!r}: {exc}") from exc
    except AttributeError as exc:
        raise ConfigError(f"hook {ref!r}: module {module!r} has no {attr!r}") from exc
    if not callable(fn):
        raise ConfigError(f"hook {ref!r} is not callable")
    return fn  # type: ignore[no-any-return]


def friendly_columns(batch: Any, rows: np.ndarray | None) -> dict[str, np.ndarray]:
    """A decoded batch's columns (restricted to ``rows``) as hooks see them."""
    out: dict[str, np.ndarray] = {}
    for name, col in batch.columns.items():
        sub = col if rows is None else take(col, rows)
        if isinstance(sub, StrColumn) or name in batch.symbols:
            codes, uniq = string_values(sub, batch.symbols.get(name), len(sub))
            vals = np.append(uniq, np.array([None], dtype=object))[codes]   # code -1 -> None
        elif isinstance(sub, np.ndarray):
            vals = sub
        else:
            vals = np.array(sub.to_list(), dtype=object)
        mask = batch.nulls.get(name)
        if mask is not None:
            m = mask if rows is None else mask[rows]
            if m.any():
                vals = vals.astype(object)
                vals[m] = None
        out[name] = vals
    return out


@dataclass
class Scored:
    """A slice's result: the primary number per row (telemetry, shadows) and the prediction fields."""

    score: np.ndarray
    fields: dict[str, np.ndarray]


class ModelRunner:
    """Runs one model version the way its registry entry (and the pipeline) says."""

    def __init__(self, model: Any, *, input_spec: InputSpec, output_spec: OutputSpec, threshold: float,
                 pre: PreHook | None = None, post: PostHook | None = None, pre_name: str = "", post_name: str = "",
                 labels: tuple[str, ...] = ()) -> None:
        self.model = model
        self.input_spec = input_spec
        self.output_spec = output_spec
        self.threshold = threshold
        self.pre, self.post = pre, post
        self.pre_name, self.post_name = pre_name, post_name
        self._multi = hasattr(model, "run") and not (input_spec.plain and _legacy(output_spec))
        self._labels = labels

    @property
    def names(self) -> tuple[str, ...]:
        return self.input_spec.names

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(self.output_spec.fields())

    def features(self, batch: Any) -> FeatureBatch:
        """The batch's model inputs (None when a pre hook builds them per slice in ``score``)."""
        if self.pre is not None:
            return FeatureBatch(None)
        return self.input_spec.build(batch.columns, batch.nulls, batch.symbols)

    def score(self, feats: FeatureBatch, rows: np.ndarray, batch: Any) -> Scored:
        """Score ``rows`` of the batch; raises if any of them makes the hooks or the model fail."""
        n = len(rows)
        cols: Columns | None = None
        if feats.inputs is None:
            cols = friendly_columns(batch, rows)
            inputs = self._check_pre(_call(self.pre, f"pre hook {self.pre_name}", "features", cols, n), n)
        else:
            inputs = {k: v[rows] for k, v in feats.inputs.items()}
        if self._multi:
            outputs = dict(self.model.run(inputs))
        else:
            (x,) = inputs.values()
            outputs = {"": np.asarray(self.model.predict(x))}
        if self.post is not None:
            cols = friendly_columns(batch, rows) if cols is None else cols
            outputs = self._check_post(_call(self.post, f"post hook {self.post_name}", "post_hook", outputs, cols, n), n)
        return self._heads(outputs, n)

    def feature_maps(self, feats: FeatureBatch, rows: np.ndarray) -> np.ndarray:
        """Each row's numeric model inputs as {column name: value} (``output.include_features``);
        string inputs are left out (the record's map holds doubles)."""
        maps = np.empty(len(rows), dtype=object)
        maps[:] = [{} for _ in range(len(rows))]
        if feats.inputs is None:
            return maps
        names = self.input_spec.builder.column_names()
        for name, mat in feats.inputs.items():
            if mat.dtype == object:
                continue
            cols = names.get(name) or [f"{name}[{j}]" for j in range(mat.shape[1])]
            for m, values in zip(maps.tolist(), mat[rows].astype(np.float64).tolist()):
                m.update(zip(cols, values))
        return maps

    def _check_pre(self, got: Any, n: int) -> dict[str, np.ndarray]:
        want = self.input_spec.inputs
        if not isinstance(got, Mapping) or set(got) != set(want):
            have = sorted(got) if isinstance(got, Mapping) else type(got).__name__
            raise HookContractError(f"pre hook {self.pre_name}: must return the model inputs {sorted(want)}, "
                                    f"returned {have}")
        out = {}
        for name, (dtype, width) in want.items():
            arr = np.asarray(got[name], dtype=object if dtype == "string" else dtype)
            if arr.ndim == 1 and width == 1:
                arr = arr.reshape(-1, 1)
            if arr.shape != (n, width):
                raise HookContractError(f"pre hook {self.pre_name}: input {name!r} must have shape ({n}, {width}), "
                                        f"got {arr.shape}")
            out[name] = arr
        return out

    def _check_post(self, got: Any, n: int) -> dict[str, np.ndarray]:
        if not isinstance(got, Mapping):
            raise HookContractError(f"post hook {self.post_name}: must return a mapping of outputs, "
                                    f"returned {type(got).__name__}")
        out = {str(k): np.asarray(v) for k, v in got.items()}
        for h in self.output_spec.heads:
            key = h.output if h.output is not None else next(iter(out), None)
            if key is None or key not in out:
                raise HookContractError(f"post hook {self.post_name}: head {h.name!r} reads output {h.output!r}, "
                                        f"the hook returned {sorted(out)}")
            if out[key].shape[:1] != (n,):
                raise HookContractError(f"post hook {self.post_name}: output {key!r} has shape {out[key].shape}, "
                                        f"expected {n} rows")
        return out

    def _heads(self, outputs: Mapping[str, np.ndarray], n: int) -> Scored:
        fields: dict[str, np.ndarray] = {}
        primary: np.ndarray | None = None
        for h in self.output_spec.heads:
            raw = _output(outputs, h, n)
            if h.kind == "classes":
                value, head_fields = self._classes(h, raw, n)
            else:
                value = _column(raw, h, n)
                # the decision compares in the output's own dtype (float32 for most models)
                head_fields = ({h.fields()[0]: value.astype(np.float64), h.fields()[1]: value >= self.threshold}
                               if h.kind == "score" else {h.name: value.astype(np.float64)})
            fields.update(head_fields)
            if primary is None:
                primary = value
        assert primary is not None   # an output spec has at least one head
        return Scored(primary.astype(np.float32), fields)

    def _classes(self, h: Head, raw: np.ndarray, n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        labels = h.labels or self._labels
        probs = np.asarray(raw, dtype=np.float64)
        if probs.ndim != 2 or probs.shape[1] != len(labels):
            raise PredictError(f"head {h.name!r}: expected ({n}, {len(labels)}) class probabilities, got {probs.shape}")
        best = probs.argmax(axis=1)
        top = probs.max(axis=1)
        names = np.array(labels, dtype=object)
        k = min(h.top_k or len(labels), len(labels))
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        picked = np.take_along_axis(probs, order, axis=1).tolist()
        maps = np.empty(n, dtype=object)
        maps[:] = [dict(zip(names[o].tolist(), p)) for o, p in zip(order.tolist(), picked)]
        f = h.fields()
        return top, {f[0]: names[best], f[1]: top, f[2]: maps}


def _call(hook: Callable[..., Any] | None, label: str, reason: str, *args: Any) -> Any:
    """Run a user hook; what it raises becomes a ``HookError`` the rows are dead-lettered with."""
    assert hook is not None
    try:
        return hook(*args)
    except Exception as exc:
        raise HookError(f"{label} raised {type(exc).__name__}: {exc}", reason=reason) from exc


def _legacy(spec: OutputSpec) -> bool:
    """One score head on the first output: what ``predict`` returns."""
    return len(spec.heads) == 1 and spec.heads[0].kind == "score" and spec.heads[0].output is None \
        and spec.heads[0].index is None


def _output(outputs: Mapping[str, np.ndarray], h: Head, n: int) -> np.ndarray:
    if h.output is None:
        if not outputs:
            raise PredictError(f"head {h.name!r}: the model returned no outputs")
        raw = next(iter(outputs.values()))
    else:
        try:
            raw = outputs[h.output]
        except KeyError:
            raise PredictError(f"head {h.name!r}: the model has no output {h.output!r}; "
                               f"outputs: {sorted(outputs)}") from None
    arr = np.asarray(raw)
    if arr.shape[:1] != (n,):
        raise PredictError(f"head {h.name!r}: output has shape {arr.shape} for {n} rows")
    return arr


def _column(raw: np.ndarray, h: Head, n: int) -> np.ndarray:
    """One float value per row (the output's own float dtype): a ``(n,)`` / ``(n, 1)`` output, or
    column ``index`` of ``(n, k)`` (column 1 of a two-class probability matrix by default)."""
    arr = np.asarray(raw)
    if arr.dtype.kind != "f":
        arr = arr.astype(np.float64)
    if arr.ndim == 2 and arr.shape[1] > 1:
        index = h.index if h.index is not None else (1 if arr.shape[1] == 2 else None)
        if index is None or index >= arr.shape[1]:
            raise PredictError(f"head {h.name!r}: output has {arr.shape[1]} columns; set index to pick one")
        return arr[:, index]
    return arr.reshape(n)
