"""Synthetic demo data: determinism, chunk invariance, drift, the hidden rule."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models import demo_data
from models.demo_data import BLOCK, CHANNELS, FEATURE_STD, FEATURES, DriftSpec, generate, labels
from schemas.errors import ConfigError

STRING_COLS = ("event_id", "account_id", "currency", "merchant_category", "country", "channel")


def assert_columns_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_columns_types_and_values() -> None:
    cols = generate(2000, seed=1)
    expected = {"event_id", "event_time", "account_id", "amount", "currency", "merchant_category",
                "country", "channel", *FEATURES}
    assert set(cols) == expected
    for k in STRING_COLS:
        assert cols[k].dtype == object and all(type(v) is str for v in cols[k][:50]), k
    for k in FEATURES:
        assert cols[k].dtype == np.float64 and cols[k].shape == (2000,), k
    assert cols["event_time"].dtype == np.int64
    assert set(cols["channel"]) <= set(CHANNELS)
    assert (cols["amount"] > 0).all()
    assert len(set(cols["event_id"])) == 2000
    assert cols["event_id"][0] == "evt-1-0" and cols["event_id"][-1] == "evt-1-1999"


def test_deterministic_and_seed_dependent() -> None:
    assert_columns_equal(generate(500, seed=3), generate(500, seed=3))
    assert not np.array_equal(generate(500, seed=3)["f01"], generate(500, seed=4)["f01"])


def test_prefix_equals_first_rows_of_longer_run() -> None:
    whole = generate(1000, start=0)
    first = generate(100, start=0)
    assert_columns_equal(first, {k: v[:100] for k, v in whole.items()})


def test_chunks_across_block_boundaries_equal_whole() -> None:
    start, n = BLOCK - 300, 2 * BLOCK + 700
    whole = generate(n, seed=5, start=start)
    cuts = [0, 1, 299, 300, 301, BLOCK + 10, n]
    parts = [generate(b - a, seed=5, start=start + a) for a, b in zip(cuts, cuts[1:])]
    joined = {k: np.concatenate([p[k] for p in parts]) for k in whole}
    assert_columns_equal(whole, joined)


@settings(max_examples=15, deadline=None)
@given(start=st.integers(0, 3 * BLOCK), n=st.integers(1, 3000), cut=st.integers(0, 3000))
def test_any_split_is_invariant(start: int, n: int, cut: int) -> None:
    cut = min(cut, n)
    whole = generate(n, seed=2, start=start)
    a = generate(cut, seed=2, start=start)
    b = generate(n - cut, seed=2, start=start + cut)
    assert_columns_equal(whole, {k: np.concatenate([a[k], b[k]]) for k in whole})


def test_event_time_default_and_now_ms() -> None:
    cols = generate(3, start=10)
    assert cols["event_time"].tolist() == [demo_data.EPOCH_MS + i * demo_data.EVENT_INTERVAL_MS
                                           for i in (10, 11, 12)]
    assert generate(3, now_ms=123)["event_time"].tolist() == [123, 123, 123]


def test_account_distribution_is_skewed_over_pool() -> None:
    acct = generate(100_000, seed=0)["account_id"]
    _, counts = np.unique(acct, return_counts=True)
    assert len(counts) <= demo_data.ACCOUNT_POOL
    top_share = np.sort(counts)[::-1][: len(counts) // 100].sum() / counts.sum()
    assert top_share > 0.05  # the top 1% of accounts carry well over 1% of traffic


def test_labels_rate_deterministic_and_feature_driven() -> None:
    cols = generate(200_000, seed=11)
    y = labels(cols)
    assert y.dtype == bool
    assert 0.02 <= y.mean() <= 0.05
    np.testing.assert_array_equal(y, labels(generate(200_000, seed=11)))
    riskier = generate(200_000, seed=11, drift=DriftSpec(shift={"f03": 1.0}))
    assert labels(riskier).mean() > 1.5 * y.mean()


# --- drift -------------------------------------------------------------------------------

def test_shift_moves_only_the_named_feature_after_start() -> None:
    base = generate(20_000, seed=4)
    drifted = generate(20_000, seed=4, drift=DriftSpec(start_at=5000, shift={"f03": 2.0}))
    delta = drifted["f03"][5000:] - base["f03"][5000:]
    np.testing.assert_allclose(delta, 2.0 * FEATURE_STD["f03"])
    assert drifted["f03"][5000:].mean() - base["f03"][5000:].mean() == pytest.approx(2 * FEATURE_STD["f03"])
    np.testing.assert_array_equal(drifted["f03"][:5000], base["f03"][:5000])
    for k in base:
        if k != "f03":
            np.testing.assert_array_equal(drifted[k], base[k], err_msg=k)


def test_scale_multiplies_amount() -> None:
    base = generate(5000, seed=4)
    drifted = generate(5000, seed=4, drift=DriftSpec(scale={"amount": 3.0}))
    np.testing.assert_allclose(drifted["amount"], base["amount"] * 3.0)
    np.testing.assert_array_equal(drifted["f01"], base["f01"])


def test_category_mix_changes_distribution_only_of_that_column() -> None:
    base = generate(50_000, seed=8)
    drifted = generate(50_000, seed=8, drift=DriftSpec(category_mix={"channel": {"ECOM": 0.7}}))
    assert (base["channel"] == "ECOM").mean() == pytest.approx(CHANNELS["ECOM"], abs=0.01)
    assert (drifted["channel"] == "ECOM").mean() == pytest.approx(0.7, abs=0.01)
    for k in ("country", "merchant_category", "currency", "amount", "f05"):
        np.testing.assert_array_equal(drifted[k], base[k], err_msg=k)


def test_mix_probs_spreads_remainder_over_unlisted() -> None:
    probs = DriftSpec(category_mix={"channel": {"ECOM": 0.7}}).mix_probs("channel")
    assert probs["ECOM"] == pytest.approx(0.7)
    assert sum(probs.values()) == pytest.approx(1.0)
    rest = 1 - CHANNELS["ECOM"]
    assert probs["POS"] == pytest.approx(0.3 * CHANNELS["POS"] / rest)


def test_drift_chunk_invariance() -> None:
    spec = DriftSpec(start_at=700, shift={"f07": -1.5}, category_mix={"country": {"US": 0.5}})
    whole = generate(1500, seed=1, drift=spec)
    a, b = generate(600, seed=1, drift=spec), generate(900, seed=1, start=600, drift=spec)
    assert_columns_equal(whole, {k: np.concatenate([a[k], b[k]]) for k in whole})


# --- DriftSpec.parse -----------------------------------------------------------------------

def test_parse_example() -> None:
    spec = DriftSpec.parse("start=5000,shift=f03:2.0,f07:-1.5,scale=amount:3")
    assert spec == DriftSpec(start_at=5000, shift={"f03": 2.0, "f07": -1.5}, scale={"amount": 3.0})


def test_parse_mix_and_spaces() -> None:
    spec = DriftSpec.parse(" mix=channel.ECOM:0.7, channel.ATM:0.1 ,start=3")
    assert spec.start_at == 3
    assert spec.category_mix == {"channel": {"ECOM": 0.7, "ATM": 0.1}}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty drift spec"),
        ("   ", "empty drift spec"),
        ("foo=1", "unknown drift key 'foo'.*valid keys"),
        ("f03:1", "before any key"),
        ("shift=f03", "NAME:NUMBER"),
        ("shift=f03:abc", "needs a number"),
        ("shift=f03:nan", "finite"),
        ("shift=f99:1", r"unknown feature\(s\) \['f99'\].*valid"),
        ("scale=amount:2,", "empty item"),
        ("start=soon", "start must be an integer"),
        ("start=-5", "start must be >= 0"),
        ("mix=channel:0.5", "COLUMN.CATEGORY:PROB"),
        ("mix=planet.MARS:0.5", "unknown column 'planet'"),
        ("mix=channel.BOGUS:0.5", r"unknown categories \['BOGUS'\].*POS"),
        ("mix=channel.ECOM:0.8,channel.POS:0.5", "summing to <= 1"),
    ],
)
def test_parse_rejects_bad_input(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        DriftSpec.parse(text)


def test_generate_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="n and start"):
        generate(-1)
    with pytest.raises(ConfigError, match="seed"):
        generate(5, seed=-1)
    assert all(len(v) == 0 for v in generate(0).values())


def test_concept_drift_changes_which_events_are_positive_not_the_features_or_the_rate() -> None:
    from models import DEMO_REGISTRY
    from models.registry import ModelRegistry
    from monitoring.quality import auc
    from streamscore.produce import label_records

    cols = generate(40_000, seed=12)
    before = labels(cols)
    mask = np.arange(40_000) >= 20_000
    after = labels(cols, concept=mask)
    np.testing.assert_array_equal(after[~mask], before[~mask])            # before START: the old rule
    changed = after[mask] != before[mask]
    assert 0.01 < changed.mean() < 0.05                                    # a few % of rows change label
    assert abs(after[mask].mean() - before[mask].mean()) < 0.005           # the positive rate stays ~3%
    f01 = cols["f01"][mask]
    assert not changed[f01 <= 0].any()                                     # only where f01 is above its mean
    reg = ModelRegistry(DEMO_REGISTRY)
    entry = reg.get("fraud-mlp")
    score = reg.load(entry).predict(entry.input_spec.assemble(cols))
    assert auc(before[mask], score[mask]) > 0.98 and auc(after[mask], score[mask]) < 0.9
    recs = label_records(1000, seed=12, start=19_500, now_ms=0, dup=0.0, missing=0.0, concept_from=20_000)
    got = {json.loads(v)["event_id"]: json.loads(v)["label"] for _k, v in recs}
    assert got == {str(e): bool(y) for e, y in zip(cols["event_id"][19_500:20_500], after[19_500:20_500])}
