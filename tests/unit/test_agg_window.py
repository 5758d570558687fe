"""The aggregate kernel in C against the numpy path: bit for bit the same values for every op and window,
replays, null values and a hot key with many entries (its distinct count's table grows)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from models import aggregates, agg_window
from models.aggregates import AggregateEngine, AggregateSpec
from tests.unit.test_models_aggregates import SPECS, _apply, _batches, _events


@pytest.fixture
def kernel() -> Iterator[None]:
    agg_window.set_enabled(True)
    if agg_window.lib() is None:
        pytest.skip("no C compiler: the numpy path only")
    yield
    agg_window.set_enabled(True)


def _run(ev: dict[str, Any], specs: list[AggregateSpec], native: bool, replay: bool = True) -> dict[str, np.ndarray]:
    agg_window.set_enabled(native)
    engine = AggregateEngine(specs, grace_ms=1_200_000)
    states = {p: engine.new_state() for p in range(3)}
    batches = _batches(len(ev["t"]))
    out: dict[str, list[np.ndarray]] = {s.name: [] for s in specs}
    for rows in [*batches, np.concatenate(batches[5:9])] if replay else batches:   # the last: a rewind
        for name, col in _apply(engine, states, ev, rows).columns.items():
            out[name].append(col)
    return {k: np.concatenate(v) for k, v in out.items()}


@pytest.mark.usefixtures("kernel")
@pytest.mark.parametrize("tail_min", [aggregates.TAIL_MIN, 16])
@pytest.mark.parametrize(("keys", "tick_ms"), [(40, 1), (3, 1), (40, 60_000)])   # 3: few hot keys, many entries
def test_the_kernel_equals_the_numpy_path_bit_for_bit(keys: int, tick_ms: int, tail_min: int,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """``tick_ms``: record times rounded to it, so many entries sit exactly on a window's edge; ``tail_min`` 16:
    the entries are read from both runs, the partition's segment and its recent ones."""
    monkeypatch.setattr(aggregates, "TAIL_MIN", tail_min)
    ev = _events(n=3000, keys=keys, seed=keys)
    ev["t"] = ev["t"] // tick_ms * tick_ms
    got, want = _run(ev, SPECS, native=True), _run(ev, SPECS, native=False)
    for s in SPECS:
        assert got[s.name].view(np.int64).tolist() == want[s.name].view(np.int64).tolist(), s.name


def test_the_kernel_refuses_ranges_outside_its_entries_and_an_order_that_is_no_permutation(kernel: None) -> None:
    t = np.arange(4, dtype=np.int64)
    run, empty, count = agg_window.Run(t, t), agg_window.Run(t[:0], t[:0]), [agg_window.Agg(0, 10, None, None)]
    zero, one = np.array([0]), np.array([1])
    with pytest.raises(ValueError, match="outside"):
        agg_window.windows(count, run, empty, zero, np.array([5]), zero, zero, t[:1], t[:1], 0)
    with pytest.raises(ValueError, match="outside"):
        agg_window.windows(count, run, empty, zero, one, zero, one, t[:1], t[:1], 0)
    with pytest.raises(ValueError, match="permutation"):
        agg_window.windows(count, run, empty, np.array([0, 0]), np.array([1, 1]), np.array([0, 0]), np.array([0, 0]),
                           t[:2], t[:2], 0, np.array([0, 0]))
    with pytest.raises(ValueError, match="float64"):
        agg_window.windows([agg_window.Agg(2, 10, t, t[:0])], run, empty, zero, one, zero, zero, t[:1], t[:1], 0)


def test_the_kernel_merges_the_two_runs_and_keeps_each_window(kernel: None) -> None:
    """Entries of one key split over a segment (times 0, 2, 4) and recent ones (1, 3, 5): a sum sees them in
    time order (its rounding is the numpy path's), each window and the query's offset bound what it keeps."""
    a = agg_window.Run(np.array([0, 2, 4]), np.array([0, 2, 4]))
    b = agg_window.Run(np.array([1, 3, 5]), np.array([1, 3, 5]))
    x = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])           # by time
    aggs = [agg_window.Agg(0, 100, None, None), agg_window.Agg(2, 3, x[0::2].copy(), x[1::2].copy()),
            agg_window.Agg(6, 100, np.array([7, 8, 7]), np.array([8, 9, 7]))]
    lo, hi = np.array([0, 0]), np.array([3, 3])
    got = agg_window.windows(aggs, a, b, lo, hi, lo, hi, np.array([5, 5]), np.array([5, 3]), 0, np.array([1, 0]))
    assert got[0].tolist() == [6.0, 4.0]                   # every entry; those at offset <= 3
    assert got[1].tolist() == [(0.4 + 0.5) + 0.6, 0.4]    # times 3..5 (window 3 at time 5), then time 3 only
    assert got[2].tolist() == [3.0, 3.0]                   # hashes 7, 8, 9; at offset <= 3: 7, 8, 8, 9 -> 3


def test_the_merge_kernel_merges_two_sorted_runs_in_place_by_key_time_offset(kernel: None) -> None:
    rng = np.random.default_rng(2)
    cols = [rng.integers(0, 30, 500), rng.integers(0, 20, 500), rng.permutation(500), rng.random(500)]
    order = np.lexsort((cols[2], cols[1], cols[0]))
    a_idx, b_idx = np.sort(order[:380]), np.sort(order[380:])      # two sorted runs of the entries
    a_idx, b_idx = (idx[np.lexsort((cols[2][idx], cols[1][idx], cols[0][idx]))] for idx in (a_idx, b_idx))
    room = [np.zeros(600, c.dtype) for c in cols]
    for r, c in zip(room, cols):
        r[:380] = c[a_idx]
    agg_window.merge(room, 380, [np.ascontiguousarray(c[b_idx]) for c in cols], 120)
    for r, c in zip(room, cols):
        assert r[:500].tolist() == c[order].tolist()
    with pytest.raises(ValueError, match="room"):
        agg_window.merge([r[:450] for r in room], 380, [c[:120].copy() for c in cols], 120)


def test_the_by_key_kernel_counts_entries_into_key_order_only_when_each_key_came_in_time_order(kernel: None) -> None:
    rng = np.random.default_rng(3)
    k = rng.integers(0, 50, 400)
    o = np.arange(400) * 3
    t = o // 7                                               # times rise with arrival, with ties
    order, starts = agg_window.by_key(k, t, o, 60)
    assert order.tolist() == np.lexsort((o, t, k)).tolist()
    assert starts.tolist() == [0, *np.cumsum(np.bincount(k, minlength=60)).tolist()]
    late = t.copy()
    late[np.flatnonzero(k == k[-1])[-1]] = -1                # one entry older than its key's earlier ones
    assert agg_window.by_key(k, late, o, 60) is None
    with pytest.raises(ValueError, match="outside"):
        agg_window.by_key(k, t, o, 49)
