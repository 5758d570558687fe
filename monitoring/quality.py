"""Model quality from joined (score, label, decision) rows: pure numpy, no state.

Each function matches scikit-learn's definition (tests/unit/test_monitoring_quality.py checks
them to 1e-9): ``roc_auc_score``, ``log_loss`` (scores clipped to [eps, 1 - eps], eps the
float64 machine epsilon), ``brier_score_loss``, ``precision/recall/f1_score`` and ``accuracy_score`` of the decisions
(0 where undefined, sklearn's ``zero_division=0``). ECE uses ``ECE_BINS`` equal-width bins.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

ECE_BINS = 10
_EPS = float(np.finfo(np.float64).eps)


def midranks(score: np.ndarray) -> np.ndarray:
    """1-based ranks of ``score``, tied scores sharing their mean rank."""
    order = np.argsort(score, kind="mergesort")
    s = np.asarray(score, dtype=np.float64)[order]
    ranks = np.empty(s.size, dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ends = np.r_[starts[1:], s.size]
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic with tied scores sharing their mean rank; NaN with one class."""
    y = np.asarray(y, dtype=bool)
    pos = int(y.sum())
    neg = y.size - pos
    if pos == 0 or neg == 0:
        return math.nan
    return float((midranks(score)[y].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def log_loss(y: np.ndarray, score: np.ndarray) -> float:
    p = np.clip(np.asarray(score, dtype=np.float64), _EPS, 1 - _EPS)
    yf = np.asarray(y, dtype=np.float64)
    return float(-np.mean(yf * np.log(p) + (1 - yf) * np.log(1 - p)))


def brier(y: np.ndarray, score: np.ndarray) -> float:
    return float(np.mean((np.asarray(score, dtype=np.float64) - np.asarray(y, dtype=np.float64)) ** 2))


def confusion(y: np.ndarray, decision: np.ndarray) -> tuple[int, int, int, int]:
    """(tp, fp, fn, tn) of boolean decisions against boolean labels."""
    y, d = np.asarray(y, dtype=bool), np.asarray(decision, dtype=bool)
    tp = int((y & d).sum())
    fp = int((~y & d).sum())
    fn = int((y & ~d).sum())
    return tp, fp, fn, y.size - tp - fp - fn


def precision_recall_f1(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return precision, recall, f1


def ece(y: np.ndarray, score: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: sum over equal-width score bins of |mean label - mean score| * share."""
    p = np.asarray(score, dtype=np.float64)
    yf = np.asarray(y, dtype=np.float64)
    idx = np.minimum((p * bins).astype(np.int64), bins - 1)
    gap = np.abs(np.bincount(idx, yf, minlength=bins) - np.bincount(idx, p, minlength=bins))
    return float(gap.sum() / p.size)


def binary_quality(y: np.ndarray, score: np.ndarray, decision: np.ndarray) -> dict[str, float]:
    """Every binary metric of one set of joined rows (empty input: count 0, the rest NaN)."""
    n = int(np.asarray(y).size)
    if n == 0:
        return {"count": 0.0, **{m: math.nan for m in METRICS if m != "count"}}
    tp, fp, fn, tn = confusion(y, decision)
    precision, recall, f1 = precision_recall_f1(tp, fp, fn)
    return {"count": float(n), "positive_rate": float(np.mean(np.asarray(y, dtype=np.float64))),
            "auc": auc(y, score), "log_loss": log_loss(y, score), "brier": brier(y, score),
            "precision": precision, "recall": recall, "f1": f1, "accuracy": (tp + tn) / n, "ece": ece(y, score)}


AUC_BINS = 1000   # score histogram resolution of the cumulative AUC (ties within a bin count half)


def score_bins(score: np.ndarray) -> np.ndarray:
    """Each score's bin of the ``AUC_BINS`` equal-width histograms (scores outside [0, 1] in the end bins)."""
    return np.clip((np.asarray(score, dtype=np.float64) * AUC_BINS).astype(np.int64), 0, AUC_BINS - 1)


def score_bin(score: float) -> int:
    """``score_bins`` of one score, without an array (the join counts predictions one at a time)."""
    if not math.isfinite(score):
        with np.errstate(invalid="ignore"):      # NaN and infinities land where the array cast puts them
            return int(score_bins(np.array([score]))[0])
    return min(max(int(score * AUC_BINS), 0), AUC_BINS - 1)


def empty_totals() -> dict[str, Any]:
    """Additive totals of joined rows (JSON-safe): what cumulative quality is computed from."""
    return {"n": 0, "pos": 0, "ll": 0.0, "brier": 0.0, "tp": 0, "fp": 0, "fn": 0,
            "ece_n": [0] * ECE_BINS, "ece_y": [0.0] * ECE_BINS, "ece_p": [0.0] * ECE_BINS,
            "hist_pos": [0] * AUC_BINS, "hist_neg": [0] * AUC_BINS}


def add_totals(tot: dict[str, Any], y: np.ndarray, score: np.ndarray, decision: np.ndarray) -> dict[str, Any]:
    """``tot`` plus the rows (a new dict)."""
    yb = np.asarray(y, dtype=bool)
    p = np.asarray(score, dtype=np.float64)
    pc = np.clip(p, _EPS, 1 - _EPS)
    tp, fp, fn, _tn = confusion(yb, decision)
    ei = np.minimum((p * ECE_BINS).astype(np.int64), ECE_BINS - 1)
    ai = score_bins(p)

    def vec(name: str, add: np.ndarray) -> list[float]:
        return (np.asarray(tot[name], dtype=np.float64) + add).tolist()

    return {"n": int(tot["n"]) + int(yb.size), "pos": int(tot["pos"]) + int(yb.sum()),
            "ll": float(tot["ll"]) - float(np.sum(np.where(yb, np.log(pc), np.log(1 - pc)))),
            "brier": float(tot["brier"]) + float(np.sum((p - yb) ** 2)),
            "tp": int(tot["tp"]) + tp, "fp": int(tot["fp"]) + fp, "fn": int(tot["fn"]) + fn,
            "ece_n": [int(v) for v in vec("ece_n", np.bincount(ei, minlength=ECE_BINS))],
            "ece_y": vec("ece_y", np.bincount(ei, yb.astype(np.float64), minlength=ECE_BINS)),
            "ece_p": vec("ece_p", np.bincount(ei, p, minlength=ECE_BINS)),
            "hist_pos": [int(v) for v in vec("hist_pos", np.bincount(ai[yb], minlength=AUC_BINS))],
            "hist_neg": [int(v) for v in vec("hist_neg", np.bincount(ai[~yb], minlength=AUC_BINS))]}


def totals_quality(tot: dict[str, Any]) -> dict[str, float]:
    """Metrics of additive totals; AUC from the score histograms (exact up to ties within 1/AUC_BINS)."""
    n = int(tot["n"])
    if n == 0:
        return {"count": 0.0, **{m: math.nan for m in METRICS if m != "count"}}
    pos_h = np.asarray(tot["hist_pos"], dtype=np.float64)
    neg_h = np.asarray(tot["hist_neg"], dtype=np.float64)
    pos, neg = pos_h.sum(), neg_h.sum()
    below = np.cumsum(neg_h) - neg_h
    auc_v = float((pos_h * (below + neg_h / 2)).sum() / (pos * neg)) if pos and neg else math.nan
    gap = np.abs(np.asarray(tot["ece_y"], dtype=np.float64) - np.asarray(tot["ece_p"], dtype=np.float64))
    tp, fp, fn = int(tot["tp"]), int(tot["fp"]), int(tot["fn"])
    precision, recall, f1 = precision_recall_f1(tp, fp, fn)
    return {"count": float(n), "positive_rate": int(tot["pos"]) / n, "auc": auc_v,
            "log_loss": float(tot["ll"]) / n, "brier": float(tot["brier"]) / n,
            "precision": precision, "recall": recall, "f1": f1, "accuracy": (n - fp - fn) / n,
            "ece": float(gap.sum() / n)}


METRICS = ("count", "positive_rate", "auc", "log_loss", "brier", "precision", "recall", "f1", "accuracy", "ece")


# --- other heads: ``classes`` (a predicted class label) and ``value`` (a number) ---------------------

CLASS_METRICS = ("count", "accuracy", "macro_f1")
VALUE_METRICS = ("count", "mae", "rmse")


def _macro_f1(pairs: dict[str, int]) -> float:
    """Macro-F1 of ``{"<label>\\t<predicted>": count}`` over every class seen as a label or a prediction
    (scikit-learn's ``f1_score(average="macro")``: a class's F1 is 0 where undefined)."""
    tp: dict[str, int] = {}
    seen_y: dict[str, int] = {}
    seen_p: dict[str, int] = {}
    for key, n in pairs.items():
        y, _, p = key.partition("\t")
        seen_y[y] = seen_y.get(y, 0) + n
        seen_p[p] = seen_p.get(p, 0) + n
        if y == p:
            tp[y] = tp.get(y, 0) + n
    classes = set(seen_y) | set(seen_p)
    f1 = [2 * tp.get(c, 0) / (seen_y.get(c, 0) + seen_p.get(c, 0)) for c in classes]
    return float(np.mean(f1)) if f1 else math.nan


def class_totals(tot: dict[str, Any] | None, y: list[str], predicted: list[str]) -> dict[str, Any]:
    """Additive totals (JSON-safe) of class rows: counts per (label, predicted) pair."""
    pairs = dict((tot or {}).get("pairs", {}))
    for a, b in zip(y, predicted):
        key = f"{a}\t{b}"
        pairs[key] = pairs.get(key, 0) + 1
    return {"pairs": pairs}


def class_quality(tot: dict[str, Any]) -> dict[str, float]:
    pairs = tot["pairs"]
    n = sum(pairs.values())
    if n == 0:
        return {"count": 0.0, "accuracy": math.nan, "macro_f1": math.nan}
    hits = sum(v for k, v in pairs.items() if k.partition("\t")[0] == k.partition("\t")[2])
    return {"count": float(n), "accuracy": hits / n, "macro_f1": _macro_f1(pairs)}


def value_totals(tot: dict[str, Any] | None, y: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    """Additive totals (JSON-safe) of value rows: count, sum of |error|, sum of error squared."""
    err = np.asarray(predicted, dtype=np.float64) - np.asarray(y, dtype=np.float64)
    tot = tot or {"n": 0, "abs": 0.0, "sq": 0.0}
    return {"n": int(tot["n"]) + int(err.size), "abs": float(tot["abs"]) + float(np.abs(err).sum()),
            "sq": float(tot["sq"]) + float((err * err).sum())}


def value_quality(tot: dict[str, Any]) -> dict[str, float]:
    n = int(tot["n"])
    if n == 0:
        return {"count": 0.0, "mae": math.nan, "rmse": math.nan}
    return {"count": float(n), "mae": float(tot["abs"]) / n, "rmse": math.sqrt(float(tot["sq"]) / n)}
