"""Canary verdicts: is a challenger's AUC better or worse than the primary's on the same labels? (pure)

The difference ``AUC(challenger) - AUC(primary)`` gets a two-sided confidence interval at
``level``, by DeLong's method (default; deterministic) or a seeded percentile bootstrap:

- **paired** when both arms scored the same events (a shadow scores every event the primary
  does): the rows are matched by event id and the correlation between the two AUCs is used
  (DeLong's covariance; the bootstrap resamples events, each with both scores);
- **unpaired** otherwise (a canary or A/B route sends each key to one arm): the two AUCs are
  independent (variances add; the bootstrap resamples each arm on its own).

Verdict: ``better`` if the interval lies above 0, ``worse`` if below, else ``not yet known``
(the interval spans 0, or an arm has fewer than ``min_class`` positive or negative labels).
At level 0.95 an equal challenger is called better or worse about 5% of the time
(tests/unit/test_canary.py checks it over repeated seeds).

DeLong et al. (1988), with the midrank formulation of Sun & Xu (2014).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any, Literal

import numpy as np

from monitoring.quality import auc, midranks

Method = Literal["delong", "bootstrap"]
Verdict = Literal["better", "worse", "not yet known"]
MIN_CLASS = 30


@dataclass(frozen=True)
class Rows:
    """The joined rows of one arm: event ids, scores, labels (equal lengths)."""

    eids: Sequence[str]
    score: np.ndarray
    label: np.ndarray

    def __post_init__(self) -> None:
        if not len(self.eids) == len(self.score) == len(self.label):
            raise ValueError("eids, score and label must have equal lengths")

    def take(self, idx: np.ndarray) -> Rows:
        return Rows([self.eids[i] for i in idx], np.asarray(self.score)[idx], np.asarray(self.label)[idx])


@dataclass(frozen=True)
class Comparison:
    method: Method
    level: float
    paired: bool
    n_primary: int
    n_challenger: int
    positives_primary: int
    positives_challenger: int
    auc_primary: float
    auc_challenger: float
    diff: float          # challenger minus primary
    low: float
    high: float
    verdict: Verdict
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def _components(y: np.ndarray, score: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC and DeLong's structural components (V10 over positives, V01 over negatives)."""
    pos, neg = score[y], score[~y]
    m, n = pos.size, neg.size
    tz = midranks(np.concatenate([pos, neg]))
    v10 = (tz[:m] - midranks(pos)) / n
    v01 = 1.0 - (tz[m:] - midranks(neg)) / m
    return float((tz[:m].sum() - m * (m + 1) / 2.0) / (m * n)), v10, v01


def _cov(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.cov(a, b, ddof=1)[0, 1]) if a.size > 1 else 0.0


def delong_unpaired(p: Rows, c: Rows) -> tuple[float, float, float]:
    """(AUC primary, AUC challenger, variance of their difference) for independent samples."""
    out = []
    for rows in (p, c):
        y = np.asarray(rows.label, dtype=bool)
        a, v10, v01 = _components(y, np.asarray(rows.score, dtype=np.float64))
        out.append((a, _cov(v10, v10) / v10.size + _cov(v01, v01) / v01.size))
    return out[0][0], out[1][0], out[0][1] + out[1][1]


def delong_paired(y: np.ndarray, sp: np.ndarray, sc: np.ndarray) -> tuple[float, float, float]:
    """(AUC primary, AUC challenger, variance of their difference) on the same events."""
    y = np.asarray(y, dtype=bool)
    ap, p10, p01 = _components(y, np.asarray(sp, dtype=np.float64))
    ac, c10, c01 = _components(y, np.asarray(sc, dtype=np.float64))
    m, n = p10.size, p01.size
    var = ((_cov(p10, p10) + _cov(c10, c10) - 2 * _cov(p10, c10)) / m
           + (_cov(p01, p01) + _cov(c01, c01) - 2 * _cov(p01, c01)) / n)
    return ap, ac, max(var, 0.0)


def bootstrap_diffs(p: Rows, c: Rows, *, paired: bool, resamples: int, seed: int) -> np.ndarray:
    """``resamples`` values of AUC(challenger) - AUC(primary) on resampled events (NaN where a
    resample lacks a class). Paired: ``p`` and ``c`` are aligned, one index draw serves both."""
    rng = np.random.default_rng(seed)
    yp, sp = np.asarray(p.label, dtype=bool), np.asarray(p.score, dtype=np.float64)
    yc, sc = np.asarray(c.label, dtype=bool), np.asarray(c.score, dtype=np.float64)
    out = np.empty(resamples)
    for b in range(resamples):
        ip = rng.integers(0, yp.size, yp.size)
        ic = ip if paired else rng.integers(0, yc.size, yc.size)
        out[b] = auc(yc[ic], sc[ic]) - auc(yp[ip], sp[ip])
    return out


def pair_up(p: Rows, c: Rows) -> tuple[Rows, Rows] | None:
    """Both arms restricted to their common events, in the same order; None when fewer than half
    of the smaller arm's events are common (the arms saw different events: unpaired)."""
    where = {e: i for i, e in enumerate(p.eids)}
    common = [(where[e], j) for j, e in enumerate(c.eids) if e in where]
    if not common or len(common) < 0.5 * min(len(p.eids), len(c.eids)):
        return None
    ip, ic = (np.array(x, dtype=np.int64) for x in zip(*common))
    return p.take(ip), c.take(ic)


def compare(primary: Rows, challenger: Rows, *, level: float = 0.95, method: Method = "delong",
            min_class: int = MIN_CLASS, resamples: int = 2000, seed: int = 0) -> Comparison:
    """The challenger against the primary on the given rows (see the module docstring)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be within (0, 1), got {level}")
    pair = pair_up(primary, challenger)
    p, c = pair if pair is not None else (primary, challenger)
    yp, yc = np.asarray(p.label, dtype=bool), np.asarray(c.label, dtype=bool)
    counts = {"primary": (int(yp.sum()), int((~yp).sum())), "challenger": (int(yc.sum()), int((~yc).sum()))}

    def result(a_p: float, a_c: float, low: float, high: float, verdict: Verdict, reason: str) -> Comparison:
        return Comparison(method, level, pair is not None, int(yp.size), int(yc.size), counts["primary"][0],
                          counts["challenger"][0], a_p, a_c, a_c - a_p, low, high, verdict, reason)

    short = [f"{arm} has {pos} positive / {neg} negative labels" for arm, (pos, neg) in counts.items()
             if min(pos, neg) < min_class]
    if short:
        return result(auc(yp, np.asarray(p.score)), auc(yc, np.asarray(c.score)), math.nan, math.nan,
                      "not yet known", f"too few labels: {'; '.join(short)} (need {min_class} of each)")
    if method == "delong":
        a_p, a_c, var = (delong_paired(yp, p.score, c.score) if pair is not None else delong_unpaired(p, c))
        half = NormalDist().inv_cdf((1 + level) / 2) * math.sqrt(var)
        low, high = a_c - a_p - half, a_c - a_p + half
    else:
        a_p, a_c = auc(yp, np.asarray(p.score)), auc(yc, np.asarray(c.score))
        diffs = bootstrap_diffs(p, c, paired=pair is not None, resamples=resamples, seed=seed)
        low, high = (float(v) for v in np.nanquantile(diffs, [(1 - level) / 2, (1 + level) / 2]))
    verdict: Verdict = "better" if low > 0 else "worse" if high < 0 else "not yet known"
    return result(a_p, a_c, low, high, verdict, {"better": "the interval lies above 0",
                                                 "worse": "the interval lies below 0",
                                                 "not yet known": "the interval spans 0"}[verdict])
