"""Reference profiles: bin edges and frequencies taken from a model's training data.

Binning convention (shared with the drift monitor): ``edges`` has ``k + 1`` entries for
``k`` bins; ``None`` at either end means -inf / +inf. A value ``x`` falls in bin ``i``
when ``edges[i] <= x < edges[i + 1]``, and values beyond the outer edges fall in the
outer bins, i.e. ``bin_index`` only looks at the interior edges.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

PROFILE_SCHEMA = 1
DECILES = np.linspace(0.1, 0.9, 9)


def bin_index(edges: Sequence[float | None], values: np.ndarray) -> np.ndarray:
    """Bin of each value under the convention above (int64, 0 .. len(edges) - 2)."""
    interior = np.asarray(edges[1:-1], dtype=np.float64)
    return np.searchsorted(interior, np.asarray(values, dtype=np.float64), side="right")


def frequencies(edges: Sequence[float | None], values: np.ndarray) -> list[float]:
    counts = np.bincount(bin_index(edges, values), minlength=len(edges) - 1)
    total = max(int(counts.sum()), 1)
    return [float(c) / total for c in counts]


def numeric_profile(values: np.ndarray) -> dict[str, Any]:
    """Decile edges (open ends stored as ``None``) and the training frequency per bin."""
    inner = np.quantile(np.asarray(values, dtype=np.float64), DECILES)
    edges: list[float | None] = [None, *(float(e) for e in inner), None]
    return {"edges": edges, "freqs": frequencies(edges, values)}


def categorical_profile(values: np.ndarray) -> dict[str, float]:
    cats, counts = np.unique(np.asarray(values, dtype=object).astype(str), return_counts=True)
    total = max(int(counts.sum()), 1)
    return {str(c): float(n) / total for c, n in zip(cats, counts)}


def score_profile(scores: np.ndarray, bins: int = 20) -> dict[str, Any]:
    edges = [float(e) for e in np.linspace(0.0, 1.0, bins + 1)]
    return {"edges": edges, "freqs": frequencies(edges, scores)}


def build_profile(
    columns: Mapping[str, np.ndarray],
    *,
    numeric: Sequence[str],
    categorical: Sequence[str],
    scores: np.ndarray,
    metrics: Mapping[str, float],
) -> dict[str, Any]:
    """A JSON-safe reference profile: features, categoricals, score and metrics."""
    return {
        "schema": PROFILE_SCHEMA,
        "n_rows": int(len(scores)),
        "features": {name: numeric_profile(columns[name]) for name in numeric},
        "categoricals": {name: categorical_profile(columns[name]) for name in categorical},
        "score": score_profile(scores),
        **{k: float(v) for k, v in metrics.items()},
    }
