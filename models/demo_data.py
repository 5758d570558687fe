"""Seeded synthetic card-payment events with a hidden ground-truth fraud rule.

Invariants:
- Event ``i`` (global index) depends only on ``(seed, i)`` and the drift spec: the
  random draws come in fixed blocks of ``BLOCK`` events, each from a counter-based
  Philox generator keyed by ``(block index, seed)``, so any chunking of a range gives
  the same events as generating it whole.
- Every block draws the same random numbers whether or not drift is on; drift is a
  transform of those draws for events with index >= ``DriftSpec.start_at``. A feature
  that the drift does not name is bit-identical to the undrifted run.
- ``labels`` depends on the numeric model inputs only (covariate drift never changes
  the concept); its noise is a hash of the feature bits, so it is deterministic too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from schemas.errors import ConfigError

BLOCK = 16_384
EPOCH_MS = 1_700_000_000_000  # event_time of global event 0 when no ``now_ms`` is given
EVENT_INTERVAL_MS = 10
ACCOUNT_POOL = 50_000

NUMERIC = tuple(f"f{k:02d}" for k in range(1, 16))
FEATURES: tuple[str, ...] = ("amount", *NUMERIC)  # the model input order

COUNTRIES = {"DE": 0.22, "FR": 0.14, "GB": 0.16, "US": 0.18, "NL": 0.07, "ES": 0.08, "IT": 0.07,
             "PL": 0.04, "SE": 0.02, "CH": 0.02}
HOME_CURRENCY = {"DE": "EUR", "FR": "EUR", "GB": "GBP", "US": "USD", "NL": "EUR", "ES": "EUR",
                 "IT": "EUR", "PL": "PLN", "SE": "SEK", "CH": "CHF"}
CURRENCIES = {"EUR": 0.55, "USD": 0.22, "GBP": 0.15, "PLN": 0.03, "SEK": 0.02, "CHF": 0.03}
MERCHANTS = {"grocery": 0.24, "restaurants": 0.14, "fuel": 0.09, "fashion": 0.10, "electronics": 0.08,
             "travel": 0.06, "gaming": 0.07, "digital_goods": 0.08, "pharmacy": 0.06, "cash": 0.08}
CHANNELS = {"POS": 0.55, "ECOM": 0.33, "ATM": 0.08, "MOTO": 0.04}
CATEGORICALS: dict[str, dict[str, float]] = {
    "currency": CURRENCIES, "merchant_category": MERCHANTS, "country": COUNTRIES, "channel": CHANNELS,
}
FOREIGN_CURRENCY_RATE = 0.10  # share of events not in the country's home currency

# log-amount location per merchant category; amount = exp(mu + AMOUNT_SIGMA * z)
AMOUNT_MU = {"grocery": 3.4, "restaurants": 3.5, "fuel": 3.9, "fashion": 4.3, "electronics": 5.0,
             "travel": 5.6, "gaming": 3.0, "digital_goods": 2.8, "pharmacy": 3.0, "cash": 4.5}
AMOUNT_SIGMA = 0.9
FEATURE_LOC = np.array([0.0, 1.5, -0.5, 10.0, 0.0, 3.0, 0.0, -2.0, 0.0, 50.0, 0.0, 0.2, 5.0, 0.0, 0.0])
FEATURE_SCALE = np.array([1.0, 0.5, 2.0, 3.0, 1.0, 1.5, 1.0, 0.8, 1.0, 12.0, 1.0, 0.1, 2.0, 1.0, 1.0])


def _amount_std() -> float:
    """Standard deviation of the undrifted amount (a lognormal mixture over merchants)."""
    s2 = AMOUNT_SIGMA**2
    m1 = sum(p * math.exp(AMOUNT_MU[c] + s2 / 2) for c, p in MERCHANTS.items())
    m2 = sum(p * math.exp(2 * AMOUNT_MU[c] + 2 * s2) for c, p in MERCHANTS.items())
    return math.sqrt(m2 - m1 * m1)


# "k standard deviations" in DriftSpec.shift means k * FEATURE_STD[name] (undrifted std).
FEATURE_STD: dict[str, float] = {"amount": _amount_std(), **dict(zip(NUMERIC, FEATURE_SCALE.tolist()))}


@lru_cache(maxsize=1)
def _mix_matrix() -> np.ndarray:
    """Fixed 15x15 mixing with unit-norm rows: mixed features are correlated, each with std 1."""
    rng = np.random.default_rng(20240601)
    m = np.eye(15) + np.tril(rng.normal(0.0, 0.35, (15, 15)), -1)  # lower-triangular
    return m / np.linalg.norm(m, axis=1, keepdims=True)


_ACCOUNT_OFFSET = 50.0
_ACCOUNT_POWER = 1.1


@lru_cache(maxsize=1)
def _account_ids() -> np.ndarray:
    return np.array([f"acct-{k:06d}" for k in range(ACCOUNT_POOL)], dtype=object)


def _account_index(u: np.ndarray) -> np.ndarray:
    """Skewed account pick: inverse CDF of the density ``(k + 50) ** -1.1`` on [0, ACCOUNT_POOL)."""
    e = 1.0 - _ACCOUNT_POWER
    lo, hi = _ACCOUNT_OFFSET**e, (ACCOUNT_POOL + _ACCOUNT_OFFSET) ** e
    k = (lo + u * (hi - lo)) ** (1.0 / e) - _ACCOUNT_OFFSET
    return np.clip(k.astype(np.int64), 0, ACCOUNT_POOL - 1)


def _categorical(u: np.ndarray, probs: Mapping[str, float]) -> np.ndarray:
    """Inverse-CDF pick: indexes into ``list(probs)`` for uniforms ``u``."""
    cdf = np.cumsum(np.fromiter(probs.values(), dtype=np.float64))
    cdf /= cdf[-1]
    return np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1)


@dataclass(frozen=True)
class DriftSpec:
    """Covariate drift for events with global index >= ``start_at``.

    ``x' = x * scale[name] + shift[name] * FEATURE_STD[name]`` for amount and f01..f15
    (amount is then clipped to >= 0.01). ``category_mix[col]`` gives new probabilities for
    the listed categories of ``col``; unlisted categories share the remaining mass in
    proportion to their base probabilities.
    """

    start_at: int = 0
    shift: dict[str, float] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)
    category_mix: dict[str, dict[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.start_at < 0:
            raise ConfigError(f"drift start must be >= 0, got {self.start_at}")
        for key, table in (("shift", self.shift), ("scale", self.scale)):
            unknown = sorted(set(table) - set(FEATURES))
            if unknown:
                raise ConfigError(f"drift {key} names unknown feature(s) {unknown}; valid: {list(FEATURES)}")
        for col, mix in self.category_mix.items():
            if col not in CATEGORICALS:
                raise ConfigError(f"drift mix names unknown column {col!r}; valid: {list(CATEGORICALS)}")
            unknown = sorted(set(mix) - set(CATEGORICALS[col]))
            if unknown:
                raise ConfigError(f"drift mix for {col!r} names unknown categories {unknown}; "
                                  f"valid: {list(CATEGORICALS[col])}")
            if any(p < 0 for p in mix.values()) or sum(mix.values()) > 1.0 + 1e-9:
                raise ConfigError(f"drift mix for {col!r} must be probabilities summing to <= 1, got {mix}")

    def mix_probs(self, col: str) -> dict[str, float]:
        """The full drifted distribution of ``col`` (base distribution if not mixed)."""
        base = CATEGORICALS[col]
        given = self.category_mix.get(col)
        if not given:
            return dict(base)
        rest = [c for c in base if c not in given]
        left = max(0.0, 1.0 - sum(given.values()))
        rest_mass = sum(base[c] for c in rest)
        out = {c: given.get(c, 0.0) for c in base}
        for c in rest:
            out[c] = left * base[c] / rest_mass if rest_mass else 0.0
        if sum(out.values()) <= 0:
            raise ConfigError(f"drift mix for {col!r} leaves no probability mass")
        return out

    @classmethod
    def parse(cls, text: str) -> DriftSpec:
        """Parse ``"start=5000,shift=f03:2.0,f07:-1.5,scale=amount:3,mix=channel.ECOM:0.7"``.

        A token with ``=`` starts a key; following tokens without ``=`` add to it.
        """
        return _parse_drift(text)


_DRIFT_KEYS = ("start", "shift", "scale", "mix")


def _parse_number(key: str, token: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(f"drift {key}: {token!r} needs a number after ':', got {raw!r}") from exc
    if not math.isfinite(value):
        raise ConfigError(f"drift {key}: {token!r} must be a finite number")
    return value


def _parse_drift(text: str) -> DriftSpec:
    if not text or not text.strip():
        raise ConfigError(f"empty drift spec; expected e.g. 'start=5000,shift=f03:2.0'; keys: {list(_DRIFT_KEYS)}")
    start = 0
    shift: dict[str, float] = {}
    scale: dict[str, float] = {}
    mix: dict[str, dict[str, float]] = {}
    key: str | None = None
    for token in (t.strip() for t in text.split(",")):
        if not token:
            raise ConfigError(f"drift spec {text!r} has an empty item (doubled or trailing comma)")
        if "=" in token:
            key, _, token = token.partition("=")
            key = key.strip()
            if key not in _DRIFT_KEYS:
                raise ConfigError(f"unknown drift key {key!r} in {text!r}; valid keys: {list(_DRIFT_KEYS)}")
        if key is None:
            raise ConfigError(f"drift item {token!r} comes before any key; valid keys: {list(_DRIFT_KEYS)}")
        if key == "start":
            try:
                start = int(token)
            except ValueError as exc:
                raise ConfigError(f"drift start must be an integer event index, got {token!r}") from exc
            continue
        name, sep, raw = token.rpartition(":")
        if not sep or not name:
            raise ConfigError(f"drift {key} item {token!r} must look like NAME:NUMBER")
        value = _parse_number(key, token, raw)
        if key == "mix":
            col, dot, cat = name.partition(".")
            if not dot:
                raise ConfigError(f"drift mix item {token!r} must look like COLUMN.CATEGORY:PROB")
            mix.setdefault(col, {})[cat] = value
        else:
            (shift if key == "shift" else scale)[name] = value
    return DriftSpec(start_at=start, shift=shift, scale=scale, category_mix=mix)


def _draws(seed: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Uniforms (n, 6) and normals (n, 16) for global events [lo, hi), block by block."""
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    us, zs = [], []
    for b in range(lo // BLOCK, (hi - 1) // BLOCK + 1):
        rng = np.random.Generator(np.random.Philox(key=np.array([b, seed], dtype=np.uint64)))
        u = rng.random((BLOCK, 6))
        z = rng.standard_normal((BLOCK, 16))
        a, e = max(lo - b * BLOCK, 0), min(hi - b * BLOCK, BLOCK)
        us.append(u[a:e])
        zs.append(z[a:e])
    return np.concatenate(us), np.concatenate(zs)


def _pick(u: np.ndarray, col: str, drifted: np.ndarray | None, drift: DriftSpec | None) -> np.ndarray:
    idx = _categorical(u, CATEGORICALS[col])
    if drifted is not None and drift is not None and col in drift.category_mix:
        idx[drifted] = _categorical(u[drifted], drift.mix_probs(col))
    return idx


def _categoricals(u: np.ndarray, drifted: np.ndarray | None, drift: DriftSpec | None) -> dict[str, np.ndarray]:
    """Category indexes per column; currency is the country's home currency unless foreign."""
    country = _pick(u[:, 0], "country", drifted, drift)
    currencies = list(CURRENCIES)
    home = np.array([currencies.index(HOME_CURRENCY[c]) for c in COUNTRIES])[country]
    currency = np.where(u[:, 3] < FOREIGN_CURRENCY_RATE, _categorical(u[:, 4], CURRENCIES), home)
    if drifted is not None and drift is not None and "currency" in drift.category_mix:
        currency[drifted] = _categorical(u[drifted, 4], drift.mix_probs("currency"))
    return {
        "currency": currency,
        "merchant_category": _pick(u[:, 1], "merchant_category", drifted, drift),
        "country": country,
        "channel": _pick(u[:, 2], "channel", drifted, drift),
    }


def _numerics(z: np.ndarray, merchant: np.ndarray) -> dict[str, np.ndarray]:
    """amount (lognormal by merchant category) and f01..f15 (correlated Gaussians)."""
    mu = np.fromiter(AMOUNT_MU.values(), dtype=np.float64)[merchant]
    cols: dict[str, np.ndarray] = {"amount": np.round(np.exp(mu + AMOUNT_SIGMA * z[:, 0]), 2)}
    zt = np.ascontiguousarray(z[:, 1:].T)  # (15, n): one contiguous row per latent
    mix = _mix_matrix()
    for j, name in enumerate(NUMERIC):
        # Elementwise sums, not a BLAS matmul: BLAS results depend on the batch shape,
        # which would break chunk invariance in the last bits.
        acc = mix[j, 0] * zt[0]
        for k in range(1, j + 1):
            acc += mix[j, k] * zt[k]
        cols[name] = FEATURE_LOC[j] + FEATURE_SCALE[j] * acc
    return cols


@lru_cache(maxsize=None)
def _vocab(col: str) -> np.ndarray:
    return np.array(list(CATEGORICALS[col]), dtype=object)


def generate(n: int, *, seed: int = 0, start: int = 0, drift: DriftSpec | None = None,
             now_ms: int | None = None) -> dict[str, np.ndarray]:
    """Events ``start .. start+n-1`` as columns (strings are object arrays of ``str``).

    ``event_time`` is ``EPOCH_MS + index * EVENT_INTERVAL_MS`` unless ``now_ms`` is given,
    in which case every event of this call is stamped ``now_ms`` (as a live producer would).
    """
    if n < 0 or start < 0:
        raise ConfigError(f"n and start must be >= 0, got n={n}, start={start}")
    if n == 0:
        return _empty()
    u, z = _draws(seed, start, start + n)
    gidx = np.arange(start, start + n, dtype=np.int64)
    drifted = gidx >= drift.start_at if drift is not None else None
    cats = _categoricals(u, drifted, drift)
    nums = _numerics(z, cats["merchant_category"])
    if drifted is not None and drift is not None:
        _apply_numeric_drift(nums, drifted, drift)

    prefix = f"evt-{seed}-"
    event_id = np.empty(n, dtype=object)
    event_id[:] = [prefix + s for s in map(str, range(start, start + n))]
    if now_ms is None:
        event_time = EPOCH_MS + gidx * EVENT_INTERVAL_MS
    else:
        event_time = np.full(n, now_ms, dtype=np.int64)
    return {  # Transaction field order
        "event_id": event_id,
        "event_time": event_time,
        "account_id": _account_ids()[_account_index(u[:, 5])],
        "amount": nums.pop("amount"),
        **{col: _vocab(col)[idx] for col, idx in cats.items()},
        **nums,
    }


def _apply_numeric_drift(cols: dict[str, np.ndarray], drifted: np.ndarray, drift: DriftSpec) -> None:
    for name in sorted(set(drift.shift) | set(drift.scale)):
        col = cols[name]
        col[drifted] = col[drifted] * drift.scale.get(name, 1.0) + drift.shift.get(name, 0.0) * FEATURE_STD[name]
    if "amount" in drift.shift or "amount" in drift.scale:
        np.maximum(cols["amount"], 0.01, out=cols["amount"])


def _empty() -> dict[str, np.ndarray]:
    obj = ("event_id", "account_id", "currency", "merchant_category", "country", "channel")
    out: dict[str, np.ndarray] = {k: np.empty(0, dtype=object) for k in obj}
    out["event_time"] = np.empty(0, dtype=np.int64)
    out.update({k: np.empty(0, dtype=np.float64) for k in FEATURES})
    return out


# --- the hidden rule -------------------------------------------------------------------

_LABEL_THRESHOLD = 4.4  # tuned so ~3% of undrifted events are positive


def _hash_logistic(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Deterministic logistic noise from the bits of two float64 columns (splitmix64)."""
    x = np.ascontiguousarray(a, dtype=np.float64).view(np.uint64) ^ (
        np.ascontiguousarray(b, dtype=np.float64).view(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    u = ((x >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
    return np.log(u / (1.0 - u))


def risk(columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """The hidden rule's noiseless risk score (float64)."""
    s = {k: _standard(columns, k) for k in ("f02", "f03", "f07", "f09", "f11")}
    la = np.log1p(np.maximum(np.asarray(columns["amount"], dtype=np.float64), 0.0))
    return (1.3 * s["f03"] - 1.0 * s["f07"] + 1.1 * s["f02"] * s["f11"]
            + 1.4 * np.tanh(la - 5.0) + 0.6 * (s["f09"] ** 2 - 1.0))


def _standard(columns: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    j = NUMERIC.index(name)
    return (np.asarray(columns[name], dtype=np.float64) - FEATURE_LOC[j]) / FEATURE_SCALE[j]


def labels(columns: Mapping[str, np.ndarray], *, concept: np.ndarray | None = None) -> np.ndarray:
    """Ground truth: ``risk + 0.4 * logistic noise > threshold`` (about 3% positives).

    ``concept``: a boolean mask of rows under concept drift. In those rows, where f01 is above its
    mean (about half of them), the rule's f03 and f07 terms change sign: the features and the
    positive rate stay the same, which events are positive does not (the demo model's AUC on
    drifted rows falls from ~0.99 to ~0.87)."""
    r = risk(columns)
    if concept is not None:
        flip = np.asarray(concept, dtype=bool) & (_standard(columns, "f01") > 0)
        r = np.where(flip, r - 2.0 * (1.3 * _standard(columns, "f03") - 1.0 * _standard(columns, "f07")), r)
    return r + 0.4 * _hash_logistic(columns["f14"], columns["f15"]) > _LABEL_THRESHOLD
