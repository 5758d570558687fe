"""Canary verdicts (monitoring/canary.py): DeLong against a direct O(m*n) computation, and the
verdict's error rates over repeated seeds: an equal challenger is called better or worse no more
often than the level allows, a degraded one is called worse."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from monitoring.canary import Rows, compare, delong_paired, delong_unpaired, pair_up

LEVEL = 0.95
SEEDS = 200
# an equal challenger: a false verdict has probability ~0.05 per seed, so over 200 seeds the count is
# ~Binomial(200, 0.05) (mean 10, sd 3.1); allowed: the mean plus 3 sd
MAX_FALSE = 19


def _psi_components(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pos, neg = s[y], s[~y]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    return psi.mean(axis=1), psi.mean(axis=0)


def _events(rng: np.random.Generator, n: int, sep: float, noise: float = 1.0,
            latent: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, a latent signal and a score in (0, 1) of separation ``sep`` (rounded: ties happen)."""
    y = rng.random(n) < 0.3
    z = latent if latent is not None else rng.normal(0, 1, n)
    s = 1 / (1 + np.exp(-(sep * y + 0.7 * z + noise * rng.normal(0, 1, n))))
    return y, z, np.round(s, 3)


def _rows(prefix: str, y: np.ndarray, s: np.ndarray) -> Rows:
    return Rows([f"{prefix}{i}" for i in range(y.size)], s, y)


def test_delong_equals_the_direct_computation_and_auc_equals_sklearn() -> None:
    rng = np.random.default_rng(1)
    y, z, sp = _events(rng, 300, 1.0)
    sc = np.round(1 / (1 + np.exp(-(1.0 * y + 0.7 * z + rng.normal(0, 1, 300)))), 2)   # many ties
    ap, ac, var = delong_paired(y, sp, sc)
    assert abs(ap - roc_auc_score(y, sp)) < 1e-12 and abs(ac - roc_auc_score(y, sc)) < 1e-12
    p10, p01 = _psi_components(y, sp)
    c10, c01 = _psi_components(y, sc)
    m, n = p10.size, p01.size
    want = np.var(p10 - c10, ddof=1) / m + np.var(p01 - c01, ddof=1) / n
    assert abs(var - want) < 1e-12
    y2, _, s2 = _events(rng, 200, 0.5)
    a1, a2, var_u = delong_unpaired(Rows(["x"] * 300, sp, y), Rows(["x"] * 200, s2, y2))
    want_u = sum(np.var(v10, ddof=1) / v10.size + np.var(v01, ddof=1) / v01.size
                 for v10, v01 in (_psi_components(y, sp), _psi_components(y2, s2)))
    assert abs(var_u - want_u) < 1e-12 and abs(a2 - roc_auc_score(y2, s2)) < 1e-12


def test_pairing_by_event_id() -> None:
    s, y = np.array([0.1, 0.9, 0.5]), np.array([False, True, True])
    p, c = Rows(["a", "b", "c"], s, y), Rows(["c", "a", "z"], s, y)
    pp, cc = pair_up(p, c) or (None, None)
    assert pp is not None and cc is not None and list(pp.eids) == list(cc.eids) == ["c", "a"]
    assert pair_up(p, Rows(["x", "y", "a"], s, y)) is None        # 1 of 3 in common: different events


def _verdicts(paired: bool, degrade: float, *, method: str = "delong", seeds: int = SEEDS, n: int = 1500,
              resamples: int = 0) -> dict[str, int]:
    out = {"better": 0, "worse": 0, "not yet known": 0}
    for seed in range(seeds):
        rng = np.random.default_rng([seed, 15])
        y, z, sp = _events(rng, n, 1.2)
        if paired:   # a shadow: the same events, its own noise
            sc = np.round(1 / (1 + np.exp(-((1.2 - degrade) * y + 0.7 * z + rng.normal(0, 1, n)))), 3)
            p, c = _rows("e", y, sp), _rows("e", y, sc)
        else:        # a canary: other events
            yc, _, sc = _events(rng, n // 4, 1.2 - degrade)
            p, c = _rows("p", y, sp), _rows("c", yc, sc)
        res = compare(p, c, level=LEVEL, method=method, seed=seed, **({"resamples": resamples} if resamples else {}))
        assert res.paired is paired
        out[res.verdict] += 1
    return out


@pytest.mark.parametrize("paired", [True, False], ids=["shadow", "canary"])
def test_an_equal_challenger_is_rarely_called_better_or_worse(paired: bool) -> None:
    v = _verdicts(paired, degrade=0.0)
    assert v["better"] + v["worse"] <= MAX_FALSE, v


@pytest.mark.parametrize("paired", [True, False], ids=["shadow", "canary"])
def test_a_degraded_challenger_is_called_worse(paired: bool) -> None:
    v = _verdicts(paired, degrade=0.6)     # AUC ~0.77 -> ~0.68
    assert v["better"] == 0 and v["worse"] >= 0.95 * SEEDS, v


def test_bootstrap_verdicts() -> None:
    """The seeded bootstrap, fewer seeds (each resamples 400 times): same limits, scaled."""
    equal = _verdicts(True, 0.0, method="bootstrap", seeds=100, n=600, resamples=400)
    assert equal["better"] + equal["worse"] <= 5 + 7, equal          # Binomial(100, 0.05): mean 5, 3 sd ~ 6.5
    worse = _verdicts(False, 0.8, method="bootstrap", seeds=20, n=1200, resamples=400)
    assert worse["worse"] >= 19 and worse["better"] == 0, worse
    rng = np.random.default_rng(3)
    y, _, s = _events(rng, 400, 1.0)
    a = compare(_rows("e", y, s), _rows("e", y, s[::-1].copy()), method="bootstrap", seed=5, resamples=300)
    b = compare(_rows("e", y, s), _rows("e", y, s[::-1].copy()), method="bootstrap", seed=5, resamples=300)
    assert a == b                                                        # seeded: the same interval


def test_too_few_labels_is_not_yet_known() -> None:
    rng = np.random.default_rng(4)
    y, _, s = _events(rng, 2000, 2.0)
    yc, _, sc = _events(rng, 60, 0.0)
    res = compare(_rows("p", y, s), _rows("c", yc, sc))
    assert res.verdict == "not yet known" and res.reason.startswith("too few labels: challenger has")
    assert res.as_dict()["low"] is None


class FakeRedis:
    """What ``build_report`` reads: the quality index and the pairs hashes."""

    def __init__(self, prefix: str, arms: dict[str, dict[int, dict[str, object]]]) -> None:
        from monitoring.redis_state import Keys

        self.keys = Keys(prefix)
        self.index = set(arms)
        self.hashes = {self.keys.quality_pairs(*a.rsplit(":", 2)): {str(w): json.dumps(v) for w, v in ws.items()}
                       for a, ws in arms.items()}

    def smembers(self, key: str) -> set[str]:
        assert key == self.keys.quality_index
        return self.index

    def hgetall(self, key: str) -> dict[str, str]:
        return self.hashes.get(key, {})


def _window(rng: np.random.Generator, start: int, eids: list[str], sep: float) -> dict[str, object]:
    y = rng.random(len(eids)) < 0.4
    s = 1 / (1 + np.exp(-(sep * y + rng.normal(0, 1, len(eids)))))
    return {"pipeline": "fraud", "window_start": start, "window_end": start + 10, "count": len(eids),
            "eid": eids, "score": s.tolist(), "label": y.tolist()}


def test_report_picks_the_arms_and_the_windows_since_the_challenger_went_live() -> None:
    from monitoring.canary_report import build_report, render
    from schemas.errors import ConfigError

    rng = np.random.default_rng(9)
    prim = {w: _window(rng, w, [f"p{w}-{i}" for i in range(400)], 2.0) for w in (0, 10, 20)}
    can = {w: _window(rng, w, [f"c{w}-{i}" for i in range(300)], 0.5) for w in (10, 20)}   # live since 10
    r = FakeRedis("px", {"m:1:primary": prim, "m:2:canary": can})
    rep = build_report(r, "px", "m")
    assert (str(rep.primary), str(rep.challenger), rep.windows) == ("m:1:primary", "m:2:canary", (2, 10, 30))
    labels_, scores_ = (prim[10][k] + prim[20][k] for k in ("label", "score"))  # type: ignore[operator]
    want_p = roc_auc_score(labels_, scores_)
    assert abs(rep.result.auc_primary - want_p) < 1e-12 and not rep.result.paired
    assert rep.result.verdict == "worse" and rep.result.n_challenger == 600
    assert "verdict: worse" in render(rep) and "95% CI [" in render(rep)
    one = build_report(r, "px", "m", window=20)
    assert one.windows == (1, 20, 30) and one.result.n_primary == 400
    r2 = FakeRedis("px", {"m:1:primary": prim, "m:2:canary": can, "n:1:shadow": prim})
    with pytest.raises(ConfigError, match="several challengers of m:1:primary: m:2:canary, n:1:shadow"):
        build_report(r2, "px", "m")
    shadow = build_report(r2, "px", "m", challenger="n:1:shadow")
    assert shadow.result.paired and shadow.result.diff == 0 and shadow.result.verdict == "not yet known"
    with pytest.raises(ConfigError, match="no joined labels kept for model 'x'"):
        build_report(r, "px", "x")
    with pytest.raises(ConfigError, match="model m: no challenger"):
        build_report(FakeRedis("px", {"m:1:primary": prim}), "px", "m")
    with pytest.raises(ConfigError, match="window 0: not kept for both"):
        build_report(r, "px", "m", window=0)
