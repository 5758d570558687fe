"""Ground truth, without Kafka or Redis, in two stages (deterministic functions of a key-value store and input).

State lives in a key-value ``Store`` (a changelog-backed Faust table in the monitor) with one
small key per event and per joined row, so a record reads and writes O(1) state (a horizon
sweep and a window close scan the store, once per window step).

1. ``JoinCore`` -- partitioned like the events (prediction and label topics are co-partitioned by
   the event key). Joins each label to the predictions of its event id and emits row operations:
   ``set`` / ``del`` of one joined row (event id -> [score, label, decision]) in the window of the
   label's time, keyed by model|version|variant, and ``wm`` (its label-time watermark) for every
   quality partition. Keys per source partition ``p``::

       m|p       {"offsets": {topic: last applied offset}, "wm": max label time (ms) or None,
                  "sent": last broadcast step, "counts": {...}, "last": {"put": {key: value}, "del": [key]},
                  "outbox": [the row operations of the last batch written]}
       e|p|<id>  {"t": earliest time seen, "label": {"y", "t"} | None,
                  "preds": {"model|version|variant": [score, decision]}}
       h|p|<model|version|variant>|<start>  {"yes": {bin: rows}, "no": {bin: rows}}: the score-bin counts
                  (``quality.score_bins``) of every prediction of a score head in that window of EVENT time,
                  split by the model's decision, labelled or not (the live estimate's input). Each batch
                  that changed one sends it whole (``est``); one past the horizon of the partition's newest
                  prediction time (``pwm`` in the meta) is dropped when a new window starts.

2. ``QualityCore`` -- partitioned by model|version|variant. Keys per quality partition ``q``::

       q|q                  {"wms": {source: wm}, "windows": {"key|start": {model, version, variant, start}},
                             "totals": {key: totals of closed windows}, "late", "alerts", "gc": [key],
                             "est": {key: [event-time window starts, the newest EST_KEEP]}}
       r|q|<key|start>|<id>  [score, label, decision]
       x|q|<key|start>|<src> one join partition's ``h`` counts of that event-time window, as last sent

   The live estimate of an event-time window (``est`` results) is CBPE over the sum of its ``x`` counts,
   calibrated on the version's closed windows so far: computed when counts arrive and again, for every
   kept window of the version, when a window of it closes (the calibration changed).

Invariants:
- Writes go in order to one changelog partition (``write``): the meta key first, then the keys
  it names (``last`` / ``gc``). A crash leaves a prefix; a meta that reached the changelog is
  completed from what it names before the next change (``settle``), one that did not leaves the
  record (the join: its batch, ``JoinCore.batch_update``) unapplied, and it is replayed.
- The join sends row operations only once the meta naming them (``outbox``) is on the changelog,
  and sends that outbox again after a crash: an operation is never derived twice, from states a
  replay reached in another order across topics (which could leave a row no operation undoes).
- A record at or below its topic's applied offset is a replay: the join changes nothing.
- Row operations are idempotent (set by event id, delete by event id, watermark by max, ``est`` by
  window and source partition, with the counts whole), so re-sending them after a crash cannot
  double-count.
- A duplicate label replaces the row (last one wins) while its window is open; once closed, the
  duplicate is counted and dropped (a closed window's figures are final).
- A pending entry older than the watermark minus the horizon is dropped: a label that never met
  a prediction counts as orphaned, a prediction never labelled as unlabelled.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Protocol

import numpy as np

from monitoring import alerts as alerting
from monitoring import cbpe, quality
from monitoring.windows import WindowSpec

COUNTS = ("labels", "duplicates", "orphans", "unlabelled", "late", "joined")
EST_KEEP = 48   # event-time windows of live estimates kept per model|version|variant (two days of hourly ones)
Op = dict[str, Any]


class Store(Protocol):
    """The key-value state (a Faust table): JSON values by string key."""

    def get(self, key: str) -> Any: ...
    def __setitem__(self, key: str, value: Any) -> None: ...
    def __delitem__(self, key: str) -> None: ...
    def items(self) -> Iterable[tuple[str, Any]]: ...


@dataclass
class Update:
    """One record's changes: ``meta`` (None: unchanged) under ``meta_key``, then ``put`` and ``delete``,
    then ``then`` (set after everything else, e.g. the record's offset)."""

    meta_key: str
    meta: dict[str, Any] | None
    put: dict[str, Any] = field(default_factory=dict)
    delete: list[str] = field(default_factory=list)
    then: dict[str, Any] = field(default_factory=dict)


def write(store: Store, u: Update, *, again: bool = False) -> None:
    """Meta first: it names the other writes, so a crash after it is completed by ``settle``.

    ``again``: a repeat after a failed changelog write; a key this update deleted before is
    deleted again (set, then deleted), so the changelog gets its tombstone."""
    if u.meta is not None:
        store[u.meta_key] = u.meta
    for key, value in u.put.items():
        store[key] = value
    for key in u.delete:
        if again and store.get(key) is None:
            store[key] = 0
        if store.get(key) is not None:
            del store[key]
    for key, value in u.then.items():
        store[key] = value


class Staged:
    """A batch's view of a ``Store``: reads see the batch's earlier writes, which are kept (``over``,
    and in order in ``log``) instead of being written to the base store."""

    GONE: Any = object()     # a deleted key's value in ``over`` and ``log``

    def __init__(self, base: Store) -> None:
        self.base = base
        self.over: dict[str, Any] = {}
        self.log: list[tuple[str, Any]] = []

    def get(self, key: str) -> Any:
        value = self.over.get(key, self)
        if value is self:
            return self.base.get(key)
        return None if value is Staged.GONE else value

    def __setitem__(self, key: str, value: Any) -> None:
        self.over[key] = value
        self.log.append((key, value))

    def __delitem__(self, key: str) -> None:
        self.over[key] = Staged.GONE
        self.log.append((key, Staged.GONE))

    def items(self) -> Iterable[tuple[str, Any]]:
        """The base's keys in its order (with the batch's values), then the batch's new keys."""
        seen = set()
        for key, value in self.base.items():
            seen.add(key)
            value = self.over.get(key, value)
            if value is not Staged.GONE:
                yield key, value
        for key, value in self.over.items():
            if key not in seen and value is not Staged.GONE:
                yield key, value


def settle(store: Store, put: Mapping[str, Any], delete: Iterable[str]) -> None:
    """Redo the writes a stored meta names (no-ops unless a crash cut them off)."""
    for key, value in put.items():
        if store.get(key) != value:
            store[key] = value
    for key in delete:
        if store.get(key) is not None:
            del store[key]


HeadKind = Literal["score", "classes", "value"]


@dataclass(frozen=True)
class Prediction:
    """``score``: the score (with the model's ``decision``), the predicted class, or the value."""

    event_id: str
    model: str
    version: str
    variant: str
    score: float | str
    decision: bool | None
    event_time: int


@dataclass(frozen=True)
class Label:
    """``y``: a boolean (score heads), a class label or a number."""

    event_id: str
    y: bool | str | float
    time: int


def _check(windows: WindowSpec) -> None:
    if windows.kind != "time" or windows.slide is not None:
        raise ValueError("quality windows are tumbling windows of label time")


def join_meta() -> dict[str, Any]:
    return {"offsets": {}, "wm": None, "sent": None, "counts": dict.fromkeys(COUNTS, 0),
            "last": {"put": {}, "del": []}, "outbox": []}


@dataclass
class JoinUpdate(Update):
    ops: list[Op] = field(default_factory=list)


class JoinCore:
    def __init__(self, *, windows: WindowSpec, horizon_ms: int) -> None:
        _check(windows)
        self.windows = windows
        self.horizon_ms = horizon_ms

    @staticmethod
    def meta(store: Store, part: int) -> dict[str, Any]:
        meta = store.get(f"m|{part}")
        return meta if isinstance(meta, dict) else join_meta()

    @staticmethod
    def resume(store: Store, parts: Iterable[int]) -> dict[tuple[str, int], int]:
        """(topic, partition) -> the offset after the last record of it the stored state applied
        (where a restarted join resumes; topics it applied nothing of are left out)."""
        return {(topic, p): int(off) + 1 for p in parts for topic, off in JoinCore.meta(store, p)["offsets"].items()}

    def apply_prediction(self, store: Store, part: int, topic: str, offset: int, p: Prediction) -> JoinUpdate | None:
        """The changes to write and the row operations to send first; None for a replay."""
        meta = self._begin(store, part, topic, offset)
        if meta is None:
            return None
        ekey = f"e|{part}|{p.event_id}"
        old = store.get(ekey) or {"t": p.event_time, "label": None, "preds": {}}
        key = f"{p.model}|{p.version}|{p.variant}"
        entry = {"t": min(int(old["t"]), p.event_time), "label": old["label"],
                 "preds": {**old["preds"], key: [p.score, p.decision]}}
        ops = [] if entry["label"] is None else self._join(meta, p.event_id, key, entry)
        put: dict[str, Any] = {ekey: entry}
        delete: list[str] = []
        if p.decision is not None and isinstance(p.score, float):   # a score head: count it for the live estimate
            delete = self._tally(store, meta, part, key, p, put)
        return self._update(meta, part, put, delete, ops)

    def apply_label(self, store: Store, part: int, topic: str, offset: int, lab: Label) -> JoinUpdate | None:
        meta = self._begin(store, part, topic, offset)
        if meta is None:
            return None
        meta["counts"]["labels"] += 1
        ekey = f"e|{part}|{lab.event_id}"
        old = store.get(ekey) or {"t": lab.time, "label": None, "preds": {}}
        entry = {"t": min(int(old["t"]), lab.time), "label": {"y": lab.y, "t": lab.time}, "preds": old["preds"]}
        ops: list[Op] = []
        if old["label"] is not None:
            meta["counts"]["duplicates"] += 1
            old_start = self.windows.assign(int(old["label"]["t"]))[0]
            if self._closed(meta, old_start):
                return self._update(meta, part, {}, [], [])     # its window's figures are final
            ops += [{"op": "del", "key": key, "start": old_start, "eid": lab.event_id} for key in entry["preds"]]
        for key in entry["preds"]:
            ops += self._join(meta, lab.event_id, key, entry)
        meta["wm"] = lab.time if meta["wm"] is None else max(int(meta["wm"]), lab.time)
        put, delete = {ekey: entry}, []
        step = (int(meta["wm"]) - self.windows.lateness) // self.windows.size
        if step != meta["sent"]:   # a window may close: tell the quality stage, sweep the horizon
            meta["sent"] = step
            delete = self._evict(store, meta, part, ekey, entry)
            if ekey in delete:
                put = {}
            ops.append({"op": "wm", "wm": meta["wm"]})
        return self._update(meta, part, put, delete, ops)

    @staticmethod
    def batch_update(staged: Staged, part: int, ops: list[Op]) -> JoinUpdate | None:
        """A batch's changes to partition ``part`` as one update (None: it changed nothing there): its
        final meta, naming every key the batch put or deleted (``last``, completed by ``settle`` after
        a crash) and every row operation it made (``outbox``, sent once the update is on the changelog
        and sent again after a crash), then those keys. So a crash leaves the batch unapplied (no meta:
        its records are replayed, and none of its operations was sent) or applied with its operations
        known; operations are never derived twice from different states (a replay may see its records
        in another order across topics than the first run did)."""
        mkey, prefixes, hists = f"m|{part}", (f"e|{part}|", f"h|{part}|"), f"h|{part}|"
        if mkey not in staged.over:
            return None
        mine = [(k, v) for k, v in staged.over.items() if k.startswith(prefixes)]
        put = {k: v for k, v in mine if v is not Staged.GONE}
        delete = [k for k, v in mine if v is Staged.GONE and staged.base.get(k) is not None]
        for k, v in put.items():     # each event-time window's counts the batch changed, whole (idempotent)
            if k.startswith(hists):
                key, _, start = k[len(hists):].rpartition("|")
                ops = [*ops, {"op": "est", "key": key, "start": int(start), "hist": v}]
        meta = {**staged.over[mkey], "last": {"put": put, "del": delete}, "outbox": ops}
        return JoinUpdate(mkey, meta, put, delete, ops=ops)

    @staticmethod
    def outbox(store: Store, part: int) -> list[Op]:
        """The row operations of the last batch written for ``part`` (sent again after a restart)."""
        return list(JoinCore.meta(store, part).get("outbox") or [])

    @staticmethod
    def _begin(store: Store, part: int, topic: str, offset: int) -> dict[str, Any] | None:
        """A private copy of the partition's meta, settled; None for a replay."""
        stored = JoinCore.meta(store, part)
        settle(store, stored["last"]["put"], stored["last"]["del"])
        if offset <= int(stored["offsets"].get(topic, -1)):
            return None
        return {**stored, "offsets": {**stored["offsets"], topic: offset}, "counts": dict(stored["counts"])}

    @staticmethod
    def _update(meta: dict[str, Any], part: int, put: dict[str, Any], delete: list[str], ops: list[Op]
                ) -> JoinUpdate:
        meta["last"] = {"put": put, "del": delete}
        return JoinUpdate(f"m|{part}", meta, put, delete, ops=ops)

    def _tally(self, store: Store, meta: dict[str, Any], part: int, key: str, p: Prediction,
               put: dict[str, Any]) -> list[str]:
        """Count ``p``'s score bin in its event-time window (into ``put``); a new window drops the
        partition's windows past the horizon of its newest prediction time (returned, to delete)."""
        meta["pwm"] = p.event_time if meta.get("pwm") is None else max(int(meta["pwm"]), p.event_time)
        start = self.windows.assign(p.event_time)[0]
        hkey = f"h|{part}|{key}|{start}"
        old = store.get(hkey)
        gone: list[str] = []
        if old is None:
            cutoff, prefix = int(meta["pwm"]) - self.horizon_ms, f"h|{part}|"
            gone = [k for k, _ in store.items()
                    if k.startswith(prefix) and self.windows.end(int(k.rpartition("|")[2])) <= cutoff]
            if self.windows.end(start) <= cutoff:
                return gone         # the prediction is itself past the horizon: not counted
            old = {"yes": {}, "no": {}}
        side = "yes" if p.decision else "no"
        b = str(quality.score_bin(float(p.score)))
        counts = dict(old[side])
        counts[b] = int(counts.get(b, 0)) + 1
        put[hkey] = {**old, side: counts}
        return gone

    def _closed(self, meta: Mapping[str, Any], start: int) -> bool:
        return meta["wm"] is not None and self.windows.closable(start, int(meta["wm"]))

    def _join(self, meta: dict[str, Any], event_id: str, key: str, entry: Mapping[str, Any]) -> list[Op]:
        start = self.windows.assign(int(entry["label"]["t"]))[0]
        if self._closed(meta, start):
            meta["counts"]["late"] += 1
            return []
        meta["counts"]["joined"] += 1
        score, decision = entry["preds"][key]
        return [{"op": "set", "key": key, "start": start, "eid": event_id,
                 "row": [score, entry["label"]["y"], decision]}]

    def _evict(self, store: Store, meta: dict[str, Any], part: int, ekey: str, entry: Mapping[str, Any]
               ) -> list[str]:
        """Keys of this partition's entries past the horizon (``entry`` stands for ``ekey``), counted."""
        cutoff = int(meta["wm"]) - self.horizon_ms
        prefix = f"e|{part}|"
        mine = ((k, v) for k, v in store.items() if k.startswith(prefix) and k != ekey)
        gone = []
        for key, value in [*mine, (ekey, entry)]:
            if int(value["t"]) >= cutoff:
                continue
            gone.append(key)
            if not value["preds"]:
                meta["counts"]["orphans"] += 1
            elif value["label"] is None:
                meta["counts"]["unlabelled"] += 1
        return gone


def quality_meta() -> dict[str, Any]:
    return {"wms": {}, "windows": {}, "totals": {}, "late": 0, "alerts": {}, "gc": [], "est": {}}


ReferenceAuc = Callable[[str, str], "float | None"]


@dataclass(frozen=True)
class QualityDrop:
    """Alert when a window's AUC is more than ``auc_drop`` below the version's reference AUC,
    ``hysteresis.raise_after`` windows in a row; clear after ``clear_after`` windows without."""

    reference: ReferenceAuc
    auc_drop: float = 0.05
    hysteresis: alerting.Hysteresis = alerting.Hysteresis()


def sample_pairs(by_eid: Mapping[str, Any], limit: int) -> dict[str, list[Any]]:
    """At most ``limit`` joined rows as ``{"eid", "score", "label"}`` lists: the events with the lowest
    CRC32 of their id, so arms that scored the same events (primary and shadow) keep the same ones."""
    eids = sorted(by_eid, key=lambda e: (zlib.crc32(e.encode()), e))[:limit]
    return {"eid": eids, "score": [float(by_eid[e][0]) for e in eids], "label": [bool(by_eid[e][1]) for e in eids]}


class QualityCore:
    def __init__(self, *, windows: WindowSpec, sources: int, drop: QualityDrop | None = None,
                 clock: Callable[[], float] = time.time, pairs_per_window: int = 0, kind: HeadKind = "score") -> None:
        _check(windows)
        self.kind = kind            # the head judged: score (binary), classes or value
        self.windows = windows
        self.sources = sources      # join partitions: a window closes when all of them have passed it
        self.drop, self.clock = drop, clock
        self.pairs_per_window = pairs_per_window   # joined rows kept per closed window for canary verdicts

    def apply(self, store: Store, part: int, source: int, op: Mapping[str, Any]
              ) -> tuple[Update, list[dict[str, Any]]]:
        """The changes to write and the results to publish first: of the windows this operation closed,
        and live estimates (``"estimate": True``) of the event-time windows whose counts or calibration
        it changed."""
        mkey = f"q|{part}"
        stored = store.get(mkey)
        meta: dict[str, Any] = stored if isinstance(stored, dict) else quality_meta()
        if op["op"] == "wm":
            return self._close(store, part, self._changed(store, meta, wms={
                **meta["wms"], str(source): max(int(op["wm"]), int(meta["wms"].get(str(source), op["wm"])))}))
        if op["op"] == "est":
            return self._counts(store, part, source, meta, op)
        start = int(op["start"])
        wm = self._wm(meta)
        if wm is not None and self.windows.closable(start, wm):
            return Update(mkey, self._changed(store, meta, late=int(meta["late"]) + 1)), []
        wkey = f"{op['key']}|{start}"
        rkey = f"r|{part}|{wkey}|{op['eid']}"
        if op["op"] == "del":
            return Update(mkey, None, delete=[rkey]), []
        new = None
        if wkey not in meta["windows"]:
            model, version, variant = str(op["key"]).split("|")
            new = self._changed(store, meta, windows={
                **meta["windows"], wkey: {"model": model, "version": version, "variant": variant, "start": start}})
        return Update(mkey, new, put={rkey: list(op["row"])}), []

    def _counts(self, store: Store, part: int, source: int, meta: dict[str, Any], op: Mapping[str, Any]
                ) -> tuple[Update, list[dict[str, Any]]]:
        """One join partition's counts of an event-time window: stored, and the window's live estimate.
        A new window beyond the newest ``EST_KEEP`` of its key drops the oldest one's counts."""
        mkey, key, start = f"q|{part}", str(op["key"]), int(op["start"])
        kept = [int(w) for w in meta.get("est", {}).get(key, [])]
        new = None
        gone: list[int] = []
        if start not in kept:
            kept = sorted([*kept, start])
            kept, gone = kept[-EST_KEEP:], kept[:-EST_KEEP]
            if start in gone:
                return Update(mkey, None), []     # older than every kept window: its estimate is gone
            new = self._changed(store, meta, est={**meta.get("est", {}), key: kept})
            new["gc"] = [f"x|{part}|{key}|{w}|{src}" for w in gone for src in range(self.sources)]
        xkey = f"x|{part}|{key}|{start}|{source}"
        put = {xkey: op["hist"]}
        result = self._estimate(store, part, key, start, self._calibration(new or meta, key), put)
        return Update(mkey, new, put=put, delete=new["gc"] if new else []), [result]

    @staticmethod
    def _calibration(meta: Mapping[str, Any], key: str) -> tuple[np.ndarray | None, int]:
        """The version's calibration on its closed windows (None before one closed) and its labelled rows."""
        totals = meta["totals"].get(key)
        if totals is None:
            return None, 0
        return cbpe.calibration(totals["hist_pos"], totals["hist_neg"]), int(totals["n"])

    def _estimate(self, store: Store, part: int, key: str, start: int, calib: tuple[np.ndarray | None, int],
                  fresh: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The live estimate of one event-time window: CBPE over its counts from every join partition
        (``fresh``: counts not yet in ``store``) with ``calib`` (``_calibration``)."""
        yes, no = np.zeros(quality.AUC_BINS), np.zeros(quality.AUC_BINS)
        for src in range(self.sources):
            xkey = f"x|{part}|{key}|{start}|{src}"
            hist = (fresh or {}).get(xkey) or store.get(xkey)
            for side, acc in (("yes", yes), ("no", no)):
                for b, n in (hist or {}).get(side, {}).items():
                    acc[int(b)] += int(n)
        model, version, variant = key.split("|")
        return {"estimate": True, "model": model, "version": version, "variant": variant, "window_start": start,
                "window_end": self.windows.end(start), "count": int(yes.sum() + no.sum()),
                "calibrated_on": calib[1], **cbpe.estimate_counts(yes, no, calib[0])}

    @staticmethod
    def _changed(store: Store, meta: Mapping[str, Any], **changes: Any) -> dict[str, Any]:
        """A new meta: the deletes the old one names are settled first, so its ``gc`` can be dropped."""
        settle(store, {}, meta["gc"])
        return {**meta, "gc": [], **changes}

    def _wm(self, meta: Mapping[str, Any]) -> int | None:
        wms = meta["wms"]
        return min(int(v) for v in wms.values()) if len(wms) >= self.sources else None

    def _close(self, store: Store, part: int, meta: dict[str, Any]) -> tuple[Update, list[dict[str, Any]]]:
        mkey = f"q|{part}"
        wm = self._wm(meta)
        closing = {w: info for w, info in meta["windows"].items()
                   if wm is not None and self.windows.closable(int(info["start"]), wm)}
        if not closing:
            return Update(mkey, meta), []
        rows: dict[str, dict[str, Any]] = {w: {} for w in closing}
        prefix = f"r|{part}|"
        for key, row in store.items():      # one scan per closing step, not per row
            if key.startswith(prefix):
                wkey, _, eid = key[len(prefix):].rpartition("|")
                if wkey in rows:
                    rows[wkey][eid] = row
        meta = {**meta, "windows": {w: i for w, i in meta["windows"].items() if w not in closing},
                "totals": dict(meta["totals"]), "alerts": dict(meta["alerts"])}
        results = [self._result(meta, closing[w], rows[w])
                   for w in sorted(closing, key=lambda k: (closing[k]["start"], k))]
        meta["gc"] = [f"{prefix}{w}|{eid}" for w in closing for eid in rows[w]]
        if self.kind == "score":     # the versions' calibrations changed: their live estimates again
            for key in sorted({f"{i['model']}|{i['version']}|{i['variant']}" for i in closing.values()}):
                calib = self._calibration(meta, key)      # fitted once for all of the version's windows
                results += [self._estimate(store, part, key, int(w), calib) for w in meta.get("est", {}).get(key, [])]
        return Update(mkey, meta, delete=meta["gc"]), results

    def _result(self, meta: dict[str, Any], win: Mapping[str, Any], by_eid: Mapping[str, Any]) -> dict[str, Any]:
        key = f"{win['model']}|{win['version']}|{win['variant']}"
        rows = [by_eid[eid] for eid in sorted(by_eid)]
        metrics, meta["totals"][key] = self._figures(meta["totals"].get(key), rows)
        start = int(win["start"])
        result = {"model": win["model"], "version": win["version"], "variant": win["variant"],
                  "window_start": start, "window_end": self.windows.end(start), "metrics": metrics,
                  "cumulative": self._cumulative(meta["totals"][key]), "alerts": []}
        if self.pairs_per_window and self.kind == "score":
            result["pairs"] = sample_pairs(by_eid, self.pairs_per_window)
        self._alert(meta, key, result)
        return result

    def _figures(self, prior: dict[str, Any] | None, rows: list[Any]) -> tuple[dict[str, float], dict[str, Any]]:
        """A window's metrics and the totals with its rows added. Rows are [prediction, label, decision]:
        a score (decision: the model's) and a boolean label, a predicted class and the true one, or two numbers."""
        if self.kind == "classes":
            y, pred = [str(r[1]) for r in rows], [str(r[0]) for r in rows]
            return quality.class_quality(quality.class_totals(None, y, pred)), quality.class_totals(prior, y, pred)
        if self.kind == "value":
            yv, pv = (np.array([r[i] for r in rows], dtype=np.float64) for i in (1, 0))
            return quality.value_quality(quality.value_totals(None, yv, pv)), quality.value_totals(prior, yv, pv)
        score = np.array([r[0] for r in rows], dtype=np.float64)
        yb = np.array([r[1] for r in rows], dtype=bool)
        decision = np.array([r[2] for r in rows], dtype=bool)
        before = prior or quality.empty_totals()
        calib = cbpe.calibration(before["hist_pos"], before["hist_neg"])   # this version's earlier windows
        return ({**quality.binary_quality(yb, score, decision), **cbpe.estimate(score, decision, calib)},
                quality.add_totals(before, yb, score, decision))

    def _cumulative(self, totals: dict[str, Any]) -> dict[str, float]:
        if self.kind == "classes":
            return quality.class_quality(totals)
        return quality.value_quality(totals) if self.kind == "value" else quality.totals_quality(totals)

    def _alert(self, meta: dict[str, Any], key: str, result: dict[str, Any]) -> None:
        """Quality-drop hysteresis per model|version|variant (windows without an AUC do not count)."""
        auc = result["metrics"].get("auc", math.nan)
        ref = self.drop.reference(result["model"], result["version"]) if self.drop else None
        if self.drop is None or ref is None or math.isnan(auc):
            return
        new, transition = alerting.step(meta["alerts"].get(key) or alerting.initial_state(),
                                        auc < ref - self.drop.auc_drop, self.drop.hysteresis)
        meta["alerts"][key] = new
        if transition is not None:
            result["alerts"].append(alerting.alert_record(
                model=result["model"], version=result["version"], feature=f"quality:{result['variant']}:auc",
                statistic="auc_drop", value=ref - auc, threshold=self.drop.auc_drop,
                window_start=result["window_start"], window_end=result["window_end"], state=transition,
                raised_at=int(self.clock() * 1000)))
