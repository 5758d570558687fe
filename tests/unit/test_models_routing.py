"""Routing: stable key-hash canary / A-B splits, shadows, config validation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.routing import Arm, RouteSpec, Router, ShadowArm, key_hash, merge_rows, row_labels, split_rows
from schemas.columns import StrColumn
from schemas.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
KEYS = [f"customer-{i:07d}".encode() for i in range(100_000)]


def canary(fraction: float = 0.10, salt: str = "") -> Router:
    return Router(RouteSpec.canary(Arm("fraud", "1"), Arm("fraud", "2"), fraction, salt=salt))


def test_canary_sends_ten_percent_of_distinct_keys() -> None:
    arms = canary(0.10).assign(KEYS)
    assert arms.shape == (len(KEYS),) and set(np.unique(arms).tolist()) == {0, 1}
    assert abs(arms.mean() - 0.10) <= 0.01
    # also for keys of another shape (uuid-like, longer than 8 bytes, varying length)
    other = [f"{i * 2654435761 % 10**9:x}-{i}-session".encode() for i in range(100_000)]
    assert abs(canary(0.10).assign(other).mean() - 0.10) <= 0.01


def test_same_key_same_variant_across_batches_and_representations() -> None:
    router = canary(0.10)
    whole = router.assign(KEYS)
    rng = np.random.default_rng(3)
    idx = rng.permutation(len(KEYS))[:5000]
    sub = [KEYS[i] for i in idx.tolist()]
    assert (router.assign(sub) == whole[idx]).all()                    # other batch, other order
    assert (router.assign(StrColumn.from_bytes(sub)) == whole[idx]).all()  # columnar keys
    repeated = [KEYS[7]] * 100 + [KEYS[8]] * 100
    got = router.assign(repeated)
    assert len(set(got[:100].tolist())) == 1 and len(set(got[100:].tolist())) == 1


def test_hash_is_stable_across_processes_and_releases() -> None:
    # Pinned values: changing the hash would silently move live users between variants.
    sample = [b"", b"a", b"customer-0000001", b"0123456789abcdef0", "cl\u00e9".encode()]
    expected = key_hash(sample)
    code = ("from models.routing import key_hash; import sys;"
            "print(','.join(str(int(h)) for h in key_hash([b'', b'a', b'customer-0000001',"
            " b'0123456789abcdef0', 'cl\\u00e9'.encode()])))")
    env_out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                             env={"PYTHONHASHSEED": "12345", "PATH": ""}, check=True).stdout.strip()
    assert [int(x) for x in env_out.split(",")] == [int(h) for h in expected]
    assert [int(h) for h in expected] == [7175312947680778460, 9543865856013296214, 16265990525360398443,
                                          11906342951435783073, 12452384342941560763]


def test_null_keys_and_strcolumn_nulls_route_like_empty_key() -> None:
    router = canary(0.5)
    col = StrColumn.from_bytes([None, b"", b"x"])
    assert router.assign(col)[0] == router.assign([b""])[0] == router.assign([None])[0]
    assert len(router.assign([])) == 0


def test_salt_changes_the_split_but_keeps_the_fraction() -> None:
    a, b = canary(0.10, salt="exp-1").assign(KEYS), canary(0.10, salt="exp-2").assign(KEYS)
    assert abs(b.mean() - 0.10) <= 0.01
    overlap = ((a == 1) & (b == 1)).mean()
    assert overlap < 0.02  # independent experiments: ~1% of keys in both canaries, not 10%


def test_growing_the_canary_only_moves_keys_into_it() -> None:
    small, big = canary(0.05).assign(KEYS), canary(0.20).assign(KEYS)
    assert ((small == 1) <= (big == 1)).all()
    assert abs(big.mean() - 0.20) <= 0.01


def test_ab_weights_within_tolerance() -> None:
    spec = RouteSpec("ab", (Arm("m", "1", 5), Arm("m", "2", 3), Arm("m", "3", 2)), salt="ab")
    counts = np.bincount(Router(spec).assign(KEYS), minlength=3) / len(KEYS)
    assert np.allclose(counts, [0.5, 0.3, 0.2], atol=0.01)
    assert spec.fractions == pytest.approx((0.5, 0.3, 0.2))


def test_split_rows_partitions_the_batch() -> None:
    spec = RouteSpec("ab", (Arm("m", "1"), Arm("m", "2"), Arm("m", "3")))
    router = Router(spec)
    keys = KEYS[:1001]
    parts = router.split(keys)
    assert [p.arm.version for p in parts] == ["1", "2", "3"]
    allrows = np.concatenate([p.rows for p in parts])
    assert sorted(allrows.tolist()) == list(range(1001))
    assign = router.assign(keys)
    for p in parts:
        assert (np.diff(p.rows) > 0).all() and (assign[p.rows] == p.index).all()
    assert [r.tolist() for r in split_rows(np.array([2, 0, 2, 0]), 4)] == [[1, 3], [], [0, 2], []]
    # each arm scores its rows; the merged scores and per-row versions line up with the batch
    merged = merge_rows(len(keys), [(p.rows, np.full(len(p.rows), float(p.index))) for p in parts])
    assert (merged == assign).all()
    versions = row_labels(assign, [a.version or "" for a in spec.arms])
    assert versions.tolist() == [str(a + 1) for a in assign.tolist()]


def test_single_route_and_shadows() -> None:
    spec = RouteSpec.single("fraud", shadow=[ShadowArm("fraud-torch", "1")])
    router = Router(spec)
    assert (router.assign(KEYS[:10]) == 0).all()
    assert router.shadows == (ShadowArm("fraud-torch", "1"),)
    assert router.split(KEYS[:3])[0].rows.tolist() == [0, 1, 2]


def test_from_dict_builds_canary_with_fraction() -> None:
    spec = RouteSpec.from_dict({"mode": "canary", "fraction": 0.1, "salt": "s",
                                "arms": [{"name": "m", "version": 3},
                                         {"name": "m", "version": "4", "variant": "canary"}],
                                "shadow": [{"name": "m-torch"}]})
    assert spec.arms[1] == Arm("m", "4", 0.1, "canary") and spec.arms[0].version == "3"
    assert spec.shadow == (ShadowArm("m-torch", None),) and spec.salt == "s"
    assert abs(Router(spec).assign(KEYS).mean() - 0.1) <= 0.01


@pytest.mark.parametrize("data, bad", [
    ({"mode": "canary", "arms": [], "fractoin": 0.1}, "fractoin"),
    ({"mode": "blue-green", "arms": [{"name": "m"}]}, "route.mode"),
    ({"mode": "ab", "arms": [{"name": "m", "version": "1", "weight": -1}, {"name": "m", "version": "2"}]},
     "arms[0].weight"),
    ({"mode": "ab", "arms": [{"name": "m", "version": "1"}, {"name": "m", "version": "2", "variant": "shadow"}]},
     "arms[1].variant"),
    ({"mode": "ab", "arms": [{"name": "m", "version": "1", "wieght": 2}, {"name": "m"}]}, "wieght"),
    ({"mode": "canary", "fraction": 1.5, "arms": [{"name": "m", "version": "1"},
                                                  {"name": "m", "version": "2", "variant": "canary"}]}, "fraction"),
    ({"mode": "single", "arms": [{"name": "m"}, {"name": "n"}]}, "route.arms"),
    ({"mode": "ab", "arms": [{"version": "1"}, {"name": "m"}]}, "arms[0].name"),
    ({"mode": "single", "arms": [{"name": "m"}], "shadow": [{"name": "s", "stage": "x"}]}, "stage"),
    ({"mode": "ab", "arms": [{"name": "m", "version": "1"}, {"name": "m", "version": "1"}]}, "arms[1]"),
])
def test_config_validation_names_the_bad_key(data: dict[str, object], bad: str) -> None:
    with pytest.raises(ConfigError, match=bad.replace("[", r"\[").replace("]", r"\]")):
        RouteSpec.from_dict(data)


