"""Prometheus gauges mirroring the monitor's current state (what Redis holds, for scraping)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

_STATUS = {"ok": 0, "warning": 1, "drift": 2}


class MonitorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        kw: dict[str, Any] = {"registry": registry} if registry is not None else {}
        self.drift_value = Gauge("streamscore_drift_value", "Latest closed-window drift statistic",
                                 ["model", "feature", "statistic"], **kw)
        self.drift_status = Gauge("streamscore_drift_status", "Latest drift status (0 ok, 1 warning, 2 drift)",
                                  ["model", "feature"], **kw)
        self.alert_active = Gauge("streamscore_drift_alert_active", "1 while a drift alert is raised",
                                  ["model", "feature"], **kw)
        self.shadow_agreement = Gauge("streamscore_shadow_agreement_rate", "Shadow decision agreement",
                                      ["model", "shadow_model"], **kw)
        self.quality = Gauge("streamscore_model_quality", "Latest closed label-time window's model quality "
                             "(metric *_cumulative: since the version went live)",
                             ["metric", "model", "version", "variant"], **kw)
        self.estimate = Gauge("streamscore_model_quality_estimate", "Live estimate (CBPE over every prediction, "
                              "labelled or not) of the newest event-time window (metric est_precision, est_recall, "
                              "est_accuracy, count)", ["metric", "model", "version", "variant"], **kw)
        self._estimated: dict[tuple[str, str, str], int] = {}   # the newest window start shown per arm
        self.labels = Gauge("streamscore_ground_truth_labels", "Label counts of the join "
                            "per join partition (labels, duplicates, orphans, unlabelled, late, joined)",
                            ["pipeline", "partition", "kind"], **kw)
        self.telemetry = Counter("streamscore_monitor_telemetry_records", "Telemetry records applied", **kw)
        self.replayed = Counter("streamscore_monitor_replayed_records", "Telemetry records skipped as replays", **kw)
        self.skipped = Counter("streamscore_monitor_skipped_records", "Records skipped as unreadable (undecodable, "
                               "or missing a field the stream needs), per stream (telemetry or a ground-truth "
                               "entry's name)", ["stream"], **kw)
        self.skipped_starts = Counter("streamscore_monitor_skipped_starts",
                                      "Partitions whose reading began past the restored state (records skipped)", **kw)
        self.windows = Counter("streamscore_monitor_windows_closed", "Windows closed", ["model"], **kw)
        self.redis_errors = Counter("streamscore_monitor_redis_errors", "Redis writes that failed and were retried",
                                    **kw)

    def observe(self, result: Mapping[str, Any], alert_states: Mapping[str, Any]) -> None:
        model = result["model"]
        self.windows.labels(model).inc()
        for feature, f in result["features"].items():
            for stat in ("psi", "js", "ks", "chi2"):
                v = f.get(stat)
                if v is not None and not math.isnan(v):
                    self.drift_value.labels(model, feature, stat).set(v)
            self.drift_status.labels(model, feature).set(_STATUS[f["status"]])
            st = alert_states.get(f"{model}|{feature}")
            self.alert_active.labels(model, feature).set(1 if st and st["raised"] else 0)
        for shadow_model, s in result["shadow"].items():
            self.shadow_agreement.labels(model, shadow_model).set(s["agreement_rate"])

    def observe_quality(self, result: Mapping[str, Any]) -> None:
        ident = (result["model"], result["version"], result["variant"])
        for suffix, figures in (("", result["metrics"]), ("_cumulative", result["cumulative"])):
            for metric, v in figures.items():
                if not math.isnan(v):
                    self.quality.labels(metric + suffix, *ident).set(v)

    def observe_estimate(self, result: Mapping[str, Any]) -> None:
        ident = (result["model"], result["version"], result["variant"])
        if int(result["window_start"]) < self._estimated.get(ident, int(result["window_start"])):
            return          # an older window's estimate again: the gauge shows the newest
        self._estimated[ident] = int(result["window_start"])
        for metric in ("est_precision", "est_recall", "est_accuracy", "count"):
            v = result[metric]
            if not math.isnan(v):
                self.estimate.labels(metric, *ident).set(v)

    def observe_labels(self, pipeline: str, partition: int, counts: Mapping[str, int]) -> None:
        for kind, n in counts.items():
            self.labels.labels(pipeline, str(partition), kind).set(n)
