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

import ctypes
import hashlib
import heapq
import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from itertools import repeat
from typing import Any, Literal

import numpy as np

from models import agg_window
from models.agg_records import FIXED_BYTES, MAX_BYTES, Block, FieldValues, Kind, decode, encode
from models.key_index import KeyIndex, KeyTexts
from models.lookups import key_texts, key_values, used_codes
from schemas.errors import ConfigError

Op = Literal["count", "sum", "mean", "min", "max", "distinct_count"]
OPS: tuple[Op, ...] = ("count", "sum", "mean", "min", "max", "distinct_count")
UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
SEP = "\x1f"
NULL_HASH = np.iinfo(np.int64).min       # a null text value among the hashes of a text field
MAX_PAIRS = 1 << 22                      # (event, window entry) pairs handled at once: bounds a batch's memory
TAIL_MIN = 1 << 15                       # entries a partition's tail holds (at least) before it is merged
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

    @cached_property
    def id(self) -> str:                     # read several times per batch: digested once
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
    """One store's entries in one partition: columns of key code, record time (ms), offset, then one per field
    (float64 with NaN for null, or int64 text hashes), in two runs:

    - ``seg``, sorted by (key code, time, offset): a key's entries are one slice, found through ``starts``;
    - ``tail``, the entries appended since the last merge, in arrival order (spare capacity: appends are
      amortised). Once it holds more than ``max(TAIL_MIN, len(seg) // 8)`` entries it is sorted and merged into
      the segment, so a batch scans at most that many entries for its keys' recent ones, and each entry is
      moved a bounded number of times on average. The segment's columns are the first entries of ``room``
      (twice the entries when it grows; pages not yet written cost address space, not memory, so ``nbytes``
      counts the room up to the most entries it has held): the merge writes there in place from the back (C),
      or by one stable sort of the two runs (numpy), so a merge allocates no new columns.
    """

    seg: list[np.ndarray]
    tail: list[np.ndarray]
    room: list[np.ndarray]
    nt: int = 0
    held: int = 0                            # the most entries the room has held since it was allocated
    keys: KeyIndex = field(default_factory=KeyIndex)        # a key's bytes (as received) <-> its code
    newest: int = -(1 << 62)
    oldest: int = 1 << 62                    # the oldest record time held: eviction scans nothing before it is due
    max_offset: int = -1                     # the highest offset ever inserted: above it, nothing is a replay
    tombstones: list[bytes] = field(default_factory=list)    # wholly evicted records' keys, not yet written
    logged: list[tuple[int, bytes]] = field(default_factory=list)   # a heap of (newest time, key) of live records
    starts: np.ndarray | None = None         # where each key's entries begin in the segment (None: not built yet)

    @property
    def n(self) -> int:
        return len(self.seg[0]) + self.nt

    def column(self, j: int) -> np.ndarray:
        """Column ``j`` of every entry held (the segment's, then the tail's)."""
        return np.concatenate([self.seg[j], self.tail[j][:self.nt]])

    @property
    def k(self) -> np.ndarray:
        return self.column(0)

    @property
    def t(self) -> np.ndarray:
        return self.column(1)

    @property
    def o(self) -> np.ndarray:
        return self.column(2)

    def in_segment(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where each key's entries are in the segment: ``seg[lo[i]:hi[i]]`` (empty for a key it holds none of),
        from an index of the keys' first entries built once per change of the segment."""
        if self.starts is None:
            self.starts = np.concatenate([[0], np.cumsum(np.bincount(self.seg[0], minlength=len(self.keys)))])
        last = len(self.starts) - 1                        # a key coded since holds nothing here: lo = hi = the end
        return self.starts[np.minimum(codes, last)], self.starts[np.minimum(codes + 1, last)]

    def in_tail(self, codes: np.ndarray) -> np.ndarray:
        """The indexes in the tail (arrival order) of the entries of the keys ``codes``."""
        if not self.nt:
            return np.zeros(0, np.int64)
        touched = np.zeros(len(self.keys) + 1, bool)
        touched[codes] = True
        return np.flatnonzero(touched[self.tail[0][:self.nt]])

    def append(self, arrays: Sequence[np.ndarray]) -> None:
        m = len(arrays[0])
        if not m:
            return
        if self.nt + m > len(self.tail[0]):
            cap = max(2 * len(self.tail[0]), self.nt + m, 1024)
            grown = [np.empty(cap, c.dtype) for c in self.tail]
            for g, c in zip(grown, self.tail):
                g[:self.nt] = c[:self.nt]
            self.tail = grown
        for c, a in zip(self.tail, arrays):
            c[self.nt:self.nt + m] = a
        self.nt += m
        self.max_offset = max(self.max_offset, int(arrays[2].max()))
        self.oldest = min(self.oldest, int(arrays[1].min()))
        if self.nt > max(TAIL_MIN, len(self.seg[0]) // 8):
            self.merge()

    def merge(self) -> None:
        """The tail merged into the segment."""
        if not self.nt:
            return
        ns, nt = len(self.seg[0]), self.nt
        tail = [c[:nt] for c in self.tail]
        run = [c[_arrival_order(tail, len(self.keys))[0]] for c in tail]
        if len(self.room[0]) < ns + nt:
            self._resize(2 * (ns + nt) + 64)
        if agg_window.lib() is not None:
            agg_window.merge(self.room, ns, run, nt)
        else:
            cols = [np.concatenate([c, r]) for c, r in zip(self.seg, run)]
            order = _sorted_order(cols[0], cols[1], cols[2])          # stable: the segment's first among equals
            for room, c in zip(self.room, cols):
                np.take(c, order, out=room[:ns + nt])
        self.seg = [room[:ns + nt] for room in self.room]
        self.held = max(self.held, ns + nt)
        self.starts = None
        self.nt = 0

    def _resize(self, cap: int) -> None:
        """The segment's columns moved to new ones with room for ``cap`` entries."""
        ns = len(self.seg[0])
        self.room = [np.empty(cap, c.dtype) for c in self.seg]
        for room, c in zip(self.room, self.seg):
            room[:ns] = c
        self.seg = [room[:ns] for room in self.room]
        self.held = ns
        _give_back()

    def keep(self, mask: np.ndarray) -> None:
        """Keep the entries where ``mask`` (over the segment's, then the tail's) is set."""
        ns = len(self.seg[0])
        ms, mt = mask[:ns], mask[ns:]
        ns_kept = int(np.count_nonzero(ms))
        for room, c in zip(self.room, self.seg):
            room[:ns_kept] = c[ms]
        self.seg = [room[:ns_kept] for room in self.room]
        if 4 * ns_kept + 256 < len(self.room[0]):          # mostly evicted: the spare room is given back
            self._resize(2 * ns_kept + 64)
        self.starts = None
        kept = [c[:self.nt][mt] for c in self.tail]
        for c, a in zip(self.tail, kept):
            c[:len(a)] = a
        self.nt = len(kept[0])
        t = self.t
        self.oldest = int(t.min()) if len(t) else 1 << 62

    def recode(self, live: np.ndarray) -> None:
        """Keep only the keys ``live`` (ascending codes, every held entry's among them), renumbered in that order
        (the segment's order is kept)."""
        self.keys.keep(live)
        self.seg[0][:] = np.searchsorted(live, self.seg[0])
        self.starts = None
        self.tail[0][:self.nt] = np.searchsorted(live, self.tail[0][:self.nt])

    def nbytes(self) -> int:
        room = sum(c.itemsize for c in self.room) * self.held
        return room + int(sum(c.nbytes for c in self.tail)) + self.keys.nbytes() + RECORD_BYTES * len(self.logged)


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
    """One store's share of a batch, per partition: the queries (the batch's rows: key code, time, offset), which
    of them are new, their values, and the entries of the keys they touch as two runs sorted by (key, time,
    offset), read where they are: the partition's segment, and the recent ones (the tail's and the new)."""

    def __init__(self) -> None:
        self.index: dict[int, int] = {}
        self.rows: list[np.ndarray] = []
        self.parts: list[_Part] = []
        self.q: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.new: list[np.ndarray] = []
        self.vals: list[list[np.ndarray]] = []
        self.recent: list[list[np.ndarray]] = []       # key code, time, offset, fields: sorted
        self.touched: list[np.ndarray] = []            # the distinct key codes
        self.starts: list[np.ndarray | None] = []      # where each key's recent entries begin (None: not counted)

    def add(self, st: _Part, p: int, rows: np.ndarray, bcodes: np.ndarray, btexts: KeyTexts, t: np.ndarray,
            o: np.ndarray, vals: list[np.ndarray]) -> None:
        used, inv = used_codes(bcodes, len(btexts.texts))
        codes = st.keys.codes(btexts, used)
        k = codes[inv]
        new = o > st.max_offset                                   # dedupe: an offset already held is a replay
        if not new.all():
            new[~new] = ~np.isin(o[~new], st.o)
        in_tail = st.in_tail(codes)
        recent = [np.concatenate([c[in_tail], b[new]]) for c, b in zip(st.tail, (k, t, o, *vals))]
        order, starts = _arrival_order(recent, len(st.keys))
        self.index[p] = len(self.rows)
        self.rows.append(rows)
        self.parts.append(st)
        self.q.append((k, t, o))
        self.new.append(new)
        self.vals.append(vals)
        self.recent.append([c[order] for c in recent])
        self.starts.append(starts)
        self.touched.append(codes)

    def inserted(self, i: int) -> list[np.ndarray]:
        """The columns of partition ``i``'s new entries."""
        new = self.new[i]
        return [a[new] for a in (*self.q[i], *self.vals[i])]

    def compute(self, lay: _Layout) -> dict[str, np.ndarray]:
        """Every aggregate of the store for each query, in the order the partitions were added."""
        outs = [self._partition(lay, i) for i in range(len(self.rows))]
        return {s.name: np.concatenate([out[s.name] for out in outs]) for s in lay.specs}

    def _partition(self, lay: _Layout, i: int) -> dict[str, np.ndarray]:
        st, (qk, qt, qo), recent = self.parts[i], self.q[i], self.recent[i]
        seg = st.seg
        if agg_window.lib() is None:                        # numpy: the touched keys' segment entries gathered
            idx = _ranges(*st.in_segment(self.touched[i]))
            ek, et, eo, *ev = (np.concatenate([c[idx], r]) for c, r in zip(seg, recent))
            return _compute(lay, ek, et, eo, ev, qk, qt, qo)
        lo, hi = st.in_segment(qk)
        starts = self.starts[i]
        if starts is None:
            rlo, rhi = np.searchsorted(recent[0], qk, "left"), np.searchsorted(recent[0], qk, "right")
        else:
            rlo, rhi = starts[qk], starts[qk + 1]
        order = np.argsort(qk, kind="stable")               # the queries by key: the segment read nearly in sequence
        col = {f: 3 + j for j, f in enumerate(lay.fields)}
        aggs = []
        for s in lay.specs:
            j = None if s.field is None else col[(s.field, s.kind)]
            op = 0 if s.field is None else agg_window.OPS[s.op]
            aggs.append(agg_window.Agg(op, s.window_ms, None if j is None else seg[j], None if j is None else recent[j]))
        got = agg_window.windows(aggs, agg_window.Run(seg[1], seg[2]), agg_window.Run(recent[1], recent[2]),
                                 lo, hi, rlo, rhi, qt, qo, NULL_HASH, order)
        return {s.name: v for s, v in zip(lay.specs, got)}


def _ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The indexes ``lo[0]..hi[0]-1``, ``lo[1]..hi[1]-1``, ... in that order."""
    sizes = hi - lo
    total = int(sizes.sum())
    if not total:
        return np.zeros(0, np.int64)
    return np.repeat(lo - (np.cumsum(sizes) - sizes), sizes) + np.arange(total)


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
        present = np.flatnonzero(np.bincount(parts)).tolist() if n else []     # the batch's partitions
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
            keyed = key_texts(ktexts)
            for p in present:
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
            for p in present:
                st = states[p].parts[lay.id]
                if p in batch.index:
                    i = batch.index[p]
                    st.append(batch.inserted(i))
                    st.newest = max(st.newest, int(batch.q[i][1].max()))
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
    room = [np.zeros(0, dtype) for dtype in kinds]
    return _Part([c[:0] for c in room], [np.zeros(0, dtype) for dtype in kinds], room)


_LIBC: Any = None


def _give_back() -> None:
    """Return the heap's free pages to the system (glibc's ``malloc_trim``; elsewhere nothing). Called when a
    segment's columns move: the old ones, and the batches' temporaries, otherwise stay in the process."""
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC(0)


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
        self.head, self.kcodes, self.keys, self.t, self.o, self.raws = head, kcodes, keys, t, o, raws
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
            used, kidx = used_codes(self.kcodes[chunk], len(self.keys.texts))
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
            values.append(encode(Block(o, t, kidx, self.keys.joined(used), fields)))
            keys.append(key)
            heapq.heappush(st.logged, (int(t.max()), key))
        return keys, values


def _load(lay: _Layout, st: _Part, blocks: Sequence[tuple[bytes, Block]], grace_ms: int) -> None:
    """Fill an empty ``st`` from its records' blocks; an offset found in several records (a replayed batch) once."""
    cols: list[list[np.ndarray]] = [[] for _ in range(3 + len(lay.fields))]
    for key, b in blocks:
        if not len(b.offsets):
            continue
        assert isinstance(b.keys, list)                    # decoded: the texts themselves
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
    st.merge()
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
    forget keys with none left. Entries are dropped once the oldest is a sixteenth of the longest window past
    the cutoff, so a steady stream compacts its state now and then, not at every batch."""
    cutoff = st.newest - lay.longest_ms - grace_ms
    while st.logged and st.logged[0][0] <= cutoff:
        st.tombstones.append(heapq.heappop(st.logged)[1])
    if not st.n or st.oldest > cutoff - lay.longest_ms // 16:
        return
    st.keep(st.t > cutoff)
    live = np.flatnonzero(np.bincount(st.k, minlength=len(st.keys)))
    if len(st.keys) > 2 * len(live) + 1024:               # renumber the keys still held
        st.recode(live)


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


def _arrival_order(cols: Sequence[np.ndarray], nkeys: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The order of entries (key code, time, offset columns first; keys coded below ``nkeys``) by (key, time,
    offset), and where each key's entries begin in it: a counting sort by key (C) where each key's entries came
    in time order, else ``_sorted_order`` (starts None)."""
    got = None if agg_window.lib() is None else agg_window.by_key(cols[0], cols[1], cols[2], nkeys)
    return (_sorted_order(cols[0], cols[1], cols[2]), None) if got is None else got


def _sorted_order(k: np.ndarray, t: np.ndarray, o: np.ndarray) -> np.ndarray:
    """The order of entries by (key code, time, offset): one int64 per entry for (key, time), then the ties by
    offset (``np.lexsort`` where the times span too far for one int64)."""
    if not len(k):
        return np.zeros(0, np.int64)
    tmin = int(t.min())
    span = int(t.max()) - tmin + 1
    if (int(k.max()) + 2) * span >= (1 << 62):
        return np.lexsort((o, t, k))
    return _by_key_time_offset(k * span + (t - tmin), o)


def _by_key_time_offset(comp: np.ndarray, eo: np.ndarray) -> np.ndarray:
    """``np.lexsort((eo, comp))``: one sort by ``comp`` (key and time), then the few runs of equal ``comp``
    ordered by offset."""
    order = np.argsort(comp, kind="stable")                 # timsort: sorted runs are merged, not sorted again
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
