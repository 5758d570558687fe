"""Drift statistics on binned counts (pure numpy and ``math``; no scipy).

All functions compare a reference distribution (frequencies from the model's profile)
with a current window (integer counts on the same bins).

Small-window rule. Under no drift, the current counts are a multinomial sample of the
reference, and ``n * PSI`` is approximately chi-square with ``bins - 1`` degrees of
freedom (PSI is a symmetrised KL divergence, ``2 n KL ~ chi2``; to first order
``PSI ~ sum (p - q)^2 / q = X^2 / n``). So the PSI a window of ``n`` rows shows by chance
alone exceeds ``chi2_ppf(1 - alpha, bins - 1) / n`` only with probability ``alpha``.
The effective threshold of a band is ``max(band, chi2_ppf(1 - alpha, bins - 1) / n)``:
large windows use the usual bands (0.1 warning, 0.25 drift), small windows need more
evidence before they call drift.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

EPS = 1e-4
PSI_WARNING = 0.1
PSI_DRIFT = 0.25
DEFAULT_ALPHA = 1e-3
Status = Literal["ok", "warning", "drift"]


def smooth(freqs: Sequence[float] | np.ndarray, eps: float = EPS) -> np.ndarray:
    """Frequencies with ``eps`` added to every bin, renormalised (no zero bins)."""
    p = np.asarray(freqs, dtype=np.float64)
    total = p.sum()
    p = p / total if total > 0 else np.full(p.shape, 1.0 / max(p.size, 1))
    return (p + eps) / (1.0 + eps * p.size)


def window_freqs(counts: Sequence[float] | np.ndarray, pseudo: float = 0.5) -> np.ndarray:
    """Window frequencies with ``pseudo`` added to each bin's count (Jeffreys): an empty bin in a
    small window is weak evidence, not the ``ln(eps)`` blow-up plain eps smoothing gives it."""
    c = np.asarray(counts, dtype=np.float64)
    return (c + pseudo) / (c.sum() + pseudo * c.size)


def psi(reference: Sequence[float] | np.ndarray, counts: Sequence[float] | np.ndarray, eps: float = EPS) -> float:
    """Population stability index ``sum (q - p) ln(q / p)``: reference eps-smoothed, window
    counts with a 0.5 pseudo-count per bin (``window_freqs``)."""
    p, q = smooth(reference, eps), window_freqs(counts)
    return float(np.sum((q - p) * np.log(q / p)))


def js_distance(reference: Sequence[float] | np.ndarray, counts: Sequence[float] | np.ndarray) -> float:
    """Jensen-Shannon distance, base 2 (in [0, 1])."""
    p, q = smooth(reference, 0.0), smooth(counts, 0.0)
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return math.sqrt(max(0.0, 0.5 * kl(p) + 0.5 * kl(q)))


def ks_binned(reference: Sequence[float] | np.ndarray, counts: Sequence[float] | np.ndarray) -> float:
    """Kolmogorov-Smirnov statistic on the binned CDFs (max CDF gap at the bin edges)."""
    p, q = smooth(reference, 0.0), smooth(counts, 0.0)
    return float(np.max(np.abs(np.cumsum(p) - np.cumsum(q))))


def ks_critical(n: int, n_ref: int | None = None, alpha: float = DEFAULT_ALPHA) -> float:
    """Two-sample KS critical value ``c(alpha) sqrt(1/n + 1/n_ref)`` (one-sample if no ``n_ref``)."""
    if n <= 0:
        return math.inf
    c = math.sqrt(-0.5 * math.log(alpha / 2.0))
    return c * math.sqrt(1.0 / n + (1.0 / n_ref if n_ref else 0.0))


# --- chi-square --------------------------------------------------------------------------

def gammainc_upper(a: float, x: float) -> float:
    """Regularised upper incomplete gamma ``Q(a, x)`` (series / Lentz continued fraction)."""
    if a <= 0:
        raise ValueError("a must be > 0")
    if x <= 0:
        return 1.0
    log_pre = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1.0:
        term = total = 1.0 / a
        ap = a
        for _ in range(10_000):
            ap += 1.0
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(log_pre))
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return min(1.0, math.exp(log_pre) * h)


def chi2_sf(x: float, df: int) -> float:
    """P(X > x) for X ~ chi-square(df)."""
    return gammainc_upper(df / 2.0, x / 2.0) if x > 0 else 1.0


def chi2_ppf(q: float, df: int) -> float:
    """The ``q`` quantile of chi-square(df), by bisection on ``chi2_sf``."""
    lo, hi = 0.0, max(1.0, df + 10.0 * math.sqrt(2.0 * df) + 50.0)
    while chi2_sf(hi, df) > 1.0 - q:
        hi *= 2.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if chi2_sf(mid, df) > 1.0 - q:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def chi_square(reference: Sequence[float] | np.ndarray, counts: Sequence[float] | np.ndarray,
               eps: float = EPS) -> tuple[float, float]:
    """Pearson goodness-of-fit of ``counts`` to the (eps-smoothed) reference: (statistic, p-value)."""
    obs = np.asarray(counts, dtype=np.float64)
    n = obs.sum()
    if n <= 0 or obs.size < 2:
        return 0.0, 1.0
    expected = n * smooth(reference, eps)
    stat = float(np.sum((obs - expected) ** 2 / expected))
    return stat, chi2_sf(stat, obs.size - 1)


def psi_threshold(band: float, bins: int, n: int, alpha: float = DEFAULT_ALPHA) -> float:
    """``max(band, chi2_ppf(1 - alpha, bins - 1) / n)`` (see the module docstring)."""
    if n <= 0:
        return math.inf
    return max(band, _chi2_crit(1.0 - alpha, max(bins - 1, 1)) / n)


_CRIT_CACHE: dict[tuple[float, int], float] = {}


def _chi2_crit(q: float, df: int) -> float:
    key = (q, df)
    if key not in _CRIT_CACHE:
        _CRIT_CACHE[key] = chi2_ppf(q, df)
    return _CRIT_CACHE[key]


# --- one comparison --------------------------------------------------------------------

@dataclass(frozen=True)
class Comparison:
    """Every statistic of one feature (or the score) in one window."""

    psi: float
    js: float
    ks: float | None
    ks_critical: float | None
    chi2: float | None
    chi2_p: float | None
    n: int
    warning_threshold: float
    drift_threshold: float

    @property
    def status(self) -> Status:
        if self.psi > self.drift_threshold:
            return "drift"
        if self.psi > self.warning_threshold:
            return "warning"
        return "ok"


def compare(reference: Sequence[float], counts: Sequence[int], *, categorical: bool, n_ref: int | None = None,
            alpha: float = DEFAULT_ALPHA, warning: float = PSI_WARNING, drift: float = PSI_DRIFT) -> Comparison:
    """PSI (with the small-window thresholds), JS, and KS (ordered bins) or chi-square (categoricals)."""
    n = int(np.sum(counts))
    bins = len(counts)
    ks = ks_crit = chi2 = chi2_p = None
    if categorical:
        chi2, chi2_p = chi_square(reference, counts)
    else:
        ks, ks_crit = ks_binned(reference, counts), ks_critical(n, n_ref, alpha)
    return Comparison(
        psi=psi(reference, counts), js=js_distance(reference, counts), ks=ks, ks_critical=ks_crit,
        chi2=chi2, chi2_p=chi2_p, n=n,
        warning_threshold=psi_threshold(warning, bins, n, alpha), drift_threshold=psi_threshold(drift, bins, n, alpha),
    )


# --- shadow ------------------------------------------------------------------------------

def agreement_rate(agree: int, n_pairs: int) -> float:
    return agree / n_pairs if n_pairs > 0 else math.nan


def histogram_quantile(edges: Sequence[float], counts: Sequence[int], q: float) -> float:
    """The ``q`` quantile of a histogram, interpolating linearly inside the bin.

    ``edges`` has one more entry than ``counts`` would need for a closed last bin; the
    last bin is ``[edges[-1], +inf)`` and is reported as its lower edge.
    """
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    if total <= 0:
        return math.nan
    cum = np.cumsum(c)
    target = q * total
    i = int(np.searchsorted(cum, target, side="left"))
    i = min(i, c.size - 1)
    if i >= len(edges) - 1:
        return float(edges[-1])
    before = cum[i] - c[i]
    frac = (target - before) / c[i] if c[i] > 0 else 0.0
    return float(edges[i] + frac * (edges[i + 1] - edges[i]))
