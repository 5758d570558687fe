"""The dashboard's read-only view of the monitor's Redis state (drift and shadow hashes, alerts,
quality windows).

Keys come from ``monitoring.redis_state.Keys``, the one home of the layout
(``monitoring/REDIS.md``), under the same ``prefix`` the monitor writes with.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from monitoring.redis_state import Keys, split_member

_JSON_FIELDS = ("reference", "current", "edges")
_TEXT_FIELDS = {"model", "version", "feature", "statistic", "status", "shadow_model", "shadow_version",
                "severity", "state", "id"}


def _typed(h: dict[str, str]) -> dict[str, Any]:
    """Numbers become numbers, the histogram fields JSON; anything unreadable stays a string."""
    out: dict[str, Any] = {}
    for k, v in h.items():
        if k in _JSON_FIELDS:
            try:
                out[k] = json.loads(v)
            except ValueError:
                out[k] = []
        elif k in _TEXT_FIELDS:
            out[k] = v
        else:
            try:
                out[k] = float(v) if any(c in v for c in ".eEn") else int(v)
            except ValueError:
                out[k] = v
    return out


class RedisView:
    """Read-only views of the monitor's state; ``client`` is a ``redis.Redis(decode_responses=True)``."""

    def __init__(self, client: Any, *, prefix: str = "streamscore") -> None:
        self.client = client
        self.keys = Keys(prefix)

    def _hashes(self, index: str, key: Callable[[str, str], str]) -> list[dict[str, Any]]:
        members = sorted(self.client.smembers(index))
        pipe = self.client.pipeline(transaction=False)
        for m in members:
            pipe.hgetall(key(*split_member(m)))
        out = []
        for member, h in zip(members, pipe.execute()):
            if h:                                  # an index entry whose hash expired: skip it
                item = _typed(h)
                item["key"] = member
                out.append(item)
        return out

    def drift(self) -> list[dict[str, Any]]:
        items = self._hashes(self.keys.drift_index, self.keys.drift)
        for item in items:
            model, feature = split_member(item["key"])
            item.setdefault("model", model)
            item.setdefault("feature", feature)
        return items

    def shadow(self) -> list[dict[str, Any]]:
        items = self._hashes(self.keys.shadow_index, self.keys.shadow)
        for item in items:
            model, shadow = split_member(item["key"])
            item.setdefault("model", model)
            item.setdefault("shadow_model", shadow)
        return items

    def quality(self, last: int = 100) -> list[dict[str, Any]]:
        """Per model:version:variant ("arm"), its newest ``last`` closed quality windows, oldest first:
        ``{arm, model, version, variant, points: [{window_start, window_end, <metric>: value}]}``."""
        arms: dict[str, dict[str, Any]] = {}
        for raw in self.client.hvals(self.keys.quality_windows):
            try:
                w = json.loads(raw)
                arm = f"{w['model']}:{w['version']}:{w['variant']}"
                point = {"window_start": int(w["window_start"]), "window_end": int(w["window_end"]),
                         **{k: v for k, v in w["metrics"].items() if isinstance(v, (int, float))}}
            except (ValueError, KeyError, TypeError):
                continue                          # not a window this page can read: skip it
            item = arms.setdefault(arm, {"arm": arm, "model": w["model"], "version": w["version"],
                                         "variant": w["variant"], "points": []})
            item["points"].append(point)
        for item in arms.values():
            item["points"] = sorted(item["points"], key=lambda p: p["window_start"])[-last:]
        return [arms[k] for k in sorted(arms)]

    def estimates(self) -> list[dict[str, Any]]:
        """Per arm, the live estimate of its newest event-time window (every prediction, labelled or
        not): ``{arm, model, version, variant, window_start, window_end, count, calibrated_on, est_*}``."""
        out = []
        for member in sorted(self.client.smembers(self.keys.estimate_index)):
            model, version, variant = member.rsplit(":", 2)
            windows = self.client.hgetall(self.keys.quality_estimate(model, version, variant))
            if not windows:
                continue
            try:
                newest = json.loads(windows[max(windows, key=int)])
            except (ValueError, TypeError):
                continue                          # not an estimate this page can read: skip it
            out.append({"arm": member, "model": model, "version": version, "variant": variant,
                        **{k: v for k, v in newest.items() if k != "pipeline"}})
        return out

    def alerts(self, count: int = 50) -> list[dict[str, Any]]:
        """Latest first."""
        out = []
        for entry_id, fields in self.client.xrevrange(self.keys.alerts, count=count):
            item = _typed(fields)
            item["id"] = entry_id
            out.append(item)
        return out
