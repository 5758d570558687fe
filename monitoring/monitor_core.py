"""The monitor's state machine, without Kafka or Redis: telemetry in, closed-window results out.

State is one JSON-safe dict per source partition (it lives under one Faust table key, so
every update of a partition's windows, watermark, alert states and applied offset is a
single changelog record -- they can never be restored out of step with each other):

    {"offset": last applied offset, "wm": max position seen, "count": events seen,
     "windows": {"model|start": {"model", "version", "start", "acc"}},
     "alerts": {"model|feature": hysteresis state}}

Invariant: ``apply`` is a pure function of (state, offset, summary). A record whose
offset is <= ``state["offset"]`` is a replay and changes nothing, so re-reading the
topic after a crash never double-counts, and the replayed records that close a window
produce the very same result again (Redis writes are idempotent per window).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from monitoring import alerts as alerting
from monitoring.drift import DEFAULT_ALPHA, PSI_DRIFT, PSI_WARNING, agreement_rate, compare, histogram_quantile
from monitoring.telemetry import DIFF_EDGES, SCORE, categories_of
from monitoring.windows import WindowSpec, empty_accumulator, merge

log = logging.getLogger(__name__)
ProfileSource = Callable[[str, str], Mapping[str, Any] | None]


def initial_state() -> dict[str, Any]:
    return {"offset": -1, "wm": None, "count": 0, "windows": {}, "alerts": {}}


class MonitorCore:
    def __init__(self, *, windows: WindowSpec, hysteresis: alerting.Hysteresis, profiles: ProfileSource,
                 alpha: float = DEFAULT_ALPHA, psi_warning: float = PSI_WARNING, psi_drift: float = PSI_DRIFT,
                 clock: Callable[[], float] = time.time) -> None:
        self.windows = windows
        self.hysteresis = hysteresis
        self.profiles = profiles
        self.alpha, self.psi_warning, self.psi_drift = alpha, psi_warning, psi_drift
        self.clock = clock

    def apply(self, state: Mapping[str, Any] | None, offset: int, summary: Mapping[str, Any]
              ) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """The new partition state and the results of windows this record closed; None for a replay."""
        st = dict(state) if state else initial_state()
        if offset <= st["offset"]:
            return None
        st["offset"] = offset
        if summary.get("variant", "primary") != "primary":
            return st, []  # drift is judged on primary traffic; shadow pairs ride on primary telemetry
        if self.windows.kind == "time":
            position = int(summary["window_ts"])
            top = position
        else:
            position = int(st["count"])
            st["count"] = top = position + int(summary["n"])
        windows = dict(st["windows"])
        for start in self.windows.assign(position):
            key = f"{summary['model']}|{start}"
            win = windows.get(key) or {"model": summary["model"], "version": summary["version"], "start": start,
                                       "acc": empty_accumulator()}
            windows[key] = {**win, "version": summary["version"], "acc": merge(win["acc"], summary)}
        st["wm"] = top if st["wm"] is None else max(st["wm"], top)
        results = []
        alert_states = dict(st["alerts"])
        for key in sorted(windows, key=lambda k: (windows[k]["start"], k)):
            win = windows[key]
            if self.windows.closable(win["start"], st["wm"]):
                del windows[key]
                result = self.evaluate(win, alert_states)
                if result is not None:
                    results.append(result)
        st["windows"], st["alerts"] = windows, alert_states
        return st, results

    def evaluate(self, win: Mapping[str, Any], alert_states: dict[str, Any]) -> dict[str, Any] | None:
        """Statistics of one closed window, and the alert transitions it causes (mutates ``alert_states``)."""
        model, version, acc = win["model"], win["version"], win["acc"]
        profile = self.profiles(model, version)
        start, end = int(win["start"]), self.windows.end(int(win["start"]))
        if not profile:
            log.warning("no reference profile for %s:%s; window %s dropped", model, version, start)
            return None
        n_ref = int(profile.get("n_rows", 0)) or None
        features: dict[str, dict[str, Any]] = {}
        for name, counts in sorted(acc["features"].items()):
            ref = profile["features"].get(name)
            if ref is not None:
                features[name] = self._feature(ref["freqs"], counts, ref["edges"], False, n_ref)
        for name, counts in sorted(acc["categoricals"].items()):
            if name in profile.get("categoricals", {}):
                cats = categories_of(profile, name)
                freqs = [profile["categoricals"][name].get(c, 0.0) for c in cats]
                features[name] = self._feature(freqs, counts, cats, True, n_ref)
        if acc["score"]:
            features[SCORE] = self._feature(profile["score"]["freqs"], acc["score"], profile["score"]["edges"], False, n_ref)
        now = int(self.clock() * 1000)
        fired = []
        for name, f in features.items():
            key = f"{model}|{name}"
            new, transition = alerting.step(alert_states.get(key) or alerting.initial_state(), f["status"] == "drift",
                                            self.hysteresis)
            alert_states[key] = new
            if transition is not None:
                fired.append(alerting.alert_record(model=model, version=version, feature=name, statistic="psi",
                                                   value=f["psi"], threshold=f["threshold"], window_start=start,
                                                   window_end=end, state=transition, raised_at=now))
        shadow = {name: self._shadow(s) for name, s in sorted(acc["shadow"].items())}
        return {"model": model, "version": version, "window_start": start, "window_end": end, "n": acc["n"],
                "n_sampled": acc["n_sampled"], "batches": acc["batches"], "features": features, "shadow": shadow,
                "alerts": fired}

    def _feature(self, ref: list[float], counts: list[int], edges: list[Any], categorical: bool,
                 n_ref: int | None) -> dict[str, Any]:
        c = compare(ref, counts, categorical=categorical, n_ref=n_ref, alpha=self.alpha,
                    warning=self.psi_warning, drift=self.psi_drift)
        total = max(sum(counts), 1)
        return {"statistic": "psi", "psi": c.psi, "js": c.js, "ks": c.ks, "ks_critical": c.ks_critical,
                "chi2": c.chi2, "chi2_p": c.chi2_p, "n": c.n, "status": c.status, "threshold": c.drift_threshold,
                "warning_threshold": c.warning_threshold, "reference": list(ref),
                "current": [x / total for x in counts], "edges": list(edges)}

    @staticmethod
    def _shadow(s: Mapping[str, Any]) -> dict[str, Any]:
        diff = s["diff"]
        return {"version": s["version"], "n_pairs": s["n_pairs"], "agree": s["agree"],
                "agreement_rate": agreement_rate(s["agree"], s["n_pairs"]),
                "diff_p50": histogram_quantile(DIFF_EDGES, diff, 0.5),
                "diff_p90": histogram_quantile(DIFF_EDGES, diff, 0.9),
                "diff_p99": histogram_quantile(DIFF_EDGES, diff, 0.99)}
