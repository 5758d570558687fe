"""Ground truth, without Kafka or Redis, in two stages (deterministic functions of state and input).

The state passed in is updated in place and returned (it can hold thousands of pending events,
so copying it per record would dominate the cost); a replay is detected before any change.

1. ``JoinCore`` -- partitioned like the events (prediction and label topics are co-partitioned by
   the event key). Joins each label to the predictions of its event id and emits row operations:
   ``set`` / ``del`` of one joined row (event id -> [score, label, decision]) in the window of the
   label's time, keyed by model|version|variant, and ``wm`` (its label-time watermark) for every
   quality partition. State per source partition::

       {"offsets": {topic: last applied offset}, "wm": max label time (ms) or None, "sent": last broadcast step,
        "pending": {event_id: {"t": earliest time seen, "label": {"y", "t"} | None,
                               "preds": {"model|version|variant": [score, decision]}}},
        "counts": {"labels", "duplicates", "orphans", "unlabelled", "late", "joined"}}

2. ``QualityCore`` -- partitioned by model|version|variant. Applies row operations to windows
   and closes a window once every join partition's watermark has passed its end plus lateness.
   State per partition: ``{"wms": {source partition: wm}, "windows": {"key|start": {..., "rows"}},
   "totals": {key: quality totals of closed windows}, "late": rows for closed windows}``.

Invariants:
- A record at or below its topic's applied offset is a replay: the join changes nothing.
- Row operations are idempotent (set by event id, delete by event id, watermark by max), so
  re-sending them after a crash cannot double-count.
- A duplicate label replaces the row (last one wins) while its window is open; once closed, the
  duplicate is counted and dropped (a closed window's figures are final).
- A pending entry older than the watermark minus the horizon is dropped: a label that never met
  a prediction counts as orphaned, a prediction never labelled as unlabelled.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

from monitoring import alerts as alerting

import numpy as np

from monitoring import quality
from monitoring.windows import WindowSpec

COUNTS = ("labels", "duplicates", "orphans", "unlabelled", "late", "joined")
Op = dict[str, Any]


@dataclass(frozen=True)
class Prediction:
    event_id: str
    model: str
    version: str
    variant: str
    score: float
    decision: bool
    event_time: int


@dataclass(frozen=True)
class Label:
    event_id: str
    y: bool
    time: int


def _check(windows: WindowSpec) -> None:
    if windows.kind != "time" or windows.slide is not None:
        raise ValueError("quality windows are tumbling windows of label time")


def join_state() -> dict[str, Any]:
    return {"offsets": {}, "wm": None, "sent": None, "pending": {}, "counts": dict.fromkeys(COUNTS, 0)}


class JoinCore:
    def __init__(self, *, windows: WindowSpec, horizon_ms: int) -> None:
        _check(windows)
        self.windows = windows
        self.horizon_ms = horizon_ms

    def apply_prediction(self, state: dict[str, Any] | None, topic: str, offset: int, p: Prediction
                         ) -> tuple[dict[str, Any], list[Op]] | None:
        """The new state and the row operations to send; None for a replay."""
        st = self._begin(state, topic, offset)
        if st is None:
            return None
        entry = st["pending"].setdefault(p.event_id, {"t": p.event_time, "label": None, "preds": {}})
        entry["t"] = min(int(entry["t"]), p.event_time)
        key = f"{p.model}|{p.version}|{p.variant}"
        entry["preds"][key] = [p.score, p.decision]
        ops = [] if entry["label"] is None else self._join(st, p.event_id, key, entry)
        return st, ops

    def apply_label(self, state: dict[str, Any] | None, topic: str, offset: int, lab: Label
                    ) -> tuple[dict[str, Any], list[Op]] | None:
        st = self._begin(state, topic, offset)
        if st is None:
            return None
        st["counts"]["labels"] += 1
        entry = st["pending"].setdefault(lab.event_id, {"t": lab.time, "label": None, "preds": {}})
        entry["t"] = min(int(entry["t"]), lab.time)
        ops: list[Op] = []
        old = entry["label"]
        if old is not None:
            st["counts"]["duplicates"] += 1
            old_start = self.windows.assign(int(old["t"]))[0]
            if self._closed(st, old_start):
                return st, []      # its window's figures are final
            ops += [{"op": "del", "key": key, "start": old_start, "eid": lab.event_id} for key in entry["preds"]]
        entry["label"] = {"y": lab.y, "t": lab.time}
        for key in entry["preds"]:
            ops += self._join(st, lab.event_id, key, entry)
        st["wm"] = lab.time if st["wm"] is None else max(int(st["wm"]), lab.time)
        step = (int(st["wm"]) - self.windows.lateness) // self.windows.size
        if step != st["sent"]:     # a window may close: tell the quality stage, sweep the horizon
            st["sent"] = step
            self._evict(st)
            ops.append({"op": "wm", "wm": st["wm"]})
        return st, ops

    @staticmethod
    def _begin(state: dict[str, Any] | None, topic: str, offset: int) -> dict[str, Any] | None:
        st = state if isinstance(state, dict) else join_state()
        if offset <= int(st["offsets"].get(topic, -1)):
            return None
        st["offsets"][topic] = offset
        return st

    def _closed(self, st: Mapping[str, Any], start: int) -> bool:
        return st["wm"] is not None and self.windows.closable(start, int(st["wm"]))

    def _join(self, st: dict[str, Any], event_id: str, key: str, entry: Mapping[str, Any]) -> list[Op]:
        start = self.windows.assign(int(entry["label"]["t"]))[0]
        if self._closed(st, start):
            st["counts"]["late"] += 1
            return []
        st["counts"]["joined"] += 1
        score, decision = entry["preds"][key]
        return [{"op": "set", "key": key, "start": start, "eid": event_id,
                 "row": [score, bool(entry["label"]["y"]), bool(decision)]}]

    def _evict(self, st: dict[str, Any]) -> None:
        cutoff = int(st["wm"]) - self.horizon_ms
        for eid in [e for e, entry in st["pending"].items() if int(entry["t"]) < cutoff]:
            entry = st["pending"].pop(eid)
            if not entry["preds"]:
                st["counts"]["orphans"] += 1
            elif entry["label"] is None:
                st["counts"]["unlabelled"] += 1


def quality_state() -> dict[str, Any]:
    return {"wms": {}, "windows": {}, "totals": {}, "late": 0, "alerts": {}}


ReferenceAuc = Callable[[str, str], "float | None"]


@dataclass(frozen=True)
class QualityDrop:
    """Alert when a window's AUC is more than ``auc_drop`` below the version's reference AUC,
    ``hysteresis.raise_after`` windows in a row; clear after ``clear_after`` windows without."""

    reference: ReferenceAuc
    auc_drop: float = 0.05
    hysteresis: alerting.Hysteresis = alerting.Hysteresis()


class QualityCore:
    def __init__(self, *, windows: WindowSpec, sources: int, drop: QualityDrop | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        _check(windows)
        self.windows = windows
        self.sources = sources      # join partitions: a window closes when all of them have passed it
        self.drop, self.clock = drop, clock

    def apply(self, state: dict[str, Any] | None, source: int, op: Mapping[str, Any]
              ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The new state and the results of the windows this operation closed."""
        st = state if isinstance(state, dict) else quality_state()
        if op["op"] == "wm":
            st["wms"][str(source)] = max(int(op["wm"]), int(st["wms"].get(str(source), op["wm"])))
            return st, self._close(st)
        start = int(op["start"])
        wm = self._wm(st)
        if wm is not None and self.windows.closable(start, wm):
            st["late"] += 1
            return st, []
        wkey = f"{op['key']}|{start}"
        if op["op"] == "del":
            st["windows"].get(wkey, {}).get("rows", {}).pop(op["eid"], None)
            return st, []
        model, version, variant = str(op["key"]).split("|")
        win = st["windows"].setdefault(wkey, {"model": model, "version": version, "variant": variant,
                                              "start": start, "rows": {}})
        win["rows"][op["eid"]] = list(op["row"])
        return st, []

    def _wm(self, st: Mapping[str, Any]) -> int | None:
        wms = st["wms"]
        return min(int(v) for v in wms.values()) if len(wms) >= self.sources else None

    def _close(self, st: dict[str, Any]) -> list[dict[str, Any]]:
        wm = self._wm(st)
        if wm is None:
            return []
        results = []
        for wkey in sorted(st["windows"], key=lambda k: (st["windows"][k]["start"], k)):
            win = st["windows"][wkey]
            if self.windows.closable(int(win["start"]), wm):
                del st["windows"][wkey]
                results.append(self._result(st, win))
        return results

    def _result(self, st: dict[str, Any], win: Mapping[str, Any]) -> dict[str, Any]:
        key = f"{win['model']}|{win['version']}|{win['variant']}"
        rows = [win["rows"][eid] for eid in sorted(win["rows"])]
        score = np.array([r[0] for r in rows], dtype=np.float64)
        y = np.array([r[1] for r in rows], dtype=bool)
        decision = np.array([r[2] for r in rows], dtype=bool)
        totals = quality.add_totals(st["totals"].get(key) or quality.empty_totals(), y, score, decision)
        st["totals"][key] = totals
        start = int(win["start"])
        result = {"model": win["model"], "version": win["version"], "variant": win["variant"],
                  "window_start": start, "window_end": self.windows.end(start),
                  "metrics": quality.binary_quality(y, score, decision),
                  "cumulative": quality.totals_quality(totals), "alerts": []}
        self._alert(st, key, result)
        return result

    def _alert(self, st: dict[str, Any], key: str, result: dict[str, Any]) -> None:
        """Quality-drop hysteresis per model|version|variant (windows without an AUC do not count)."""
        auc = result["metrics"]["auc"]
        ref = self.drop.reference(result["model"], result["version"]) if self.drop else None
        if self.drop is None or ref is None or math.isnan(auc):
            return
        new, transition = alerting.step(st["alerts"].get(key) or alerting.initial_state(),
                                        auc < ref - self.drop.auc_drop, self.drop.hysteresis)
        st["alerts"][key] = new
        if transition is not None:
            result["alerts"].append(alerting.alert_record(
                model=result["model"], version=result["version"], feature=f"quality:{result['variant']}:auc",
                statistic="auc_drop", value=ref - auc, threshold=self.drop.auc_drop,
                window_start=result["window_start"], window_end=result["window_end"], state=transition,
                raised_at=int(self.clock() * 1000)))
