"""Vectorised input-spec checks applied to decoded columns (``validate=`` option)."""

from __future__ import annotations

from typing import Any

import numpy as np

from schemas.codec.types import Field
from schemas.columns import Column
from schemas.errors import ConfigError

_FLOATS = ("float", "double")
_NUMBERS = ("int", "long", "float", "double")


class Rules:
    """``{"finite": [names] | True, "ranges": {name: [lo, hi]}}``; bounds are inclusive."""

    def __init__(self, spec: dict[str, Any] | None, fields: list[Field], decimals: tuple[str, ...] = ()) -> None:
        spec = dict(spec or {})
        unknown = set(spec) - {"finite", "ranges"}
        if unknown:
            raise ConfigError(f"validate: unknown keys {sorted(unknown)}; valid keys are 'finite' and 'ranges'")
        kinds = {f.name: (f.type.kind if f.type is not None else None) for f in fields}
        kinds.update({name: "double" for name in decimals})      # decimals decode to float64
        finite = spec.get("finite", [])
        if finite is True:
            finite = [n for n, k in kinds.items() if k in _FLOATS]
        self.finite: list[str] = list(finite or [])
        self.ranges: dict[str, tuple[float, float]] = {k: (float(v[0]), float(v[1])) for k, v in spec.get("ranges", {}).items()}
        for name in self.finite:
            if kinds.get(name) not in _FLOATS:
                raise ConfigError(f"validate.finite: {name!r} is not a float or double field")
        for name in self.ranges:
            if kinds.get(name) not in _NUMBERS:
                raise ConfigError(f"validate.ranges: {name!r} is not a numeric field")

    def __bool__(self) -> bool:
        return bool(self.finite or self.ranges)

    def check(self, cols: dict[str, Column], nulls: dict[str, np.ndarray], n: int) -> dict[int, str]:
        """{row: message} for every row that breaks a rule (nulls break none)."""
        bad: dict[int, str] = {}
        for name in self.finite:
            col = np.asarray(cols[name])
            hit = ~np.isfinite(col)
            self._note(bad, hit, nulls.get(name), f"{name} is not finite")
        for name, (lo, hi) in self.ranges.items():
            col = np.asarray(cols[name])
            hit = ~((col >= lo) & (col <= hi))
            self._note(bad, hit, nulls.get(name), f"{name} outside [{lo}, {hi}]")
        return bad

    @staticmethod
    def _note(bad: dict[int, str], hit: np.ndarray, null: np.ndarray | None, message: str) -> None:
        if null is not None:
            hit &= ~null
        for i in np.flatnonzero(hit).tolist():
            bad.setdefault(i, message)
