"""The aggregate changelog's record format: a block round-trips bit for bit, a malformed or per-event
(JSON) record is refused, and a state restored from any prefix of the log continues exactly."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import models.aggregates as aggregates
from models.agg_records import VERSION, Block, decode, encode
from models.aggregates import AggregateEngine, AggregateSpec, PartitionState

SPECS = [AggregateSpec("n_1m", "account_id", "count", 60_000),
         AggregateSpec("sum_5m", "account_id", "sum", 300_000, "amount"),
         AggregateSpec("max_5m", "account_id", "max", 300_000, "amount"),
         AggregateSpec("countries_20m", "account_id", "distinct_count", 1_200_000, "country")]


def test_a_block_round_trips_bit_for_bit() -> None:
    floats = np.array([0.1, -0.0, np.nan, np.inf, -np.inf, 5e-324, 1.7976931348623157e308])
    n = len(floats)
    block = Block(np.arange(10, 10 + n, dtype=np.int64) * 1_000_000_007, np.arange(n, dtype=np.int64) - 3,
                  np.array([0, 1, 2, 0, 1, 2, 0]), [b"", "k\u00e9y".encode(), b"\xff\x00"],
                  [floats, (np.array([-1, 0, 1, 1, 0, -1, 1], np.int32), [b"DE", "\u4e2d".encode()])])
    got = decode(encode(block), ("float", "text"))
    np.testing.assert_array_equal(got.offsets, block.offsets)
    np.testing.assert_array_equal(got.times, block.times)
    np.testing.assert_array_equal(got.kidx, block.kidx)
    assert got.keys == block.keys
    assert got.fields[0].tobytes() == floats.tobytes()             # type: ignore[union-attr]
    idx, texts = got.fields[1]                                    # type: ignore[misc]
    assert idx.tolist() == [-1, 0, 1, 1, 0, -1, 1] and texts == [b"DE", "\u4e2d".encode()]


@pytest.mark.parametrize("value", [b'[1700000000000,12.5,"DE"]', b"", VERSION, VERSION + b"\x05\x00\x00\x00"])
def test_a_value_not_of_the_block_format_is_refused(value: bytes) -> None:
    with pytest.raises(ValueError):
        decode(value, ("float", "text"))


def test_trailing_or_missing_bytes_are_refused() -> None:
    value = encode(Block(np.array([1]), np.array([2]), np.array([0]), [b"a"], [np.array([1.0])]))
    with pytest.raises(ValueError):
        decode(value + b"\x00", ("float",))
    with pytest.raises(ValueError):
        decode(value[:-1], ("float",))
    with pytest.raises(ValueError):
        decode(value, ("float", "float"))


def _events(n: int, parts: int = 3, keys: int = 60, seed: int = 4) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    acct = rng.integers(0, keys, n)
    part = (acct % parts).astype(np.int32)
    offsets = np.zeros(n, np.int64)
    for p in range(parts):
        offsets[part == p] = np.arange(int((part == p).sum()))
    amount = np.round(rng.gamma(2.0, 20.0, n), 2)
    amount[rng.random(n) < 0.05] = np.nan
    country = np.array([None if rng.random() < 0.05 else f"c\u00e9{rng.integers(0, 5)}" for _ in range(n)], dtype=object)
    return {"account_id": np.array([f"acct-{a}" for a in acct], dtype=object), "amount": amount, "country": country,
            "part": part, "offset": offsets, "t": 1_700_000_000_000 + np.sort(rng.integers(0, 3_000_000, n))}


def _run(engine: AggregateEngine, states: dict[int, PartitionState], ev: dict[str, Any], rows: np.ndarray) -> Any:
    cols = {k: ev[k][rows] for k in ("account_id", "amount", "country")}
    return engine.apply(states, cols, {}, {}, ev["part"][rows], ev["offset"][rows], ev["t"][rows])


@pytest.mark.parametrize("max_bytes", [512 * 1024, 300])        # 300: many blocks per partition and batch
def test_restore_from_any_prefix_of_the_log_continues_exactly(monkeypatch: pytest.MonkeyPatch, max_bytes: int) -> None:
    monkeypatch.setattr(aggregates, "MAX_BYTES", max_bytes)
    ev = _events(1500)
    batches = np.array_split(np.arange(1500), 12)
    batches.insert(6, np.concatenate(batches[4:6])[60:190])      # a rewind within the grace: overlapping records
    engine = AggregateEngine(SPECS, grace_ms=480_000)            # 20m window + 8m grace: the 50 minutes evict
    states = {p: engine.new_state() for p in range(3)}
    expected = {s.name: np.full(1500, np.nan) for s in SPECS}
    logs: list[list[tuple[bytes, bytes | None, int]]] = []
    for rows in batches:
        applied = _run(engine, states, ev, rows)
        for name, col in applied.columns.items():
            expected[name][rows] = col
        logs.append(applied.records)
    assert max_bytes > 1000 or max(len(r) for r in logs) > 3 * 2
    assert any(v is None for recs in logs for _, v, _ in recs)   # wholly evicted records were deleted
    for cut in (1, 5, 7, 10):                                    # the log of the first ``cut`` batches
        fresh = AggregateEngine(SPECS, grace_ms=480_000)
        restored = {p: fresh.restore([(k, v) for recs in logs[:cut] for k, v, q in recs if q == p]) for p in range(3)}
        for rows in batches[cut:]:
            got = _run(fresh, restored, ev, rows)
            for s in SPECS:
                np.testing.assert_array_equal(got.columns[s.name], expected[s.name][rows], err_msg=f"{s.name} @ {cut}")


def test_records_of_the_per_event_format_are_deleted_at_restore() -> None:
    engine = AggregateEngine(SPECS)
    store = engine.layouts[0].id.encode()
    legacy = [(store + b"\x1facct-1\x1f7", b'[1700000000000,12.5,"DE"]')]
    state = engine.restore(legacy)
    assert state.keys() == 0
    assert state.parts[engine.layouts[0].id].tombstones == [legacy[0][0]]
