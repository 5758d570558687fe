"""Confidence-based performance estimation (CBPE, as NannyML does offline): precision, recall and
accuracy expected from calibrated scores alone, no labels needed (pure numpy).

Calibration: P(label | score) per score bin (``quality.score_bins``), fitted on labelled rows
(a version's earlier windows: the additive totals' ``hist_pos`` / ``hist_neg``) by isotonic
regression over the bins (pool adjacent violators, weighted by the bins' counts). For each row
``p`` = its bin's calibrated probability and ``d`` = the model's decision:

    E[TP] = sum(d p)   E[FP] = sum(d (1 - p))   E[FN] = sum((1 - d) p)   E[TN] = sum((1 - d)(1 - p))

Valid while P(label | score) stays what it was when calibrated: under covariate shift (the inputs
move, the rule does not) the estimate follows the realized figures; under concept drift (the rule
changes, the scores need not move) it cannot see the change at all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from monitoring.quality import AUC_BINS, score_bins

ESTIMATES = ("est_precision", "est_recall", "est_accuracy")


def calibration(hist_pos: Sequence[float], hist_neg: Sequence[float]) -> np.ndarray | None:
    """Non-decreasing P(label | bin) for every bin (an empty bin takes its left neighbour's value,
    leading empty bins the first filled one's); None unless both classes were seen."""
    pos, neg = np.asarray(hist_pos, dtype=np.float64), np.asarray(hist_neg, dtype=np.float64)
    n = pos + neg
    if pos.sum() <= 0 or neg.sum() <= 0:
        return None
    filled = np.flatnonzero(n > 0)
    blocks: list[list[float]] = []          # [positives, rows, bins in the block]
    for i in filled:
        blocks.append([pos[i], n[i], 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] >= blocks[-1][0] / blocks[-1][1]:
            p, m, k = blocks.pop()
            blocks[-1] = [blocks[-1][0] + p, blocks[-1][1] + m, blocks[-1][2] + k]
    fitted = np.repeat([b[0] / b[1] for b in blocks], [int(b[2]) for b in blocks])
    out = np.empty(n.size)
    owner = np.maximum(np.searchsorted(filled, np.arange(n.size), side="right") - 1, 0)
    out[:] = fitted[owner]
    return out


def estimate(score: np.ndarray, decision: np.ndarray, calib: np.ndarray | None) -> dict[str, float]:
    """Expected precision, recall and accuracy of these rows (NaN without a calibration or rows)."""
    bins = score_bins(np.asarray(score, dtype=np.float64))
    d = np.asarray(decision, dtype=bool)
    return estimate_counts(np.bincount(bins[d], minlength=AUC_BINS), np.bincount(bins[~d], minlength=AUC_BINS), calib)


def estimate_counts(decided: np.ndarray, not_decided: np.ndarray, calib: np.ndarray | None) -> dict[str, float]:
    """``estimate`` from the rows' score-bin counts (``quality.score_bins``), split by the model's
    decision: what the live estimate keeps per window instead of the rows themselves."""
    yes, no = np.asarray(decided, dtype=np.float64), np.asarray(not_decided, dtype=np.float64)
    n = float(yes.sum() + no.sum())
    if calib is None or n == 0:
        return dict.fromkeys(ESTIMATES, math.nan)
    tp, fp = float(yes @ calib), float(yes @ (1 - calib))
    fn, tn = float(no @ calib), float(no @ (1 - calib))
    return {"est_precision": tp / (tp + fp) if tp + fp else 0.0, "est_recall": tp / (tp + fn) if tp + fn else 0.0,
            "est_accuracy": (tp + tn) / n}
