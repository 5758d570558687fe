"""The soak's sampled read-back plan: offset windows spread evenly over every partition's range."""

from __future__ import annotations

import numpy as np
import pytest

from bench.readback import sample_windows


def test_windows_cover_the_whole_range_evenly_staggered_across_partitions() -> None:
    ranges = {p: (0, 1_000_000) for p in range(4)}
    plan = sample_windows(ranges, windows=50, size=2000)
    assert sorted(plan) == [0, 1, 2, 3]
    points: list[int] = []
    for p, ws in plan.items():
        assert len(ws) == 50
        assert all(e - s == 2000 and 0 <= s and e <= 1_000_000 for s, e in ws)
        assert all(e <= s2 for (_, e), (s2, _) in zip(ws, ws[1:]))        # in order, no overlap
        assert [s // 20_000 for s, _ in ws] == list(range(50))             # one window per stratum
        points += [(s + e) // 2 for s, e in ws]
    # all partitions together: 200 points, evenly spaced over the range (no start or end bias)
    gaps = np.diff(sorted(points))
    assert len(points) == 200 and gaps.min() >= 4_999 and gaps.max() <= 5_001
    assert min(points) == 2_500 and max(points) == 997_500


def test_ranges_not_starting_at_zero_and_uneven_partitions() -> None:
    plan = sample_windows({0: (500, 100_500), 1: (0, 10)}, windows=10, size=100)
    assert len(plan[0]) == 10
    assert all(500 <= s and e <= 100_500 for s, e in plan[0])
    assert plan[0][0][0] >= 500 and plan[0][-1][1] <= 100_500
    assert plan[1] == [(0, 10)]                                  # small: read whole


def test_small_and_empty_partitions() -> None:
    plan = sample_windows({0: (0, 0), 1: (7, 7), 2: (0, 64 * 2000)}, windows=64, size=2000)
    assert plan[0] == [] and plan[1] == []
    assert plan[2] == [(0, 128_000)]                             # exactly windows * size: read whole


def test_windows_stay_inside_the_range_when_they_nearly_fill_it() -> None:
    plan = sample_windows({0: (0, 1001), 1: (0, 1001)}, windows=10, size=100)
    for ws in plan.values():
        assert len(ws) == 10
        assert ws[0][0] >= 0 and ws[-1][1] <= 1001
        assert all(e <= s2 for (_, e), (s2, _) in zip(ws, ws[1:]))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="windows and size"):
        sample_windows({0: (0, 10)}, windows=0, size=10)
