"""Drift statistics against hand-written reference formulas (no scipy)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from monitoring import drift


def _ref_psi(p: list[float], counts: list[int], eps: float = 1e-4) -> float:
    n, k = sum(counts), len(p)
    ps = [(x / sum(p) + eps) / (1 + k * eps) for x in p]
    qs = [(c + 0.5) / (n + 0.5 * k) for c in counts]
    return sum((q - pp) * math.log(q / pp) for pp, q in zip(ps, qs))


def _ref_js(p: list[float], q: list[float]) -> float:
    p = [x / sum(p) for x in p]
    q = [x / sum(q) for x in q]
    m = [(a + b) / 2 for a, b in zip(p, q)]
    kl = lambda a: sum(x * math.log2(x / y) for x, y in zip(a, m) if x > 0)  # noqa: E731
    return math.sqrt(0.5 * kl(p) + 0.5 * kl(q))


def test_psi_matches_formula() -> None:
    p = [0.1] * 10
    counts = [5, 10, 20, 30, 0, 10, 10, 5, 5, 5]
    assert drift.psi(p, counts) == pytest.approx(_ref_psi(p, counts), rel=1e-12)
    assert drift.psi(p, [10] * 10) == pytest.approx(0.0, abs=1e-12)


def test_js_distance_base2() -> None:
    assert drift.js_distance([1, 0], [0, 1]) == pytest.approx(1.0)
    p, q = [0.2, 0.3, 0.5], [10, 50, 40]
    assert drift.js_distance(p, q) == pytest.approx(_ref_js(p, q), rel=1e-12)


def test_ks_binned_and_critical() -> None:
    assert drift.ks_binned([0.5, 0.5], [0, 10]) == pytest.approx(0.5)
    assert drift.ks_critical(1000, None, 0.05) == pytest.approx(1.3581 / math.sqrt(1000), rel=1e-3)


@pytest.mark.parametrize("df,x,expected", [(1, 3.841458820694124, 0.05), (9, 27.877164871136445, 0.001),
                                           (4, 9.487729036781154, 0.05), (2, 10.0, math.exp(-5.0))])
def test_chi2_sf_and_ppf(df: int, x: float, expected: float) -> None:
    assert drift.chi2_sf(x, df) == pytest.approx(expected, rel=1e-6)
    assert drift.chi2_ppf(1 - expected, df) == pytest.approx(x, rel=1e-6)


def test_chi_square_statistic() -> None:
    ref, counts = [0.5, 0.3, 0.2], [60, 20, 20]
    stat, p = drift.chi_square(ref, counts, eps=0.0)
    assert stat == pytest.approx((10**2) / 50 + (10**2) / 30 + 0.0)
    assert p == pytest.approx(math.exp(-stat / 2.0), rel=1e-9)  # df = 2: sf = exp(-x/2)


def test_small_windows_need_more_evidence() -> None:
    assert drift.psi_threshold(0.25, 10, 100) == pytest.approx(drift.chi2_ppf(0.999, 9) / 100)
    assert drift.psi_threshold(0.25, 10, 100_000) == 0.25


@pytest.mark.parametrize("n", [50, 200, 1000, 5000])
def test_stationary_samples_rarely_drift(n: int) -> None:
    rng = np.random.default_rng(n)
    ref = [0.1] * 10
    hits = 0
    for _ in range(300):
        counts = np.bincount(rng.integers(0, 10, n), minlength=10)
        hits += drift.compare(ref, counts.tolist(), categorical=False).status != "ok"
    assert hits <= 3  # alpha = 0.001 per window; the raw 0.1 band would fire often at n = 50


def test_real_drift_detected() -> None:
    c = drift.compare([0.1] * 10, [0, 0, 0, 0, 0, 100, 200, 300, 200, 200], categorical=False)
    assert c.status == "drift" and c.ks is not None and c.ks > c.ks_critical


def test_histogram_quantile() -> None:
    edges = [0.0, 1.0, 2.0, 4.0]
    assert drift.histogram_quantile(edges, [10, 10, 0, 0], 0.5) == pytest.approx(1.0)
    assert drift.histogram_quantile(edges, [0, 10, 10, 0], 0.75) == pytest.approx(3.0)
    assert drift.agreement_rate(93, 100) == pytest.approx(0.93)
