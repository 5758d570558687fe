"""The model seam: what every backend looks like, and how a batch becomes its input.

A model is anything that follows ``load() / predict(features) / close()``.
``predict`` takes one float32 C-contiguous ``(n, f)`` matrix assembled by its
``InputSpec`` and returns ``n`` float32 scores, one per row, in row order. A model with
several named inputs or outputs (ONNX) also has ``run(inputs) -> outputs``: every named
input as an ``(n, width)`` array in, every named output with ``n`` rows out.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Literal, Protocol, runtime_checkable

import numpy as np

from models.features import INPUT_DTYPES, Feature, FeatureBatch, FeatureBuilder
from schemas.errors import ConfigError, ModelError, ModelLoadError, PredictError

# Where a backend runs its model ("auto": CUDA when available).
Device = Literal["cpu", "cuda", "auto"]


class InputError(ModelError):
    """A batch does not match a model's input spec (missing column, ragged lengths, bad type)."""


FeatureSpec = Feature    # one model input column: a field, its dtype, default and transforms


@dataclass(frozen=True)
class InputSpec:
    """The model's inputs: which fields feed which columns of which named input.

    Invariant: ``assemble`` / ``build`` put feature ``features[j]`` in the columns after
    those of ``features[:j]`` of its input; the order here is the order the artifact was
    trained and exported with. A spec whose features are all plain (a float32 field read
    as-is into the one input) takes the fast ``assemble`` path.
    """

    features: tuple[Feature, ...]
    input_name: str = "features"

    def __post_init__(self) -> None:
        names = [f.name for f in self.features]
        if not names:
            raise ModelError("an input spec needs at least one feature")
        if len(set(names)) != len(names):
            raise ModelError(f"duplicate feature names in input spec: {names}")
        bad = [f"{f.name}:{f.dtype}" for f in self.features if f.dtype not in INPUT_DTYPES]
        if bad:
            raise ModelError(f"unsupported feature dtypes {bad}; valid dtypes are {list(INPUT_DTYPES)}")

    @classmethod
    def of(cls, names: Sequence[str], dtype: str = "float32", *, input_name: str = "features") -> InputSpec:
        return cls(tuple(Feature(n, n, dtype) for n in names), input_name=input_name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def fields(self) -> tuple[str, ...]:
        """The input fields the features read, in feature order, without repeats."""
        return tuple(dict.fromkeys(f.field for f in self.features))

    @property
    def plain(self) -> bool:
        return all(f.plain and f.input in (None, self.input_name) for f in self.features)

    @functools.cached_property
    def builder(self) -> FeatureBuilder:
        return FeatureBuilder(self.features, self.input_name)

    @property
    def inputs(self) -> dict[str, tuple[str, int]]:
        """Model input name -> (dtype, width), in spec order."""
        return dict(self.builder.inputs)

    def __len__(self) -> int:
        return len(self.features)

    def build(self, columns: Mapping[str, Any], nulls: Mapping[str, np.ndarray] | None = None,
              symbols: Mapping[str, Sequence[str]] | None = None) -> FeatureBatch:
        """Every model input for a batch; rows whose features cannot be built are in ``bad``."""
        if self.plain:
            return FeatureBatch({self.input_name: self.assemble(columns)})
        first = next(iter(columns.values()), None)
        n = 0 if first is None else len(first)
        return self.builder.build(columns, nulls or {}, symbols or {}, n)

    def probe(self, n: int) -> dict[str, np.ndarray]:
        """All-zero (empty-string) inputs of ``n`` rows: what a smoke check feeds the model."""
        return {name: (np.full((n, w), "", dtype=object) if dtype == "string" else np.zeros((n, w), dtype=dtype))
                for name, (dtype, w) in self.inputs.items()}

    def assemble(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        """Stack the named columns into a float32 C-contiguous ``(n, f)`` matrix.

        Raises ``InputError`` naming every missing column, or the column whose
        length differs from the first feature's, or which cannot become float32.
        Values are not range-checked here (NaN passes through); that is the decoder's job.
        """
        missing = [name for name in self.names if name not in columns]
        if missing:
            raise InputError(
                f"batch is missing input column(s) {missing}; "
                f"the model needs {list(self.names)}, the batch has {sorted(columns)}"
            )
        n = len(columns[self.names[0]])
        out = np.empty((n, len(self.features)), dtype=np.float32)
        for j, name in enumerate(self.names):
            col = columns[name]
            if len(col) != n:
                raise InputError(
                    f"input column {name!r} has {len(col)} rows, "
                    f"but {self.names[0]!r} has {n}"
                )
            try:
                out[:, j] = col
            except (TypeError, ValueError) as exc:
                raise InputError(f"input column {name!r} cannot be converted to float32: {exc}") from exc
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"input_name": self.input_name, "features": [f.to_dict() for f in self.features]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InputSpec:
        try:
            feats = tuple(Feature.parse(f, f"input_spec.features[{i}]") for i, f in enumerate(data["features"]))
            return cls(feats, input_name=str(data.get("input_name", "features")))
        except ConfigError as exc:
            raise ModelError(str(exc)) from exc
        except (KeyError, TypeError) as exc:
            raise ModelError(f"malformed input_spec {data!r}: {exc!r}") from exc


@runtime_checkable
class Model(Protocol):
    """load / predict(batch) / close. ``predict`` returns exactly one float32 score per row."""

    name: str
    version: str
    input_spec: InputSpec

    def load(self) -> None: ...

    def predict(self, features: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


def check_features(model_label: str, features: np.ndarray, n_features: int) -> None:
    """Raise ``PredictError`` unless ``features`` is a 2-D ``(n, n_features)`` array."""
    if not isinstance(features, np.ndarray) or features.ndim != 2 or features.shape[1] != n_features:
        shape = getattr(features, "shape", type(features).__name__)
        raise PredictError(f"{model_label}: expected features of shape (n, {n_features}), got {shape}")


def check_scores(model_label: str, scores: Any, n_rows: int) -> np.ndarray:
    """Flatten backend output to float32 ``(n,)``; raise ``PredictError`` if it is not one score per row."""
    out = np.asarray(scores, dtype=np.float32).reshape(-1)
    if out.shape[0] != n_rows:
        raise PredictError(
            f"{model_label}: model returned {out.shape[0]} scores for {n_rows} input rows "
            f"(raw output shape {np.shape(scores)})"
        )
    return out


def smoke_check(model: Model, label: str, probe: Callable[[], object] | None = None) -> None:
    """Score two rows before a model serves (``probe``, by default two rows of zeros through
    ``predict``); one that cannot is closed and refused.

    Raises ``ModelLoadError`` (naming ``label``) when the probe raises ``PredictError``;
    any other exception closes the model and propagates.
    """
    try:
        if probe is None:
            model.predict(np.zeros((2, len(model.input_spec)), dtype=np.float32))
        else:
            probe()
    except PredictError as exc:
        model.close()
        raise ModelLoadError(f"{label} failed its smoke check: {exc}") from exc
    except BaseException:
        model.close()
        raise
