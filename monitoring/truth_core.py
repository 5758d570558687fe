"""Ground truth, without Kafka or Redis: predictions and delayed labels in, closed quality windows out.

State is one JSON-safe dict per source partition (one Faust table key, so a partition's
pending joins, windows, totals, counters and applied offsets are restored as a unit):

    {"offsets": {topic: last applied offset}, "wm": max label time seen (ms) or None,
     "swept": the window start of the last horizon sweep,
     "pending": {event_id: {"t": earliest time seen, "label": {"y", "t"} | None,
                            "preds": {"model|version|variant": [score, decision]}}},
     "windows": {"model|version|variant|start": {"model", "version", "variant", "start",
                                                 "rows": {event_id: [score, y, decision]}}},
     "totals": {"model|version|variant": monitoring.quality totals of closed windows},
     "counts": {"labels", "duplicates", "orphans", "unlabelled", "late", "joined"}}

Invariants:
- ``apply_*`` is a pure function of (state, topic, offset, record); a record at or below the
  topic's applied offset is a replay and changes nothing (no double count after a restart).
- A joined row lives in the window of its label's time under its event id, so a duplicate label
  replaces the row (last one wins) while that window is open; once it has closed, the duplicate
  is counted and dropped (a closed window's figures are final).
- A pending entry older than the label-time watermark minus the horizon is dropped: a label that
  never met a prediction counts as orphaned, a prediction never labelled as unlabelled.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from monitoring import quality
from monitoring.windows import WindowSpec

COUNTS = ("labels", "duplicates", "orphans", "unlabelled", "late", "joined")


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


def initial_state() -> dict[str, Any]:
    return {"offsets": {}, "wm": None, "swept": None, "pending": {}, "windows": {}, "totals": {},
            "counts": dict.fromkeys(COUNTS, 0)}


class TruthCore:
    def __init__(self, *, windows: WindowSpec, horizon_ms: int) -> None:
        if windows.kind != "time" or windows.slide is not None:
            raise ValueError("quality windows are tumbling windows of label time")
        self.windows = windows
        self.horizon_ms = horizon_ms

    # -- records ---------------------------------------------------------------------------
    def apply_prediction(self, state: Mapping[str, Any] | None, topic: str, offset: int, p: Prediction
                         ) -> dict[str, Any] | None:
        """The new state (predictions close no window); None for a replay."""
        st = self._begin(state, topic, offset)
        if st is None:
            return None
        entry = st["pending"].setdefault(p.event_id, {"t": p.event_time, "label": None, "preds": {}})
        entry["t"] = min(int(entry["t"]), p.event_time)
        key = f"{p.model}|{p.version}|{p.variant}"
        entry["preds"][key] = [p.score, p.decision]
        if entry["label"] is not None:
            self._join(st, p.event_id, key, entry)
        return st

    def apply_label(self, state: Mapping[str, Any] | None, topic: str, offset: int, lab: Label
                    ) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """The new state and the results of the windows this label closed; None for a replay."""
        st = self._begin(state, topic, offset)
        if st is None:
            return None
        st["counts"]["labels"] += 1
        entry = st["pending"].setdefault(lab.event_id, {"t": lab.time, "label": None, "preds": {}})
        old = entry["label"]
        if old is not None:
            st["counts"]["duplicates"] += 1
            old_start = self.windows.assign(int(old["t"]))[0]
            if self._closed(st, old_start):
                return st, []      # its window's figures are final
            for key in entry["preds"]:
                st["windows"].get(f"{key}|{old_start}", {}).get("rows", {}).pop(lab.event_id, None)
        entry["label"] = {"y": lab.y, "t": lab.time}
        for key in entry["preds"]:
            self._join(st, lab.event_id, key, entry)
        st["wm"] = lab.time if st["wm"] is None else max(int(st["wm"]), lab.time)
        return st, self._close(st)

    # -- internals -------------------------------------------------------------------------
    @staticmethod
    def _begin(state: Mapping[str, Any] | None, topic: str, offset: int) -> dict[str, Any] | None:
        st = copy.deepcopy(dict(state)) if state else initial_state()
        if offset <= int(st["offsets"].get(topic, -1)):
            return None
        st["offsets"][topic] = offset
        return st

    def _closed(self, st: Mapping[str, Any], start: int) -> bool:
        return st["wm"] is not None and self.windows.closable(start, int(st["wm"]))

    def _join(self, st: dict[str, Any], event_id: str, key: str, entry: Mapping[str, Any]) -> None:
        start = self.windows.assign(int(entry["label"]["t"]))[0]
        if self._closed(st, start):
            st["counts"]["late"] += 1
            return
        model, version, variant = key.split("|")
        win = st["windows"].setdefault(f"{key}|{start}", {"model": model, "version": version, "variant": variant,
                                                          "start": start, "rows": {}})
        if event_id not in win["rows"]:
            st["counts"]["joined"] += 1
        score, decision = entry["preds"][key]
        win["rows"][event_id] = [score, bool(entry["label"]["y"]), decision]

    def _close(self, st: dict[str, Any]) -> list[dict[str, Any]]:
        results = []
        for wkey in sorted(st["windows"], key=lambda k: (st["windows"][k]["start"], k)):
            win = st["windows"][wkey]
            if not self._closed(st, int(win["start"])):
                continue
            del st["windows"][wkey]
            results.append(self._result(st, win))
        current = self.windows.assign(int(st["wm"]))[0]
        if current != st["swept"]:      # sweep the horizon once per window of label time
            st["swept"] = current
            self._evict(st)
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
        return {"model": win["model"], "version": win["version"], "variant": win["variant"],
                "window_start": start, "window_end": self.windows.end(start),
                "metrics": quality.binary_quality(y, score, decision),
                "cumulative": quality.totals_quality(totals), "counts": dict(st["counts"])}

    def _evict(self, st: dict[str, Any]) -> None:
        cutoff = int(st["wm"]) - self.horizon_ms
        for eid in [e for e, entry in st["pending"].items() if int(entry["t"]) < cutoff]:
            entry = st["pending"].pop(eid)
            if not entry["preds"]:
                st["counts"]["orphans"] += 1
            elif entry["label"] is None:
                st["counts"]["unlabelled"] += 1
