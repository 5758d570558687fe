"""The aggregate kernel in C against the numpy path: bit for bit the same values for every op and window,
replays, null values and a hot key with many entries (its distinct count's table grows)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from models import agg_window
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
@pytest.mark.parametrize(("keys", "tick_ms"), [(40, 1), (3, 1), (40, 60_000)])   # 3: few hot keys, many entries
def test_the_kernel_equals_the_numpy_path_bit_for_bit(keys: int, tick_ms: int) -> None:
    """``tick_ms``: record times rounded to it, so many entries sit exactly on a window's edge."""
    ev = _events(n=3000, keys=keys, seed=keys)
    ev["t"] = ev["t"] // tick_ms * tick_ms
    got, want = _run(ev, SPECS, native=True), _run(ev, SPECS, native=False)
    for s in SPECS:
        assert got[s.name].view(np.int64).tolist() == want[s.name].view(np.int64).tolist(), s.name


def test_the_kernel_refuses_ranges_outside_its_entries(kernel: None) -> None:
    t = np.arange(4, dtype=np.int64)
    with pytest.raises(ValueError, match="outside"):
        agg_window.window(0, 10, t, t, None, 0, np.array([0]), np.array([5]), t[:1], t[:1])
