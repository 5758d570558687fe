"""Online feature lookups with an in-memory store: distinct keys, one call per batch, cache,
defaults, max_age_s, on_missing, and waiting (not dropping) while the store is down."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from models.lookups import Lookup, Lookups, LookupSpec
from schemas.columns import StrColumn
from schemas.errors import ConfigError, LookupUnavailableError


class FakeStore:
    def __init__(self, data: dict[str, dict[str, str]], down: int = 0) -> None:
        self.data = data
        self.calls: list[list[str]] = []
        self.down = down            # this many calls fail first

    def hmget_many(self, keys: Sequence[str], fields: Sequence[str]) -> list[list[bytes | None]]:
        if self.down > 0:
            self.down -= 1
            raise ConnectionError("connection refused")
        self.calls.append(list(keys))
        return [[None if (v := self.data.get(k, {}).get(f)) is None else v.encode() for f in fields] for k in keys]


class Metrics:
    def __init__(self) -> None:
        self.waits = 0
        self.keys: list[tuple[int, int, int]] = []

    def lookup_wait(self, pipeline: str, lookup: str, seconds: float) -> None:
        self.waits += 1

    def lookup_keys(self, pipeline: str, lookup: str, fetched: int, cached: int, missing: int) -> None:
        self.keys.append((fetched, cached, missing))


def _spec(**kw: Any) -> LookupSpec:
    base: dict[str, Any] = {"name": "acct", "key": "acct:{account_id}",
                            "fields": (("limit", "float"), ("tier", "string"))}
    return LookupSpec(**{**base, **kw})


def _lookup(store: FakeStore, metrics: Metrics | None = None, **kw: Any) -> Lookup:
    return Lookup(_spec(**kw), store, pipeline="p", metrics=metrics or Metrics(), stop=threading.Event(),
                  max_backoff_s=0.01)


def _batch(ids: list[str | None]) -> Any:
    class Batch:
        columns: dict[str, Any] = {"account_id": StrColumn.from_bytes([None if i is None else i.encode() for i in ids])}
        nulls: dict[str, np.ndarray] = {}
        symbols: dict[str, tuple[str, ...]] = {}

        def __len__(self) -> int:
            return len(ids)
    return Batch()


DATA = {"acct:a": {"limit": "100", "tier": "gold", "_ts": "0"}, "acct:b": {"limit": "7.5", "tier": "std", "_ts": "0"}}


def test_one_call_for_the_distinct_keys_and_columns_by_row() -> None:
    store = FakeStore(DATA)
    b = _batch(["a", "b", "a", "zz", None])
    dead = Lookups([_lookup(store)]).enrich(b)
    assert dead == {}
    assert len(store.calls) == 1 and sorted(store.calls[0]) == ["acct:a", "acct:b", "acct:zz"]
    np.testing.assert_array_equal(b.columns["acct.limit"], [100.0, 7.5, 100.0, np.nan, np.nan])
    assert b.columns["acct.tier"].tolist() == ["gold", "std", "gold", None, None]


def test_defaults_fill_missing_keys_and_dead_letter_names_the_rows() -> None:
    b = _batch(["a", "zz", None])
    Lookups([_lookup(FakeStore(DATA), defaults=(("limit", -1), ("tier", "none")))]).enrich(b)
    assert b.columns["acct.limit"].tolist() == [100.0, -1.0, -1.0]
    assert b.columns["acct.tier"].tolist() == ["gold", "none", "none"]
    dead = Lookups([_lookup(FakeStore(DATA), on_missing="dead_letter")]).enrich(_batch(["a", "zz", None, "b"]))
    assert sorted(dead) == [1, 2] and "acct" in dead[1]


def test_max_age_treats_stale_entries_as_missing() -> None:
    now = time.time()
    data = {"acct:a": {"limit": "1", "_ts": str(now - 5)}, "acct:b": {"limit": "2", "_ts": str(now - 500)},
            "acct:c": {"limit": "3"}}
    b = _batch(["a", "b", "c"])
    Lookups([_lookup(FakeStore(data), max_age_s=60.0)]).enrich(b)
    np.testing.assert_array_equal(b.columns["acct.limit"], [1.0, np.nan, np.nan])


def test_cache_serves_hot_keys_within_its_ttl() -> None:
    store = FakeStore(DATA)
    metrics = Metrics()
    lk = _lookup(store, metrics, cache_ttl_s=60.0)
    lk.join(_batch(["a", "b"]).columns, {}, {}, 2)
    lk.join(_batch(["a", "zz"]).columns, {}, {}, 2)
    assert store.calls == [["acct:a", "acct:b"], ["acct:zz"]]
    assert metrics.keys == [(2, 0, 0), (1, 1, 1)]
    lk0 = _lookup(store, cache_ttl_s=0.0)
    lk0.join(_batch(["a"]).columns, {}, {}, 1)
    lk0.join(_batch(["a"]).columns, {}, {}, 1)
    assert store.calls[-2:] == [["acct:a"], ["acct:a"]]


def test_cache_keeps_at_most_max_keys_dropping_the_oldest_fetch_and_mixes_hits_with_fetches() -> None:
    store = FakeStore({**DATA, "acct:c": {"limit": "3", "tier": "std"}})
    lk = _lookup(store, cache_ttl_s=60.0, cache_max_keys=2)
    lk.join(_batch(["a"]).columns, {}, {}, 1)
    lk.join(_batch(["b", "c"]).columns, {}, {}, 2)          # a (the oldest fetch) is dropped
    got = lk.join(_batch(["c", "a", "b", "zz"]).columns, {}, {}, 4)
    assert store.calls[-1] == ["acct:a", "acct:zz"]
    np.testing.assert_array_equal(got.columns["acct.limit"], [3.0, 100.0, 7.5, np.nan])
    assert got.columns["acct.tier"].tolist() == ["std", "gold", "std", None]


def test_a_value_that_is_not_a_number_reads_as_missing() -> None:
    store = FakeStore({"acct:a": {"limit": "lots", "tier": "gold"}, "acct:b": {"limit": " 2.5 "}})
    got = _lookup(store, defaults=(("limit", -1),)).join(_batch(["a", "b"]).columns, {}, {}, 2)
    np.testing.assert_array_equal(got.columns["acct.limit"], [-1.0, 2.5])


def test_numeric_key_column_is_formatted_as_an_integer() -> None:
    store = FakeStore({"acct:42": {"limit": "5"}})
    lk = _lookup(store)
    got = lk.join({"account_id": np.array([42, 42, 7], np.int64)}, {}, {}, 3)
    np.testing.assert_array_equal(got.columns["acct.limit"], [5.0, 5.0, np.nan])
    assert sorted(store.calls[0]) == ["acct:42", "acct:7"]


def test_a_store_that_is_down_makes_the_batch_wait_then_it_completes() -> None:
    store = FakeStore(DATA, down=3)
    metrics = Metrics()
    b = _batch(["a"])
    assert Lookups([_lookup(store, metrics)]).enrich(b) == {}
    assert metrics.waits == 3 and b.columns["acct.limit"].tolist() == [100.0]


def test_stop_or_max_wait_while_down_raises_instead_of_dropping_rows() -> None:
    stop = threading.Event()
    stop.set()
    lk = Lookup(_spec(), FakeStore(DATA, down=10**9), pipeline="p", metrics=Metrics(), stop=stop)
    with pytest.raises(LookupUnavailableError, match="stopped"):
        lk.join(_batch(["a"]).columns, {}, {}, 1)
    lk = Lookup(_spec(), FakeStore(DATA, down=10**9), pipeline="p", metrics=Metrics(), stop=threading.Event(),
                max_wait_s=0.05, max_backoff_s=0.01)
    with pytest.raises(LookupUnavailableError, match="max_wait_s"):
        lk.join(_batch(["a"]).columns, {}, {}, 1)


@pytest.mark.parametrize("key", ["acct", "acct:{a}:{b}", "acct:}{"])
def test_a_key_template_names_one_field(key: str) -> None:
    with pytest.raises(ConfigError, match="must name one field"):
        _spec(key=key).check()


def test_pipeline_config_lookups_validated() -> None:
    from streamscore.config import parse_config

    base = {"name": "p", "input": {"topic": "t"}, "model": {"name": "m"}, "output": {"topic": "o"}}
    lk = {"name": "acct", "redis": {"key": "acct:{account_id}", "fields": ["limit"]}, "defaults": {"limit": 0}}
    cfg = parse_config({"pipelines": [{**base, "lookups": [lk]}]})
    assert cfg.pipelines[0].lookups[0].spec().fields == (("limit", "float"),)
    with pytest.raises(ConfigError, match="not among its fields"):
        parse_config({"pipelines": [{**base, "lookups": [{**lk, "defaults": {"x": 1}}]}]})
    with pytest.raises(ConfigError, match="on_missing"):
        parse_config({"pipelines": [{**base, "lookups": [{**lk, "on_missing": "drop"}]}]})


def test_feature_maps_name_every_numeric_column_and_skip_strings() -> None:
    from models.base import InputSpec
    from models.runner import ModelRunner
    from schemas.prediction import OutputSpec

    spec = InputSpec.from_dict({"features": [
        {"name": "limit", "field": "acct.limit", "transforms": [{"standardize": {"mean": 1.0, "std": 2.0}}]},
        {"name": "tier", "field": "acct.tier", "default": "", "transforms": [{"one_hot": {"vocabulary": ["gold"]}}]},
        {"name": "country", "dtype": "string", "input": "country"}]})
    cols = {"acct.limit": np.array([3.0, 5.0]), "acct.tier": np.array(["gold", None], dtype=object),
            "country": np.array(["DE", "FR"], dtype=object)}
    feats = spec.build(cols)
    maps = ModelRunner(None, input_spec=spec, output_spec=OutputSpec(), threshold=0.5).feature_maps(feats, np.array([1]))
    assert maps.tolist() == [{"limit": 2.0, "tier=gold": 0.0, "tier=<other>": 1.0}]


def test_a_key_column_is_coded_once_per_batch_and_its_codes_are_read_only() -> None:
    from models.lookups import key_values

    col = StrColumn.from_bytes([b"b", b"a", None, b"b"])
    codes, texts = key_values(col, None, 4)
    again, _ = key_values(col, None, 4)
    assert again is codes and [texts[c] for c in codes.tolist() if c >= 0] == [b"b", b"a", b"b"] and codes[2] == -1
    assert not codes.flags.writeable
    other, _ = key_values(StrColumn.from_bytes([b"b", b"a", None, b"b"]), None, 4)   # another column: coded anew
    assert other is not codes
    enum = np.array([1, 0], np.int64)
    key_values(enum, ("x", "y"), 2)
    assert enum.flags.writeable                          # the column itself is left writable
