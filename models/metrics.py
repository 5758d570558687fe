"""Offline metrics for model evaluation, computed with numpy only."""

from __future__ import annotations

import numpy as np

from schemas.errors import ModelError


def auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank (Mann-Whitney U) formula; tied scores get their average rank."""
    y = np.asarray(y_true, dtype=bool).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ModelError(f"auc: {y.shape[0]} labels but {s.shape[0]} scores")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ModelError(f"auc needs both classes, got {n_pos} positives and {n_neg} negatives")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    # Ranks are 1-based; a tie group occupying ranks a..b gets (a + b) / 2.
    upper = np.cumsum(counts)
    avg_rank = upper - (counts - 1) / 2.0
    rank_sum = float(avg_rank[inverse][y].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def best_f1_threshold(y_true: np.ndarray, scores: np.ndarray) -> float:
    """The score cut-off (predict positive when score >= it) that maximises F1."""
    y = np.asarray(y_true, dtype=bool).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    n_pos = int(y.sum())
    if n_pos == 0:
        raise ModelError("best_f1_threshold needs at least one positive label")
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    predicted = np.arange(1, s.size + 1)
    # Only cut where the next score differs, so ties land on one side together.
    last_of_tie = np.append(s_sorted[1:] != s_sorted[:-1], True)
    f1 = np.where(last_of_tie, 2.0 * tp / (predicted + n_pos), -1.0)
    return float(s_sorted[int(np.argmax(f1))])
