"""Quality metrics against scikit-learn on the same rows (to 1e-9)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from monitoring import quality


def _rows(seed: int, n: int, ties: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    score = rng.random(n)
    if ties:
        score = np.round(score, 1)
    score[:3] = [0.0, 1.0, 0.5]
    y = rng.random(n) < np.clip(score * 0.8 + 0.05, 0, 1)
    return y, score, score >= 0.5


@pytest.mark.parametrize("seed,n,ties", [(0, 50, False), (1, 1000, False), (2, 500, True), (3, 7, True)])
def test_binary_quality_matches_sklearn(seed: int, n: int, ties: bool) -> None:
    y, s, d = _rows(seed, n, ties)
    q = quality.binary_quality(y, s, d)
    assert q["count"] == n
    assert q["positive_rate"] == pytest.approx(y.mean(), abs=1e-12)
    assert abs(q["auc"] - skm.roc_auc_score(y, s)) < 1e-9
    assert abs(q["log_loss"] - skm.log_loss(y, s, labels=[False, True])) < 1e-9
    assert abs(q["brier"] - skm.brier_score_loss(y, s)) < 1e-9
    assert abs(q["precision"] - skm.precision_score(y, d, zero_division=0)) < 1e-9
    assert abs(q["recall"] - skm.recall_score(y, d, zero_division=0)) < 1e-9
    assert abs(q["f1"] - skm.f1_score(y, d, zero_division=0)) < 1e-9
    assert abs(q["accuracy"] - skm.accuracy_score(y, d)) < 1e-9


def test_ece_by_definition() -> None:
    y, s, _ = _rows(4, 400)
    want = 0.0
    for b in range(quality.ECE_BINS):
        lo, hi = b / quality.ECE_BINS, (b + 1) / quality.ECE_BINS
        m = (s >= lo) & ((s < hi) if b < quality.ECE_BINS - 1 else (s <= hi))
        if m.any():
            want += abs(y[m].mean() - s[m].mean()) * m.sum() / s.size
    assert abs(quality.ece(y, s) - want) < 1e-12


def test_undefined_cases() -> None:
    y = np.array([True, True])
    q = quality.binary_quality(y, np.array([0.2, 0.9]), np.array([False, False]))
    assert np.isnan(q["auc"]) and q["precision"] == 0.0 and q["f1"] == 0.0
    assert quality.binary_quality(np.array([]), np.array([]), np.array([]))["count"] == 0


def test_totals_add_up_to_the_exact_figures() -> None:
    y, s, d = _rows(5, 3000)
    tot = quality.empty_totals()
    for part in np.array_split(np.arange(y.size), 7):
        tot = quality.add_totals(tot, y[part], s[part], d[part])
    got, exact = quality.totals_quality(tot), quality.binary_quality(y, s, d)
    for m in ("count", "positive_rate", "log_loss", "brier", "precision", "recall", "f1", "accuracy", "ece"):
        assert abs(got[m] - exact[m]) < 1e-9, m
    assert abs(got["auc"] - exact["auc"]) < 2e-3   # histogram AUC: ties within a 1/1000 bin count half


def test_class_and_value_quality_match_sklearn() -> None:
    rng = np.random.default_rng(6)
    classes = ["low", "mid", "high", "rare"]
    y = [classes[i] for i in rng.integers(0, 3, 500)]                 # "rare" only ever predicted
    pred = [c if rng.random() < 0.7 else classes[int(rng.integers(0, 4))] for c in y]
    tot = quality.class_totals(None, y[:200], pred[:200])
    tot = quality.class_totals(tot, y[200:], pred[200:])               # additive
    q = quality.class_quality(tot)
    assert q["count"] == 500
    assert abs(q["accuracy"] - skm.accuracy_score(y, pred)) < 1e-12
    assert abs(q["macro_f1"] - skm.f1_score(y, pred, average="macro", zero_division=0)) < 1e-12
    v, p = rng.normal(0, 3, 400), rng.normal(0, 3, 400)
    vt = quality.value_totals(quality.value_totals(None, v[:100], p[:100]), v[100:], p[100:])
    vq = quality.value_quality(vt)
    assert abs(vq["mae"] - skm.mean_absolute_error(v, p)) < 1e-9
    assert abs(vq["rmse"] - np.sqrt(skm.mean_squared_error(v, p))) < 1e-9
    assert np.isnan(quality.class_quality({"pairs": {}})["accuracy"])


def test_score_bin_of_one_score_is_its_score_bins_bin() -> None:
    scores = [0.0, 1e-9, 0.0005, 0.001, 0.4999, 0.5, 0.9994, 0.9999999, 1.0, 1.5, -0.2, float("nan"), float("inf"),
              float("-inf"), *np.random.default_rng(0).random(200).tolist()]
    with np.errstate(invalid="ignore"):
        want = quality.score_bins(np.array(scores)).tolist()
    assert [quality.score_bin(s) for s in scores] == want
