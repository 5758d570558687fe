"""Online feature lookups: per-key values from a key-value store, joined into a decoded batch.

Layout read (one Redis hash per entity key, as Feast's Redis online store keeps one hash per
entity): key ``<template with the event's field>`` (e.g. ``acct:{account_id}`` -> ``acct:42``),
one hash field per feature (its value as text), and ``_ts`` = epoch seconds of the write.

Each batch: the distinct keys of the batch, less those fresh in the local TTL cache, are read
with one pipelined round trip (HMGET per key). The values become columns named
``<lookup>.<field>`` (float64, NaN where missing; or str objects, None where missing), which
features read like any input field.

Invariants: ``join`` returns only once every key of the batch has an answer from the store
(or from the cache); a store that does not answer makes it wait with capped backoff until it
does, until ``stop`` is set or ``max_wait_s`` passes (``LookupUnavailableError``), so a row is
never dead-lettered because the store was down. A row is "missing" when its key field is null
or its hash is absent (or older than ``max_age_s``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from models.features import string_values
from schemas.backoff import Backoff
from schemas.errors import ConfigError, LookupStoppedError, LookupUnavailableError

log = logging.getLogger(__name__)

FieldKind = Literal["float", "string"]
OnMissing = Literal["default", "dead_letter"]
TS_FIELD = "_ts"
Row = tuple[Any, ...]     # a key's parsed values, its _ts and whether its hash exists (Lookup._row)


class HashStore(Protocol):
    """Reads ``fields`` of many hashes in one round trip; raises ``ConnectionError``/``TimeoutError`` (or
    the client's subclasses of them, see ``RedisHashStore``) when the store does not answer."""

    def hmget_many(self, keys: Sequence[str], fields: Sequence[str]) -> list[list[bytes | None]]: ...


class LookupMetrics(Protocol):
    """What lookups report (``monitoring.metrics.ScorerMetrics``)."""

    def lookup_wait(self, pipeline: str, lookup: str, seconds: float) -> None: ...
    def lookup_keys(self, pipeline: str, lookup: str, fetched: int, cached: int, missing: int) -> None: ...


@dataclass(frozen=True)
class LookupSpec:
    name: str
    key: str                                   # a template with one {field}, e.g. "acct:{account_id}"
    fields: tuple[tuple[str, FieldKind], ...]
    defaults: tuple[tuple[str, Any], ...] = ()
    max_age_s: float | None = None
    on_missing: OnMissing = "default"
    cache_ttl_s: float = 1.0
    cache_max_keys: int = 100_000

    @property
    def key_field(self) -> str:
        return self.key[self.key.index("{") + 1:self.key.index("}")]

    def columns(self) -> list[str]:
        return [f"{self.name}.{f}" for f, _ in self.fields]

    def check(self) -> None:
        if self.key.count("{") != 1 or self.key.count("}") != 1 or self.key.index("{") > self.key.index("}") \
                or not self.key_field:
            raise ConfigError(f"lookups[{self.name}].redis.key: {self.key!r} must name one field, e.g. 'acct:{{account_id}}'")
        unknown = sorted(set(dict(self.defaults)) - {f for f, _ in self.fields})
        if unknown:
            raise ConfigError(f"lookups[{self.name}].defaults: {unknown} are not among its fields "
                              f"{[f for f, _ in self.fields]}")


@dataclass
class _Cache:
    """Key -> (fetched at, raw values); entries older than ``ttl_s`` are refetched."""

    ttl_s: float
    max_keys: int
    entries: dict[str, tuple[float, Row]] = field(default_factory=dict)

    def get(self, key: str, now: float) -> Row | None:
        hit = self.entries.get(key)
        return hit[1] if hit is not None and now - hit[0] < self.ttl_s else None

    def put(self, keys: Sequence[str], values: Sequence[Row], now: float) -> None:
        if self.ttl_s <= 0:
            return
        for k, v in zip(keys, values):
            self.entries.pop(k, None)              # re-insert: dict order is fetch order
            self.entries[k] = (now, v)
        over = len(self.entries) - self.max_keys
        if over > 0:
            for k in list(self.entries)[:over]:    # the oldest fetches go first
                del self.entries[k]


@dataclass
class Joined:
    """The lookup columns of a batch and the rows to dead-letter (row -> reason message)."""

    columns: dict[str, np.ndarray]
    dead: dict[int, str]


class Lookup:
    """One lookup of one pipeline: distinct keys -> one store round trip -> columns."""

    def __init__(self, spec: LookupSpec, store: HashStore, *, pipeline: str, metrics: LookupMetrics,
                 stop: threading.Event, max_wait_s: float | None = 600.0, max_backoff_s: float = 2.0) -> None:
        spec.check()
        self.spec = spec
        self.store = store
        self.pipeline = pipeline
        self.metrics = metrics
        self.stop = stop
        self.max_wait_s = max_wait_s
        self.max_backoff_s = max_backoff_s
        self._cache = _Cache(spec.cache_ttl_s, spec.cache_max_keys)
        self._hmget = [f for f, _ in spec.fields] + [TS_FIELD]
        self._last_fetched = 0
        self._affixes = (spec.key[:spec.key.index("{")], spec.key[spec.key.index("}") + 1:])

    def join(self, columns: Mapping[str, Any], nulls: Mapping[str, np.ndarray],
             symbols: Mapping[str, Sequence[str]], n: int) -> Joined:
        spec = self.spec
        col = columns.get(spec.key_field)
        if col is None:
            raise ConfigError(f"lookups[{spec.name}]: the key field {spec.key_field!r} is not in the input")
        codes, uniques = key_values(col, symbols.get(spec.key_field), n)
        null = nulls.get(spec.key_field)
        if null is not None:
            codes = np.where(null, -1, codes)
        valid = codes >= 0
        used, inv = np.unique(codes[valid], return_inverse=True)   # the key values this batch has
        prefix, suffix = self._affixes
        keys = [prefix + uniques[u] + suffix for u in used.tolist()]
        codes = np.full(n, len(keys), np.int64)                     # a null key -> the extra "missing" slot
        codes[valid] = inv.reshape(-1)
        rows = self._fetch(keys)
        k, m = len(spec.fields), len(rows)
        exists = np.fromiter((r[k + 1] for r in rows), bool, m)
        if spec.max_age_s is not None:
            ts = np.fromiter((r[k] for r in rows), np.float64, m)
            with np.errstate(invalid="ignore"):
                exists &= time.time() - ts <= spec.max_age_s      # no _ts (NaN): not fresh
        exists = np.append(exists, False)
        missing = ~exists[codes]
        out: dict[str, np.ndarray] = {}
        defaults = dict(spec.defaults)
        for j, (name, kind) in enumerate(spec.fields):
            dflt = defaults.get(name)
            if kind == "float":
                table = np.append(np.fromiter((r[j] for r in rows), np.float64, m), np.nan)
                table[~exists] = np.nan
                if dflt is not None:
                    table[np.isnan(table)] = float(dflt)
            else:
                table = np.array([r[j] for r in rows] + [None], dtype=object)
                table[~exists] = None
                if dflt is not None:
                    table[np.fromiter((v is None for v in table.tolist()), bool, m + 1)] = str(dflt)
            out[f"{spec.name}.{name}"] = table[codes]
        dead: dict[int, str] = {}
        if spec.on_missing == "dead_letter" and missing.any():
            dead = {int(r): f"lookup {spec.name!r}: no fresh {spec.key!r} entry for this event"
                    for r in np.flatnonzero(missing).tolist()}
        self.metrics.lookup_keys(self.pipeline, spec.name, self._last_fetched, len(keys) - self._last_fetched,
                                 int(missing.sum()))
        return Joined(out, dead)

    def _fetch(self, keys: list[str]) -> list[Row]:
        """Every key's parsed values: the cache's fresh ones, the rest in one round trip."""
        now = time.monotonic()
        got: list[Row | None] = [self._cache.get(k, now) for k in keys]
        todo = [i for i, v in enumerate(got) if v is None]
        self._last_fetched = len(todo)
        if todo:
            fetched = [self._row(raw) for raw in self._call([keys[i] for i in todo])]
            for i, v in zip(todo, fetched):
                got[i] = v
            self._cache.put([keys[i] for i in todo], fetched, time.monotonic())
        return [v for v in got if v is not None]

    def _row(self, raw: list[bytes | None]) -> Row:
        """(field values: float, NaN if absent, or str / None; _ts, NaN if absent; whether the hash exists)."""
        values = [_parse(v, kind) for v, (_, kind) in zip(raw, self.spec.fields)]
        ts = _parse(raw[-1], "float")
        return (*(np.nan if v is None and kind == "float" else v for v, (_, kind) in zip(values, self.spec.fields)),
                np.nan if ts is None else ts, any(x is not None for x in raw))

    def _call(self, keys: list[str]) -> list[list[bytes | None]]:
        """One round trip; while the store does not answer, wait with capped backoff (never give up a row)."""
        backoff = Backoff(self.stop, max_s=self.max_backoff_s,
                          on_wait=lambda s: self.metrics.lookup_wait(self.pipeline, self.spec.name, s))
        while True:
            try:
                out = self.store.hmget_many(keys, self._hmget)
            except (ConnectionError, TimeoutError, OSError) as exc:
                if backoff.failed():
                    log.warning("lookup %s: the store does not answer (%s); the batch waits", self.spec.name, exc)
                if self.max_wait_s is not None and backoff.waited_s() >= self.max_wait_s:
                    raise LookupUnavailableError(f"lookup {self.spec.name}: the store did not answer for "
                                                 f"{backoff.waited_s():.0f}s (max_wait_s); nothing was committed "
                                                 f"past this batch") from exc
                if not backoff.pause():
                    raise LookupStoppedError(f"lookup {self.spec.name}: stopped while waiting for the store"
                                                 ) from exc
                continue
            if backoff.started is not None:
                log.warning("lookup %s: the store answers again after %.1fs", self.spec.name, backoff.waited_s())
            if len(out) != len(keys):
                raise LookupUnavailableError(f"lookup {self.spec.name}: {len(out)} answers for {len(keys)} keys")
            return out


class Lookups:
    """Every lookup of one pipeline, joined into a decoded batch (``consumers.runtime.Enricher``)."""

    def __init__(self, lookups: Sequence[Lookup]) -> None:
        self.lookups = tuple(lookups)

    def enrich(self, batch: Any) -> dict[int, str]:
        """Add each lookup's columns to ``batch.columns``; returns the rows to dead-letter."""
        n = len(batch)
        dead: dict[int, str] = {}
        for lk in self.lookups:
            joined = lk.join(batch.columns, batch.nulls, batch.symbols, n)
            batch.columns.update(joined.columns)
            for r, why in joined.dead.items():
                dead.setdefault(r, why)
        return dead


def key_values(col: Any, symbols: Sequence[str] | None, n: int) -> tuple[np.ndarray, list[str]]:
    """(codes, distinct key values as text) of the key column; code -1 = null."""
    if isinstance(col, np.ndarray) and col.dtype.kind in "iuf" and symbols is None:
        uniq, inv = np.unique(col, return_inverse=True)
        codes = inv.reshape(n).astype(np.int64)
        if col.dtype.kind == "f":
            codes[np.isnan(col)] = -1
            return codes, [str(int(u)) if float(u).is_integer() else repr(float(u)) for u in uniq.tolist()]
        return codes, [str(u) for u in uniq.tolist()]
    codes, uniques = string_values(col, symbols, n)
    return codes, [str(u) for u in uniques.tolist()]


def _parse(raw: bytes | None, kind: FieldKind) -> Any:
    if raw is None:
        return None
    text = raw.decode("utf-8", "replace")
    if kind == "string":
        return text
    try:
        return float(text)
    except ValueError:
        return None


class RedisHashStore:
    """The Redis side of a lookup: one pipelined HMGET per key, one round trip per call."""

    def __init__(self, url: str, *, timeout_s: float = 1.0) -> None:
        import redis

        self._client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)

    def hmget_many(self, keys: Sequence[str], fields: Sequence[str]) -> list[list[bytes | None]]:
        import redis

        pipe = self._client.pipeline(transaction=False)
        for k in keys:
            pipe.hmget(k, list(fields))
        try:
            return [list(v) for v in pipe.execute()]
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
            raise ConnectionError(str(exc)) from exc

    def close(self) -> None:
        self._client.close()
