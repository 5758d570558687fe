"""Per-key streaming aggregates over sliding windows, and the state a changelog rebuilds.

An aggregate is ``op`` over ``field`` of the events of one key whose record time (Kafka
timestamp, ms) lies in ``(t - window, t]`` of the event being scored and that come *at or
before it* in its partition (offset <= its offset): the event itself is included. State is
per input partition (the input must be keyed by the aggregate key, so one key lives in one
partition) and per *store* (the aggregates sharing one key field): one entry per event
(key, time, offset, the fields its aggregates read).

Invariants:
- a value depends only on the set of entries present, never on the order they were applied:
  the offset filter makes a replayed event (at-least-once, or a rewind) see exactly what it
  saw the first time, as long as no entry it needs was evicted (see ``grace_ms``);
- an entry is applied at most once: an event whose offset the partition's state already
  holds is not inserted again (dedupe by offset);
- eviction drops entries with time <= newest time seen in the partition - the store's
  longest window - ``grace_ms``; a key with no entries left is forgotten. A replay reaching
  back less than ``grace_ms`` of record time therefore re-emits identical values.

Changelog layout: every scored batch writes, per store and partition, one record holding its
entries (``models.agg_records``: columnar binary, split in blocks of at most 512 KiB); key
``<store id>\\x1f<first offset>-<last offset>-<entries>``. A replayed batch writes its entries
again (a record with the same key holds the same entries; one with another key overlaps, and
restore keeps each offset once). A record is deleted (a tombstone) once every entry in it is
evicted. The store id names its key field and a digest of its field layout, so a changed layout
starts empty; records of another layout, or of the earlier one-JSON-record-per-event format, are
deleted at the next restore.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, Literal

import numpy as np

from models import agg_window
from models.agg_records import FIXED_BYTES, MAX_BYTES, Block, FieldValues, Kind, decode, encode
from models.key_index import KeyIndex, KeyTexts
from models.lookups import key_values, used_codes
from schemas.errors import ConfigError

Op = Literal["count", "sum", "mean", "min", "max", "distinct_count"]
OPS: tuple[Op, ...] = ("count", "sum", "mean", "min", "max", "distinct_count")
UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
SEP = "\x1f"
NULL_HASH = np.iinfo(np.int64).min       # a null text value among the hashes of a text field
MAX_PAIRS = 1 << 22                      # (event, window entry) pairs handled at once: bounds a batch's memory
RECORD_BYTES = 120                       # estimated bytes per changelog record tracked for its deletion
log = logging.getLogger(__name__)
Record = tuple[bytes, bytes | None]      # a changelog record: key, value (None: a tombstone)


def parse_window(text: str) -> int:
    """``10m`` -> 600000 (ms); units ms, s, m, h, d."""
    m = re.fullmatch(r"\s*(\d+)\s*(ms|s|m|h|d)\s*", str(text))
    if m is None or int(m.group(1)) <= 0:
        raise ConfigError(f"window {text!r}: expected a positive whole number and a unit (ms, s, m, h, d), e.g. 10m")
    return int(m.group(1)) * UNITS_MS[m.group(2)]


@dataclass(frozen=True)
class AggregateSpec:
    name: str
    key: str                       # the input field whose value is the key (dotted path)
    op: Op
    window_ms: int
    field: str | None = None       # count: None counts events; a field counts its non-null values

    @property
    def kind(self) -> Kind:
        return "text" if self.op == "distinct_count" else "float"

    def check(self) -> None:
        where = f"aggregates[{self.name}]"
        if self.op not in OPS:
            raise ConfigError(f"{where}.op: {self.op!r} is not one of {list(OPS)}")
        if not self.key:
            raise ConfigError(f"{where}.key: missing (the input field holding the key, e.g. account_id)")
        if self.op != "count" and not self.field:
            raise ConfigError(f"{where}.field: op {self.op!r} needs a field")
        if self.window_ms <= 0:
            raise ConfigError(f"{where}.window: must be positive")


@dataclass(frozen=True)
class _Layout:
    """One store: the key field and the (field, kind) columns its aggregates read."""

    key: str
    fields: tuple[tuple[str, Kind], ...]
    specs: tuple[AggregateSpec, ...]

    @property
    def id(self) -> str:
        digest = hashlib.sha1(repr(self.fields).encode()).hexdigest()[:8]
        return f"{self.key}#{digest}"

    @property
    def kinds(self) -> tuple[Kind, ...]:
        return tuple(kind for _, kind in self.fields)

    @property
    def longest_ms(self) -> int:
        return max(s.window_ms for s in self.specs)


@dataclass
class _Part:
    """One store's entries in one partition: columns with spare capacity (appends are amortised),
    one row per entry: key code, record time (ms), offset, then one column per field (float64
    with NaN for null, or int64 text hashes)."""

    cols: list[np.ndarray]
    n: int = 0
    keys: KeyIndex = field(default_factory=KeyIndex)        # a key's bytes (as received) <-> its code
    newest: int = -(1 << 62)
    max_offset: int = -1                     # the highest offset ever inserted: above it, nothing is a replay
    tombstones: list[bytes] = field(default_factory=list)    # wholly evicted records' keys, not yet written
    logged: list[tuple[int, bytes]] = field(default_factory=list)   # a heap of (newest time, key) of live records

    @property
    def k(self) -> np.ndarray:
        return self.cols[0][:self.n]

    @property
    def t(self) -> np.ndarray:
        return self.cols[1][:self.n]

    @property
    def o(self) -> np.ndarray:
        return self.cols[2][:self.n]

    @property
    def v(self) -> list[np.ndarray]:
        return [c[:self.n] for c in self.cols[3:]]

    def append(self, arrays: Sequence[np.ndarray]) -> None:
        m = len(arrays[0])
        if self.n + m > len(self.cols[0]):
            cap = max(2 * len(self.cols[0]), self.n + m, 1024)
            grown = [np.empty(cap, c.dtype) for c in self.cols]
            for g, c in zip(grown, self.cols):
                g[:self.n] = c[:self.n]
            self.cols = grown
        for c, a in zip(self.cols, arrays):
            c[self.n:self.n + m] = a
        self.n += m
        if m:
            self.max_offset = max(self.max_offset, int(arrays[2].max()))

    def keep(self, mask: np.ndarray) -> None:
        kept = [c[:self.n][mask] for c in self.cols]
        for c, a in zip(self.cols, kept):
            c[:len(a)] = a
        self.n = len(kept[0])

    def nbytes(self) -> int:
        return int(sum(c.nbytes for c in self.cols)) + self.keys.nbytes() + RECORD_BYTES * len(self.logged)


class PartitionState:
    """Every store's entries of one input partition."""

    def __init__(self, parts: dict[str, _Part]) -> None:
        self.parts = parts

    def keys(self) -> int:
        return sum(len(p.keys) for p in self.parts.values())

    def nbytes(self) -> int:
        return sum(p.nbytes() for p in self.parts.values())


@dataclass
class Applied:
    """A batch's aggregate columns (one value per row, NaN where undefined) and its changelog records: a block
    of entries per store and partition (``keys``, ``values``, ``partitions``), then the tombstones of wholly
    evicted records (key, partition)."""

    columns: dict[str, np.ndarray]
    keys: list[bytes] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)
    partitions: list[int] = field(default_factory=list)
    tombstones: list[tuple[bytes, int]] = field(default_factory=list)

    @property
    def records(self) -> list[tuple[bytes, bytes | None, int]]:
        """Every record as (key, value, partition), a tombstone's value None; in each partition, log order."""
        return [*zip(self.keys, self.values, self.partitions), *((k, None, p) for k, p in self.tombstones)]


class _Gathered:
    """One store's share of a batch over all its partitions: per partition the queries (the batch's rows:
    key code, time, offset), which of them are new, and the held entries of the keys they touch. Key codes
    are shifted by a per-partition base, so every partition is computed in one pass."""

    def __init__(self) -> None:
        self.index: dict[int, int] = {}
        self.rows: list[np.ndarray] = []
        self.base: list[int] = []
        self.q: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] = ([], [], [])
        self.new: list[np.ndarray] = []
        self.vals: list[list[np.ndarray]] = []
        self.e: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] = ([], [], [])
        self.ev: list[list[np.ndarray]] = []
        self._next = 0

    def add(self, st: _Part, p: int, rows: np.ndarray, bcodes: np.ndarray, btexts: KeyTexts, t: np.ndarray,
            o: np.ndarray, vals: list[np.ndarray]) -> None:
        used, inv = used_codes(bcodes, len(btexts.texts))
        k = st.keys.codes(btexts, used)[inv]
        new = o > st.max_offset                                   # dedupe: an offset already held is a replay
        if not new.all():
            new[~new] = ~np.isin(o[~new], st.o)
        touched = np.zeros(len(st.keys), bool)
        touched[k] = True
        held = np.flatnonzero(touched[st.k])                     # the touched keys' entries: one pass over the state
        base = self._next
        self._next += len(st.keys)
        self.index[p] = len(self.rows)
        self.rows.append(rows)
        self.base.append(base)
        for lst, a in zip(self.q, (k + base, t, o)):
            lst.append(a)
        self.new.append(new)
        self.vals.append(vals)
        for lst, a, b in zip(self.e, (st.k, st.t, st.o), (k, t, o)):
            lst.append(a[held])
            lst.append(b[new])
        self.e[0][-2] += base
        self.e[0][-1] += base
        self.ev.append([a[held] for a in st.v])
        self.ev.append([b[new] for b in vals])

    def compute(self, lay: _Layout) -> dict[str, np.ndarray]:
        """Every aggregate of the store for each query, in the order the partitions were added."""
        qk, qt, qo = (np.concatenate(lst) for lst in self.q)
        ek, et, eo = (np.concatenate(lst) for lst in self.e)
        ev = [np.concatenate(cols) for cols in zip(*self.ev)] if lay.fields else []
        return _compute(lay, ek, et, eo, ev, qk, qt, qo)


class AggregateEngine:
    """Every aggregate of one pipeline: pure logic over numpy arrays, no client."""

    def __init__(self, specs: Sequence[AggregateSpec], *, grace_ms: int = 600_000) -> None:
        for s in specs:
            s.check()
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ConfigError(f"aggregates: names must be unique, got {names}")
        if grace_ms < 0:
            raise ConfigError("aggregates grace: must not be negative")
        self.specs = tuple(specs)
        self.grace_ms = grace_ms
        layouts = []
        for key in dict.fromkeys(s.key for s in specs):
            mine = tuple(s for s in specs if s.key == key)
            cols = tuple(sorted({(s.field, s.kind) for s in mine if s.field}))
            layouts.append(_Layout(key, cols, mine))
        self.layouts = tuple(layouts)
        self._by_id = {lay.id: lay for lay in self.layouts}
        agg_window.lib()                                    # built (or found) now, not in the first batch

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.specs)

    def new_state(self) -> PartitionState:
        return PartitionState({lay.id: _empty(lay) for lay in self.layouts})

    # ------------------------------------------------------------------ scoring
    def apply(self, states: Mapping[int, PartitionState], columns: Mapping[str, Any], nulls: Mapping[str, np.ndarray],
              symbols: Mapping[str, Sequence[str]], parts: np.ndarray, offsets: np.ndarray,
              times: np.ndarray) -> Applied:
        """Insert the batch's events (rows in partition order) and compute every aggregate for each row."""
        n = len(offsets)
        applied = Applied({s.name: np.full(n, np.nan) for s in self.specs})
        for lay in self.layouts:
            kcol = columns.get(lay.key)
            if kcol is None:
                raise ConfigError(f"aggregates: the key field {lay.key!r} is not in the input")
            kcodes, ktexts = key_values(kcol, symbols.get(lay.key), n)
            knull = nulls.get(lay.key)
            if knull is not None:
                kcodes = np.where(knull, -1, kcodes)
            vals, raws = self._fields(lay, columns, nulls, symbols, n)
            batch = _Gathered()
            keyed = KeyTexts(ktexts)
            for p in np.unique(parts).tolist():
                rows = np.flatnonzero((parts == p) & (kcodes >= 0))
                if len(rows):
                    batch.add(states[p].parts[lay.id], p, rows, kcodes[rows], keyed, times[rows], offsets[rows],
                              [v[rows] for v in vals])
            if batch.rows:
                rows = np.concatenate(batch.rows)
                for name, col in batch.compute(lay).items():
                    applied.columns[name][rows] = col
                blocks = _Blocks((lay.id + SEP).encode(), kcodes, keyed, times, offsets, raws)
                for p, i in batch.index.items():
                    keys, values = blocks.records(states[p].parts[lay.id], batch.rows[i])
                    applied.keys.extend(keys)
                    applied.values.extend(values)
                    applied.partitions.extend(repeat(p, len(keys)))
            for p in np.unique(parts).tolist():
                st = states[p].parts[lay.id]
                if p in batch.index:
                    i = batch.index[p]
                    st.append([batch.q[0][i][batch.new[i]] - batch.base[i], batch.q[1][i][batch.new[i]],
                               batch.q[2][i][batch.new[i]], *(b[batch.new[i]] for b in batch.vals[i])])
                    st.newest = max(st.newest, int(batch.q[1][i].max()))
                    _evict(lay, st, self.grace_ms)
                applied.tombstones.extend(zip(st.tombstones, repeat(p)))
                st.tombstones = []
        return applied

    def _fields(self, lay: _Layout, columns: Mapping[str, Any], nulls: Mapping[str, np.ndarray],
                symbols: Mapping[str, Sequence[str]], n: int) -> tuple[list[np.ndarray], list[FieldValues]]:
        """Per store field: the values held (float64 or text hashes) and what the changelog keeps (the floats,
        or each row's code into the batch's texts, -1 for null, with those texts)."""
        vals: list[np.ndarray] = []
        raws: list[FieldValues] = []
        for name, kind in lay.fields:
            col = columns.get(name)
            if col is None:
                raise ConfigError(f"aggregates: the field {name!r} is not in the input")
            null = nulls.get(name)
            if kind == "float":
                v = np.asarray(col, np.float64).copy() if isinstance(col, np.ndarray) and col.dtype.kind in "iufb" \
                    else np.array([_float(x) for x in _items(col)], np.float64)
                if null is not None:
                    v[null] = np.nan
                vals.append(v)
                raws.append(v)
            else:
                codes, texts = key_values(col, symbols.get(name), n)
                if null is not None:
                    codes = np.where(null, -1, codes)
                table = np.array([_hash(t) for t in texts] + [NULL_HASH], np.int64)
                vals.append(table[codes])                       # code -1 -> the NULL_HASH slot
                raws.append((codes, texts))
        return vals, raws

    # ------------------------------------------------------------------ changelog
    def restore(self, records: Iterable[Record]) -> PartitionState:
        """A partition's state from its changelog records, in log order (a later record of a key wins)."""
        latest: dict[bytes, bytes | None] = {}
        for key, value in records:
            latest[key] = value
        state = self.new_state()
        found: dict[str, list[tuple[bytes, Block]]] = {lay.id: [] for lay in self.layouts}
        stale: list[bytes] = []
        for key, value in latest.items():
            if value is None:
                continue
            lay = self._by_id.get(key.partition(SEP.encode())[0].decode("utf-8", "replace"))
            try:
                if lay is None:
                    raise ValueError("a layout no longer configured")
                found[lay.id].append((key, decode(value, lay.kinds)))
            except ValueError:
                stale.append(key)                 # another layout's or format's record: deleted
        if stale:
            log.warning("aggregates: %d changelog records of another layout or format are deleted", len(stale))
        for lay in self.layouts:
            _load(lay, state.parts[lay.id], found[lay.id], self.grace_ms)
        first = state.parts[self.layouts[0].id] if self.layouts else None
        if first is not None:
            first.tombstones.extend(stale)
        return state


def _empty(lay: _Layout) -> _Part:
    kinds = [np.int64, np.int64, np.int64, *(np.float64 if kind == "float" else np.int64 for _, kind in lay.fields)]
    return _Part([np.zeros(0, dtype) for dtype in kinds])


def _items(col: Any) -> list[Any]:
    return col.to_list() if hasattr(col, "to_list") else list(col)


def _float(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def _hash(text: bytes) -> int:
    h = hash(text)
    return h if h != NULL_HASH else h + 1


class _Blocks:
    """A batch's changelog records for one store: per partition, its rows' entries in blocks of at most
    ``MAX_BYTES`` (``models.agg_records``). Key codes and text codes index the batch's tables."""

    def __init__(self, head: bytes, kcodes: np.ndarray, keys: KeyTexts, t: np.ndarray, o: np.ndarray,
                 raws: list[FieldValues]) -> None:
        self.head, self.kcodes, self.ktexts, self.t, self.o, self.raws = head, kcodes, keys.texts, t, o, raws
        self.size = FIXED_BYTES + np.append(keys.length, 0)[kcodes]              # per row, as if its texts were new
        for raw in raws:
            if isinstance(raw, tuple):
                tlen = np.fromiter(map(len, raw[1]), np.int64, len(raw[1]))
                self.size = self.size + 4 + np.append(tlen, 0)[raw[0]]
            else:
                self.size = self.size + 8

    def records(self, st: _Part, rows: np.ndarray) -> tuple[list[bytes], list[bytes]]:
        """The records of one partition's ``rows`` (in partition order), tracked in ``st`` for their deletion."""
        cuts = np.flatnonzero(np.diff(np.cumsum(self.size[rows]) // MAX_BYTES)) + 1
        keys: list[bytes] = []
        values: list[bytes] = []
        for chunk in np.split(rows, cuts):
            o, t = self.o[chunk], self.t[chunk]
            used, kidx = used_codes(self.kcodes[chunk], len(self.ktexts))
            fields: list[FieldValues] = []
            for raw in self.raws:
                if isinstance(raw, tuple):
                    codes = raw[0][chunk]
                    valid = codes >= 0
                    tused, tidx = used_codes(codes[valid], len(raw[1]))
                    idx = np.full(len(chunk), -1, np.int32)
                    idx[valid] = tidx
                    fields.append((idx, [raw[1][c] for c in tused.tolist()]))
                else:
                    fields.append(raw[chunk])
            key = self.head + b"%d-%d-%d" % (int(o.min()), int(o.max()), len(chunk))
            values.append(encode(Block(o, t, kidx, list(map(self.ktexts.__getitem__, used.tolist())), fields)))
            keys.append(key)
            heapq.heappush(st.logged, (int(t.max()), key))
        return keys, values


def _load(lay: _Layout, st: _Part, blocks: Sequence[tuple[bytes, Block]], grace_ms: int) -> None:
    """Fill an empty ``st`` from its records' blocks; an offset found in several records (a replayed batch) once."""
    cols: list[list[np.ndarray]] = [[] for _ in range(3 + len(lay.fields))]
    for key, b in blocks:
        if not len(b.offsets):
            continue
        cols[0].append(st.keys.codes(KeyTexts(b.keys))[b.kidx])
        cols[1].append(b.times)
        cols[2].append(b.offsets)
        for j, values in enumerate(b.fields):
            if isinstance(values, tuple):
                table = np.array([_hash(x) for x in values[1]] + [NULL_HASH], np.int64)
                cols[3 + j].append(table[values[0]])          # index -1 -> the NULL_HASH slot
            else:
                cols[3 + j].append(values)
        heapq.heappush(st.logged, (int(b.times.max()), key))
    if not cols[0]:
        return
    arrays = [np.concatenate(c) for c in cols]
    _, first = np.unique(arrays[2], return_index=True)
    st.append([a[first] for a in arrays])
    st.newest = int(st.t.max())
    _evict(lay, st, grace_ms)


def _factorize(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Dense codes of ``x`` (equal values, equal codes) and how many there are. A field with few distinct values
    is coded by searching the distinct values of a sample; when the sample misses one, by ``np.unique``."""
    u = np.unique(x[::max(1, len(x) // 256)])
    codes = np.minimum(np.searchsorted(u, x), len(u) - 1)
    if np.array_equal(u[codes], x):
        return codes, len(u)
    u, inv = np.unique(x, return_inverse=True)
    return inv.reshape(-1), len(u)


def _evict(lay: _Layout, st: _Part, grace_ms: int) -> None:
    """Drop entries no replay within the grace can need and delete the records holding only such entries;
    forget keys with none left."""
    cutoff = st.newest - lay.longest_ms - grace_ms
    while st.logged and st.logged[0][0] <= cutoff:
        st.tombstones.append(heapq.heappop(st.logged)[1])
    if not st.n:
        return
    gone = st.t <= cutoff
    if not gone.any():
        return
    st.keep(~gone)
    live = np.flatnonzero(np.bincount(st.k, minlength=len(st.keys)))
    if len(st.keys) > 2 * len(live) + 1024:               # renumber the keys still held
        st.keys.keep(live)
        st.cols[0][:st.n] = np.searchsorted(live, st.k)


def _compute(lay: _Layout, ek: np.ndarray, et: np.ndarray, eo: np.ndarray, ev: list[np.ndarray],
             qk: np.ndarray, qt: np.ndarray, qo: np.ndarray) -> dict[str, np.ndarray]:
    """Every aggregate of the store for each query (key, time, offset) over the entries (any order)."""
    nq = len(qk)
    out = {s.name: np.full(nq, np.nan) for s in lay.specs}
    tmin = int(min(et.min(initial=qt.min()), qt.min()))
    span = int(max(et.max(initial=qt.max()), qt.max())) - tmin + 1
    if (int(max(ek.max(initial=0), qk.max())) + 2) * span >= (1 << 62):
        raise ConfigError("aggregates: the record times in one batch span too far to index (more than ~100 years)")
    comp = ek * span + (et - tmin)
    order = _by_key_time_offset(comp, eo)
    comp, et, eo = comp[order], et[order], eo[order]
    ev = [a[order] for a in ev]
    col = {f: j for j, f in enumerate(lay.fields)}
    longest = lay.longest_ms
    lo = np.searchsorted(comp, qk * span + np.clip(qt - longest + 1 - tmin, 0, span - 1), "left")
    hi = np.searchsorted(comp, qk * span + (qt - tmin), "right")
    if agg_window.lib() is not None:                       # the same entries in the same order, in C
        for s in lay.specs:
            v = None if s.field is None else ev[col[(s.field, s.kind)]]
            op = 0 if s.field is None else agg_window.OPS[s.op]
            out[s.name] = agg_window.window(op, s.window_ms, et, eo, v, NULL_HASH, lo, hi, qt, qo)
        return out
    windows = sorted({s.window_ms for s in lay.specs})
    for q0, q1, qi, ei in _pairs(lo, hi):
        ok = eo[ei] <= qo[q0 + qi]                            # the entry is at or before the query
        age = qt[q0 + qi] - et[ei]                            # >= 0; the entry is inside window w when age < w
        for w in windows:
            okw = ok if w == longest else ok & (age < w)
            for s in lay.specs:
                if s.window_ms == w:
                    v = None if s.field is None else ev[col[(s.field, s.kind)]]
                    out[s.name][q0:q1] = _reduce(s, q1 - q0, qi, ei, okw, v)
    return out


def _by_key_time_offset(comp: np.ndarray, eo: np.ndarray) -> np.ndarray:
    """``np.lexsort((eo, comp))``: one sort by ``comp`` (key and time), then the few runs of equal ``comp``
    ordered by offset."""
    order = np.argsort(comp)
    sc = comp[order]
    tie = np.flatnonzero(sc[1:] == sc[:-1])
    if len(tie):
        pos = np.union1d(tie, tie + 1)                        # every place in a run of equal comp, in order
        sub = order[pos]
        order[pos] = sub[np.lexsort((eo[sub], comp[sub]))]
    return order


def _pairs(lo: np.ndarray, hi: np.ndarray) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """(first query, end query, query index relative to the first, entry index) of every (query, candidate
    entry) pair, in chunks of at most MAX_PAIRS pairs (one query's pairs never split); query indices ascend."""
    sizes = hi - lo
    n = len(sizes)
    start = 0
    while start < n:
        cum = np.cumsum(sizes[start:])
        end = start + max(1, int(np.searchsorted(cum, MAX_PAIRS, "right")))
        sz = sizes[start:end]
        qi = np.repeat(np.arange(end - start), sz)
        first = np.cumsum(sz) - sz
        ei = lo[start:end][qi] + (np.arange(int(sz.sum())) - first[qi])
        yield start, end, qi, ei
        start = end


def _reduce(s: AggregateSpec, nq: int, qi: np.ndarray, ei: np.ndarray, ok: np.ndarray,
            v: np.ndarray | None) -> np.ndarray:
    """One aggregate for ``nq`` queries from their (query, entry) pairs; ``ok``: the entry is at or before the query."""
    if v is None:                                     # count of events
        return np.bincount(qi[ok], minlength=nq).astype(np.float64)
    x = v[ei]
    ok = ok & (~np.isnan(x) if s.kind == "float" else x != NULL_HASH)
    q, x = qi[ok], x[ok]
    if s.op == "sum":
        return np.bincount(q, weights=x, minlength=nq)
    if s.op in ("count", "mean"):
        cnt = np.bincount(q, minlength=nq).astype(np.float64)
        if s.op == "count":
            return cnt
        total = np.bincount(q, weights=x, minlength=nq)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(cnt > 0, total / np.maximum(cnt, 1.0), np.nan)
    if s.op in ("min", "max"):
        res = np.full(nq, np.nan)
        if len(q):
            first = np.flatnonzero(np.concatenate([[True], q[1:] != q[:-1]]))     # q ascends
            res[q[first]] = (np.minimum if s.op == "min" else np.maximum).reduceat(x, first)
        return res
    if not len(q):                                     # distinct_count
        return np.zeros(nq)
    codes, width = _factorize(x)
    cells = q * width + codes                             # (query, distinct value)
    if nq * width <= max(4 * len(q), 1 << 16):           # few distinct values: mark a dense table
        seen = np.zeros(nq * width, bool)
        seen[cells] = True
        return seen.reshape(nq, width).sum(axis=1).astype(np.float64)
    return np.bincount(np.unique(cells) // width, minlength=nq).astype(np.float64)
