"""The aggregate engine against a plain Python computation: every op and window, the event itself
included, replays deduplicated by offset, bounded eviction, and a changelog round trip; each with the
partitions' tails merged into their sorted segments as in production, and every few entries."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from models import aggregates
from models.agg_records import decode
from models.aggregates import AggregateEngine, AggregateSpec, PartitionState, parse_window
from schemas.errors import ConfigError

SPECS = [
    AggregateSpec("n_1m", "account_id", "count", 60_000),
    AggregateSpec("sum_5m", "account_id", "sum", 300_000, "amount"),
    AggregateSpec("mean_5m", "account_id", "mean", 300_000, "amount"),
    AggregateSpec("min_1m", "account_id", "min", 60_000, "amount"),
    AggregateSpec("max_20m", "account_id", "max", 1_200_000, "amount"),
    AggregateSpec("countries_20m", "account_id", "distinct_count", 1_200_000, "country"),
    AggregateSpec("amounts_1m", "account_id", "count", 60_000, "amount"),
    AggregateSpec("merchants_5m", "merchant", "distinct_count", 300_000, "country"),
]


@pytest.fixture(autouse=True, params=[aggregates.TAIL_MIN, 16], ids=["tail-default", "tail-16"])
def tail_min(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """The entries a partition's tail holds before it is merged: at 16, most entries are read from segments."""
    monkeypatch.setattr(aggregates, "TAIL_MIN", request.param)
    return int(request.param)


def _events(n: int = 3000, parts: int = 3, keys: int = 40, seed: int = 1) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    acct = rng.integers(0, keys, n)
    part = acct % parts                               # keyed input: one key lives in one partition
    t = 1_700_000_000_000 + np.sort(rng.integers(0, 3_600_000, n)) + rng.integers(-5000, 5000, n)   # out of order
    t[rng.random(n) < 0.05] -= 1000                   # and some ties / later-but-earlier times
    amount = np.round(rng.gamma(2.0, 20.0, n), 2)
    amount[rng.random(n) < 0.05] = np.nan             # null amounts
    country = np.array([None if rng.random() < 0.05 else f"c{rng.integers(0, 6)}" for _ in range(n)], dtype=object)
    merchant = np.array([f"m{a % 7}" for a in acct], dtype=object)
    offsets = np.zeros(n, np.int64)
    for p in range(parts):
        sel = part == p
        offsets[sel] = np.arange(int(sel.sum()))
    return {"account_id": np.array([f"a{a}" for a in acct], dtype=object), "part": part.astype(np.int32),
            "t": t.astype(np.int64), "amount": amount, "country": country, "merchant": merchant, "offset": offsets}


def _reference(ev: dict[str, Any], spec: AggregateSpec) -> np.ndarray:
    """Straight from the definition: the key's events at or before this one in its partition, time in (t-W, t]."""
    n = len(ev["t"])
    out = np.full(n, np.nan)
    for i in range(n):
        vals = []
        for j in range(n):
            if ev["part"][j] != ev["part"][i] or ev[spec.key][j] != ev[spec.key][i] or ev["offset"][j] > ev["offset"][i]:
                continue
            if not ev["t"][i] - spec.window_ms < ev["t"][j] <= ev["t"][i]:
                continue
            vals.append(None if spec.field is None else ev[spec.field][j])
        if spec.field is not None:
            vals = [v for v in vals if v is not None and v == v]
        if spec.op == "count":
            out[i] = len(vals)
        elif spec.op == "sum":
            out[i] = sum(vals)
        elif spec.op == "mean":
            out[i] = sum(vals) / len(vals) if vals else np.nan
        elif spec.op == "min":
            out[i] = min(vals) if vals else np.nan
        elif spec.op == "max":
            out[i] = max(vals) if vals else np.nan
        else:
            out[i] = len(set(vals))
    return out


def _batches(n: int, seed: int = 2) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(1, n), 25, replace=False))
    return [np.arange(a, b) for a, b in zip([0, *cuts], [*cuts, n])]


def _apply(engine: AggregateEngine, states: dict[int, PartitionState], ev: dict[str, Any], rows: np.ndarray) -> Any:
    cols = {k: ev[k][rows] for k in ("account_id", "amount", "country", "merchant")}
    return engine.apply(states, cols, {}, {}, ev["part"][rows], ev["offset"][rows], ev["t"][rows])


@pytest.fixture(scope="module")
def small() -> dict[str, Any]:
    return _events(n=1200)


@pytest.fixture(scope="module")
def reference(small: dict[str, Any]) -> dict[str, np.ndarray]:
    return {s.name: _reference(small, s) for s in SPECS}


def test_every_op_and_window_equals_the_definition_event_included(small: dict[str, Any],
                                                                   reference: dict[str, np.ndarray]) -> None:
    engine = AggregateEngine(SPECS, grace_ms=600_000)
    states = {p: engine.new_state() for p in range(3)}
    got = {s.name: np.full(len(small["t"]), np.nan) for s in SPECS}
    for rows in _batches(len(small["t"])):
        applied = _apply(engine, states, small, rows)
        for name, col in applied.columns.items():
            got[name][rows] = col
    for s in SPECS:
        np.testing.assert_allclose(got[s.name], reference[s.name], rtol=1e-9, equal_nan=True, err_msg=s.name)
    assert (got["n_1m"] >= 1).all(), "the event itself is counted"


def test_a_replayed_offset_range_is_not_counted_twice_and_emits_identical_values(small: dict[str, Any],
                                                                                 reference: dict[str, np.ndarray]) -> None:
    engine = AggregateEngine(SPECS, grace_ms=1_200_000)  # the replay reaches back ~17 minutes of record time
    states = {p: engine.new_state() for p in range(3)}
    batches = _batches(len(small["t"]))
    for rows in batches[:15]:
        _apply(engine, states, small, rows)
    held = sum(s.parts[lay.id].o.size for s in states.values() for lay in engine.layouts)
    replay = np.concatenate(batches[8:15])               # a rewind: these were applied already
    again = _apply(engine, states, small, replay)
    assert sum(s.parts[lay.id].o.size for s in states.values() for lay in engine.layouts) == held
    for s in SPECS:
        np.testing.assert_allclose(again.columns[s.name], reference[s.name][replay], equal_nan=True, err_msg=s.name)
    written = {(p, o) for p, o in _logged(engine, again.records)}    # their entries are written again
    assert written >= set(zip(small["part"][replay].tolist(), small["offset"][replay].tolist()))


def test_state_restored_from_the_changelog_continues_exactly(small: dict[str, Any],
                                                             reference: dict[str, np.ndarray]) -> None:
    engine = AggregateEngine(SPECS, grace_ms=60_000)
    states = {p: engine.new_state() for p in range(3)}
    log: dict[int, list[tuple[bytes, bytes | None]]] = {p: [] for p in range(3)}
    batches = _batches(len(small["t"]))
    for rows in batches[:12]:
        for key, value, p in _apply(engine, states, small, rows).records:
            log[p].append((key, value))
    fresh = AggregateEngine(SPECS, grace_ms=60_000)
    restored = {p: fresh.restore(log[p]) for p in range(3)}
    for p in range(3):
        for lay in engine.layouts:
            a, b = states[p].parts[lay.id], restored[p].parts[lay.id]
            assert sorted(zip(a.o.tolist(), a.t.tolist())) == sorted(zip(b.o.tolist(), b.t.tolist()))
    rest = np.concatenate(batches[12:])
    got = _apply(fresh, restored, small, rest)
    for s in SPECS:
        np.testing.assert_allclose(got.columns[s.name], reference[s.name][rest], equal_nan=True, err_msg=s.name)


def test_eviction_keeps_state_bounded_by_the_window_and_grace() -> None:
    ev = _events(n=20_000, keys=500, seed=3)
    engine = AggregateEngine([AggregateSpec("n", "account_id", "count", 60_000)], grace_ms=30_000)
    states = {p: engine.new_state() for p in range(3)}
    compacted: dict[tuple[int, bytes], bytes | None] = {}
    for rows in np.array_split(np.arange(20_000), 40):
        for key, value, p in _apply(engine, states, ev, rows).records:
            compacted[(p, key)] = value
    held = sum(s.parts[engine.layouts[0].id].t.size for s in states.values())
    horizon = 60_000 + 30_000 + 10_000 + 2 * 5000      # window + grace + one batch + the jitter
    in_horizon = int((ev["t"] > ev["t"].max() - horizon).sum())
    assert held <= in_horizon < 2000
    live = [(p, k, v) for (p, k), v in compacted.items() if v is not None]
    assert len(live) <= 3 * 4                            # wholly evicted records are deleted: ~a batch per partition
    assert sum(v is None for v in compacted.values()) == len(compacted) - len(live) > 0
    restored = {p: engine.restore([(k, v) for q, k, v in live if q == p]) for p in range(3)}
    for p in range(3):                                   # what the compacted log keeps rebuilds the state exactly
        a, b = (x.parts[engine.layouts[0].id] for x in (states[p], restored[p]))
        assert sorted(zip(a.o.tolist(), a.t.tolist(), (a.keys.text(c) for c in a.k.tolist()))) == \
            sorted(zip(b.o.tolist(), b.t.tolist(), (b.keys.text(c) for c in b.k.tolist())))
    keys = sum(s.keys() for s in states.values())
    assert keys <= 500 and sum(s.nbytes() for s in states.values()) < 200_000


def test_null_keys_get_no_value_and_write_no_state() -> None:
    engine = AggregateEngine([AggregateSpec("n", "account_id", "count", 60_000)])
    states = {0: engine.new_state()}
    cols = {"account_id": np.array(["a", None, "a"], dtype=object)}
    got = engine.apply(states, cols, {}, {}, np.zeros(3, np.int32), np.arange(3), np.array([1, 2, 3]) * 1000)
    np.testing.assert_array_equal(got.columns["n"], [1.0, np.nan, 2.0])
    [(_, value, _)] = got.records
    assert value is not None and decode(value, ()).offsets.tolist() == [0, 2]


@pytest.mark.parametrize("text,ms", [("10m", 600_000), ("1h", 3_600_000), ("24h", 86_400_000), ("500ms", 500),
                                     ("30s", 30_000), ("1d", 86_400_000)])
def test_windows_parse(text: str, ms: int) -> None:
    assert parse_window(text) == ms


@pytest.mark.parametrize("text", ["10", "10x", "-1m", "0m", "m", "1.5h", ""])
def test_bad_windows_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="window"):
        parse_window(text)


@pytest.mark.parametrize("spec,match", [
    (AggregateSpec("a", "account_id", "median", 1000, "amount"), "op"),        # type: ignore[arg-type]
    (AggregateSpec("a", "account_id", "sum", 1000), "field"),
    (AggregateSpec("a", "", "count", 1000), "key"),
])
def test_bad_specs_are_refused(spec: AggregateSpec, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        AggregateEngine([spec])


def _logged(engine: AggregateEngine, records: list[tuple[bytes, bytes | None, int]]) -> list[tuple[int, int]]:
    """(partition, offset) of every entry the records hold."""
    kinds = {lay.id.encode(): lay.kinds for lay in engine.layouts}
    return [(p, o) for key, value, p in records if value is not None
            for o in decode(value, kinds[key.split(b"\x1f")[0]]).offsets.tolist()]


@pytest.mark.parametrize("distinct", [1, 8, 5000])
def test_dense_codes_equal_np_unique(distinct: int) -> None:
    from models.aggregates import _factorize
    from models.lookups import used_codes

    rng = np.random.default_rng(distinct)
    codes = rng.integers(0, distinct, 20_000)
    used, inv = used_codes(codes, distinct + 3)
    want_used, want_inv = np.unique(codes, return_inverse=True)
    np.testing.assert_array_equal(used, want_used)
    np.testing.assert_array_equal(inv, want_inv.reshape(-1))
    hashes = rng.integers(-2**62, 2**62, distinct)[codes]
    dense, width = _factorize(hashes)
    assert width == len(want_used) and dense.max() < width
    np.testing.assert_array_equal(dense[:, None] == dense[None, :200], hashes[:, None] == hashes[None, :200])


def test_the_entry_order_equals_lexsort_with_many_ties() -> None:
    from models.aggregates import _by_key_time_offset

    rng = np.random.default_rng(9)
    comp = rng.integers(0, 50, 5000)
    eo = rng.permutation(5000)
    np.testing.assert_array_equal(_by_key_time_offset(comp, eo), np.lexsort((eo, comp)))
    np.testing.assert_array_equal(_by_key_time_offset(comp[:1], eo[:1]), [0])
