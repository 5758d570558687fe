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

from models.features import string_groups, string_values
from models.key_index import KeyIndex, KeyTexts
from models.resp import RespPipe, pack_hmget
from schemas.columns import StrColumn
from schemas.backoff import Backoff
from schemas.errors import ConfigError, LookupStoppedError, LookupUnavailableError

log = logging.getLogger(__name__)

FieldKind = Literal["float", "string"]
OnMissing = Literal["default", "dead_letter"]
TS_FIELD = "_ts"
NONE = np.array(None, dtype=object)       # compared element-wise with an object column: where it holds None


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
class _Table:
    """Parsed values of some keys, one row per key: per field a float64 column (NaN where absent) or an
    object column (None where absent), ``_ts`` (NaN where absent) and whether the key's hash exists."""

    values: list[np.ndarray]
    ts: np.ndarray
    exists: np.ndarray

    @classmethod
    def empty(cls, kinds: Sequence[FieldKind], m: int) -> _Table:
        return cls([np.full(m, np.nan) if kind == "float" else np.full(m, None, dtype=object) for kind in kinds],
                   np.full(m, np.nan), np.zeros(m, bool))

    @classmethod
    def parse(cls, raw: Sequence[Sequence[bytes | None]], kinds: Sequence[FieldKind]) -> _Table:
        """From the store's answers (one list per key: the fields' values, then ``_ts``), column by column."""
        m = len(raw)
        cols = [np.array(c, dtype=object) for c in zip(*raw)] if m else [np.zeros(0, object)] * (len(kinds) + 1)
        present = [np.not_equal(c, NONE) for c in cols]
        values = [_floats(c, ok) if kind == "float" else _texts(c, ok) for c, ok, kind in zip(cols, present, kinds)]
        return cls(values, _floats(cols[-1], present[-1]), np.logical_or.reduce(present) if present else np.zeros(m, bool))

    def take(self, idx: np.ndarray) -> _Table:
        return _Table([v[idx] for v in self.values], self.ts[idx], self.exists[idx])

    def put(self, idx: np.ndarray, other: _Table) -> None:
        for v, o in zip(self.values, other.values):
            v[idx] = o
        self.ts[idx] = other.ts
        self.exists[idx] = other.exists

    def grown(self, kinds: Sequence[FieldKind], m: int) -> _Table:
        out = _Table.empty(kinds, m)
        out.put(np.arange(len(self.ts)), self)
        return out


class _Cache:
    """Fetched keys' values: a key's code (``models.key_index``: its bytes as received, looked up a batch at a time
    in numpy) is its slot in the cached table, with when and in which order it was fetched. Entries older than
    ``ttl_s`` are refetched, and past ``max_keys`` the oldest fetches are dropped; the codes of dropped keys are
    reclaimed (the index renumbered) once they outnumber the cached ones."""

    def __init__(self, ttl_s: float, max_keys: int, kinds: Sequence[FieldKind]) -> None:
        self.ttl_s = ttl_s
        self.max_keys = max_keys
        self.kinds = tuple(kinds)
        self.index = KeyIndex()
        self.at = np.zeros(0)                      # per code: when fetched (-inf: not cached)
        self.seq = np.zeros(0, np.int64)           # per code: its fetch's place in fetch order
        self.table = _Table.empty(self.kinds, 0)
        self.held = 0                              # codes cached
        self._fetches = 0

    def codes(self, keys: KeyTexts, which: np.ndarray) -> np.ndarray | None:
        """The codes of ``keys.texts[which]`` (None when nothing is cached: a ``ttl_s`` of 0)."""
        if self.ttl_s <= 0:
            return None
        codes = self.index.codes(keys, which)
        if len(self.index) > len(self.at):
            cap = max(len(self.index), 2 * len(self.at), 1024)
            self.at = np.concatenate([self.at, np.full(cap - len(self.at), -np.inf)])
            self.seq = np.concatenate([self.seq, np.zeros(cap - len(self.seq), np.int64)])
            self.table = self.table.grown(self.kinds, cap)
        return codes

    def get(self, codes: np.ndarray | None, n: int, now: float) -> np.ndarray:
        """Each key's slot, -1 where it is not cached or no longer fresh."""
        if codes is None:
            return np.full(n, -1, np.int64)
        return np.where(now - self.at[codes] < self.ttl_s, codes, -1)

    def put(self, codes: np.ndarray | None, table: _Table, now: float) -> None:
        """Cache the fetched keys ``codes`` (distinct) with their values."""
        if codes is None or not len(codes):
            return
        self.held += int(np.isneginf(self.at[codes]).sum())
        self.at[codes] = now
        self.seq[codes] = self._fetches + np.arange(len(codes))
        self._fetches += len(codes)
        self.table.put(codes, table)
        over = self.held - self.max_keys
        if over > 0:                                   # the oldest fetches go first
            cached = np.flatnonzero(~np.isneginf(self.at[:len(self.index)]))
            self.at[cached[np.argpartition(self.seq[cached], over - 1)[:over]]] = -np.inf
            self.held -= over
        if len(self.index) > 2 * self.held + 1024:    # renumber the keys still cached
            live = np.flatnonzero(~np.isneginf(self.at[:len(self.index)]))
            self.index.keep(live)
            self.at, self.seq, self.table = self.at[live], self.seq[live], self.table.take(live)


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
        self._kinds = [kind for _, kind in spec.fields]
        self._cache = _Cache(spec.cache_ttl_s, spec.cache_max_keys, self._kinds)
        self._hmget = [f for f, _ in spec.fields] + [TS_FIELD]
        self._last_fetched = 0
        self._affixes = (spec.key[:spec.key.index("{")].encode(), spec.key[spec.key.index("}") + 1:].encode())

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
        used, inv = used_codes(codes[valid], len(uniques))          # the key values this batch has
        keys = uniques if len(used) == len(uniques) else [uniques[u] for u in used.tolist()]   # key values
        cached = self._cache.codes(key_texts(uniques), used)
        codes = np.full(n, len(keys), np.int64)                     # a null key -> the extra "missing" slot
        codes[valid] = inv
        table = self._fetch(keys, cached)
        exists = table.exists.copy()
        if spec.max_age_s is not None:
            with np.errstate(invalid="ignore"):
                exists &= time.time() - table.ts <= spec.max_age_s      # no _ts (NaN): not fresh
        exists = np.append(exists, False)
        missing = ~exists[codes]
        out: dict[str, np.ndarray] = {}
        defaults = dict(spec.defaults)
        for (name, kind), values in zip(spec.fields, table.values):
            dflt = defaults.get(name)
            if kind == "float":
                col = np.append(values, np.nan)
                col[~exists] = np.nan
                if dflt is not None:
                    col[np.isnan(col)] = float(dflt)
            else:
                col = np.append(values, np.full(1, None, dtype=object))
                col[~exists] = None
                if dflt is not None:
                    col[np.equal(col, NONE)] = str(dflt)
            out[f"{spec.name}.{name}"] = col[codes]
        dead: dict[int, str] = {}
        if spec.on_missing == "dead_letter" and missing.any():
            dead = {int(r): f"lookup {spec.name!r}: no fresh {spec.key!r} entry for this event"
                    for r in np.flatnonzero(missing).tolist()}
        self.metrics.lookup_keys(self.pipeline, spec.name, self._last_fetched, len(keys) - self._last_fetched,
                                 int(missing.sum()))
        return Joined(out, dead)

    def _fetch(self, keys: list[bytes], codes: np.ndarray | None) -> _Table:
        """Every key value's parsed values (``codes``: their cache codes): the cache's fresh ones, the rest in one
        round trip."""
        slots = self._cache.get(codes, len(keys), time.monotonic())
        todo = np.flatnonzero(slots < 0)
        self._last_fetched = len(todo)
        if not len(todo):
            return self._cache.table.take(slots)
        table = self._cache.table.take(np.maximum(slots, 0)) if len(todo) < len(keys) \
            else _Table.empty(self._kinds, len(keys))
        wanted = [keys[i] for i in todo.tolist()]
        prefix, suffix = self._affixes
        names = [(prefix + k + suffix).decode("utf-8", "replace") for k in wanted]     # the Redis keys
        fetched = _Table.parse(self._call(names), self._kinds)
        table.put(todo, fetched)
        self._cache.put(None if codes is None else codes[todo], fetched, time.monotonic())
        return table

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


class _Coded:
    """The last few columns ``key_values`` coded, with their results: a batch's aggregates and lookups read the
    same key column, which is coded once. An entry holds its column, so an identity match is that very column
    (decoded columns are new objects per batch and never changed in place); the codes are read-only and
    callers must not change the texts."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self.entries: tuple[tuple[Any, Sequence[str] | None, int, np.ndarray, list[bytes]], ...] = ()
        self.texts: tuple[tuple[list[bytes], KeyTexts | np.ndarray], ...] = ()   # ``key_texts``: built, or the
        # padded array the texts were grouped in (built from it when first asked for)

    def remember(self, texts: list[bytes], keyed: KeyTexts | np.ndarray) -> None:
        self.texts = ((texts, keyed), *self.texts[:self.size - 1])

    def get(self, col: Any, symbols: Sequence[str] | None, n: int) -> tuple[np.ndarray, list[bytes]] | None:
        for c, s, m, codes, texts in self.entries:          # a snapshot: replaced whole, never changed
            if c is col and s is symbols and m == n:
                return codes, texts
        return None

    def put(self, col: Any, symbols: Sequence[str] | None, n: int, codes: np.ndarray, texts: list[bytes]) -> None:
        codes.flags.writeable = False
        self.entries = ((col, symbols, n, codes, texts), *self.entries[:self.size - 1])


_CODED = _Coded(16)    # aggregates (source thread) code a batch's keys up to ~5 batches before its lookups


def key_texts(texts: list[bytes]) -> KeyTexts:
    """``KeyTexts(texts)`` of the texts ``key_values`` returned, built once for every reader of that batch's key
    column (a snapshot replaced whole, as ``_Coded.entries``)."""
    found: KeyTexts | np.ndarray | None = next((k for t, k in _CODED.texts if t is texts), None)
    if isinstance(found, KeyTexts):
        return found
    keyed = KeyTexts(texts) if found is None else KeyTexts.padded(texts, found)
    _CODED.remember(texts, keyed)
    return keyed


def key_values(col: Any, symbols: Sequence[str] | None, n: int) -> tuple[np.ndarray, list[bytes]]:
    """(codes, distinct key values as UTF-8 bytes) of the key column; code -1 = null. The codes are read-only.
    A string column's values are its bytes as received (never decoded)."""
    hit = _CODED.get(col, symbols, n)
    if hit is not None:
        return hit
    codes, texts = _key_values(col, symbols, n)
    if isinstance(col, np.ndarray) and np.shares_memory(codes, col):
        codes = codes.copy()                            # an enum's codes may be the column itself
    _CODED.put(col, symbols, n, codes, texts)
    return codes, texts


def used_codes(codes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct values ascending, each item's index among them) of codes in ``[0, size)``: ``np.unique``
    with ``return_inverse``, by marking a table instead of sorting."""
    seen = np.zeros(size + 1, np.int64)
    seen[codes] = 1
    used = np.flatnonzero(seen[:size])
    rank = np.cumsum(seen) - 1
    return used, rank[codes]


def _key_values(col: Any, symbols: Sequence[str] | None, n: int) -> tuple[np.ndarray, list[bytes]]:
    if isinstance(col, np.ndarray) and col.dtype.kind in "iuf" and symbols is None:
        uniq, inv = np.unique(col, return_inverse=True)
        codes = inv.reshape(n).astype(np.int64)
        if col.dtype.kind == "f":
            codes[np.isnan(col)] = -1
            return codes, [(str(int(u)) if float(u).is_integer() else repr(float(u))).encode() for u in uniq.tolist()]
        return codes, [str(u).encode() for u in uniq.tolist()]
    if isinstance(col, StrColumn) and symbols is None:
        grouped = string_groups(col, n)
        if grouped is not None:
            codes, fixed = grouped
            texts = fixed.tolist()
            _CODED.remember(texts, fixed)                   # KeyTexts from it only if a key index reads them
            return codes, texts
    codes, uniques = string_values(col, symbols, n)
    return codes, [u.encode("utf-8", "surrogatepass") for u in uniques.tolist()]


def _floats(col: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Stored text -> float64; NaN where absent or not a number (as ``float()`` reads it)."""
    vals = col.copy()
    vals[~present] = b"nan"
    try:
        return np.fromiter(map(float, vals.tolist()), np.float64, len(vals))
    except (TypeError, ValueError):          # some value is not a number: parse one by one
        return np.fromiter((_float(v) for v in vals.tolist()), np.float64, len(vals))


def _float(raw: bytes) -> float:
    try:
        return float(raw.decode("utf-8", "replace"))
    except ValueError:
        return float("nan")


def _texts(col: np.ndarray, present: np.ndarray) -> np.ndarray:
    out = np.full(len(col), None, dtype=object)
    out[present] = [v.decode("utf-8", "replace") for v in col[present].tolist()]
    return out


class RedisHashStore:
    """The Redis side of a lookup: one pipelined HMGET per key, one round trip per call. The commands are
    packed into one buffer; the replies are read by ``models.resp.RespPipe`` (hiredis, no per-reply Python
    beyond one call) for a plain ``redis://`` / ``unix://`` URL, else by redis-py (TLS and other options)."""

    def __init__(self, url: str, *, timeout_s: float = 1.0) -> None:
        import redis

        self._pipe = RespPipe.from_url(url, timeout_s=timeout_s)
        self._client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)

    def hmget_many(self, keys: Sequence[str], fields: Sequence[str]) -> list[list[bytes | None]]:
        import redis

        if self._pipe is not None:
            return self._pipe.hmget_many(keys, fields)
        packed = pack_hmget(keys, fields)
        pool = self._client.connection_pool
        conn = None
        try:
            conn = pool.get_connection()
            conn.send_packed_command([packed], check_health=False)
            return [list(conn.read_response()) for _ in range(len(keys))]
        except BaseException as exc:
            if conn is not None:
                conn.disconnect()                   # replies may be left unread: never reuse it
            if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)):
                raise ConnectionError(str(exc)) from exc
            raise
        finally:
            if conn is not None:
                pool.release(conn)

    def close(self) -> None:
        if self._pipe is not None:
            self._pipe.close()
        self._client.close()
