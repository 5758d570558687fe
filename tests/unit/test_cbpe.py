"""CBPE (monitoring/cbpe.py): the isotonic calibration, the expected confusion matrix, and on the
demo model: the estimate tracks realized accuracy within 0.02 on a stationary stream and under
feature drift (no concept drift), and cannot see concept drift."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import pytest

from models import DEMO_REGISTRY
from models.demo_data import DriftSpec, generate, labels
from models.registry import ModelRegistry
from monitoring import cbpe, quality


def test_calibration_is_the_weighted_isotonic_fit_over_the_bins() -> None:
    pos = np.zeros(quality.AUC_BINS)
    neg = np.zeros(quality.AUC_BINS)
    pos[[10, 20, 30]], neg[[10, 20, 30]] = [1, 3, 2], [3, 1, 2]   # rates 0.25, 0.75, 0.5: the last two pool
    cal = cbpe.calibration(pos, neg)
    assert cal is not None
    assert cal[10] == 0.25 and cal[20] == cal[30] == pytest.approx(5 / 8)
    assert cal[0] == 0.25 and cal[15] == 0.25 and cal[25] == cal[20] and cal[-1] == cal[30]   # empty bins
    assert np.all(np.diff(cal) >= 0)
    assert cbpe.calibration(pos, np.zeros(quality.AUC_BINS)) is None


def test_estimate_is_the_expected_confusion_matrix() -> None:
    cal = np.linspace(0, 1, quality.AUC_BINS)
    score = np.array([0.0005, 0.9995, 0.5005, 0.2505])
    d = np.array([False, True, True, False])
    p = cal[quality.score_bins(score)]
    tp, fp, fn, tn = p[d].sum(), (1 - p[d]).sum(), p[~d].sum(), (1 - p[~d]).sum()
    est = cbpe.estimate(score, d, cal)
    assert est["est_precision"] == pytest.approx(tp / (tp + fp))
    assert est["est_recall"] == pytest.approx(tp / (tp + fn))
    assert est["est_accuracy"] == pytest.approx((tp + tn) / 4)
    assert all(np.isnan(v) for v in cbpe.estimate(score, d, None).values())


@lru_cache(maxsize=1)
def _model() -> tuple[Any, Any]:
    reg = ModelRegistry(DEMO_REGISTRY)
    entry = reg.get("fraud-mlp")
    return entry, reg.load(entry)


def _window(n: int, start: int, drift: DriftSpec | None = None, concept: bool = False
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    entry, model = _model()
    cols = generate(n, seed=2, start=start, drift=drift)
    s = model.predict(entry.input_spec.assemble(cols)).astype(np.float64)
    return labels(cols, concept=np.ones(n, bool) if concept else None), s, s >= entry.decision_threshold


def test_estimate_tracks_realized_accuracy_under_feature_drift_not_concept_drift() -> None:
    y, s, d = _window(50_000, 0)                        # the reference: labelled, undrifted
    tot = quality.add_totals(quality.empty_totals(), y, s, d)
    cal = cbpe.calibration(tot["hist_pos"], tot["hist_neg"])
    runs = {"stationary": {}, "f03 +1 sd": {"drift": DriftSpec(shift={"f03": 1.0})},
            "f07 -1 sd, amount x2": {"drift": DriftSpec(shift={"f07": -1.0}, scale={"amount": 2.0})},
            "concept": {"concept": True}}
    got: dict[str, list[tuple[float, float, float, float]]] = {}
    for name, kw in runs.items():
        got[name] = []
        for w in range(3):
            yy, ss, dd = _window(5_000, 100_000 + 5_000 * w, **kw)
            q, est = quality.binary_quality(yy, ss, dd), cbpe.estimate(ss, dd, cal)
            got[name].append((q["accuracy"], est["est_accuracy"], q["precision"], est["est_precision"]))
    for name in ("stationary", "f03 +1 sd", "f07 -1 sd, amount x2"):
        assert all(abs(acc - est) <= 0.02 for acc, est, _p, _e in got[name]), (name, got[name])
    mean = {k: np.mean(v, axis=0) for k, v in got.items()}
    for name in ("f03 +1 sd", "f07 -1 sd, amount x2"):      # the drift moves accuracy; the estimate follows
        assert mean["stationary"][0] - mean[name][0] > 0.01
        assert mean["stationary"][1] - mean[name][1] > 0.01
    # concept drift: the scores do not move, so neither does the estimate (precision 0.4 realized, ~0.74 estimated)
    assert abs(mean["concept"][3] - mean["stationary"][3]) < 0.01
    assert mean["stationary"][2] - mean["concept"][2] > 0.25
