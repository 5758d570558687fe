"""Reading the monitor's Redis layout (drift hashes, shadow hashes, the alerts stream).

Layout (written by the drift monitor; keys are fixed):
    streamscore:drift:{model}:{feature}         HASH  one feature's current drift state
    streamscore:drift:index                     SET   "{model}:{feature}"
    streamscore:shadow:{model}:{shadow_model}   HASH  primary vs shadow agreement
    streamscore:shadow:index                    SET   "{model}:{shadow_model}"
    streamscore:alerts                          STREAM raised / cleared alerts
"""

from __future__ import annotations

import json
from typing import Any

DRIFT_INDEX = "streamscore:drift:index"
SHADOW_INDEX = "streamscore:shadow:index"
ALERTS_STREAM = "streamscore:alerts"
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


def _split_member(member: str) -> tuple[str, str]:
    # model names may contain ':' only if feature names do not: split on the last one
    model, _, rest = member.rpartition(":")
    return model, rest


class RedisState:
    """Read-only views of the monitor's state; ``client`` is a ``redis.Redis(decode_responses=True)``."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def _hashes(self, index: str, prefix: str) -> list[dict[str, Any]]:
        members = sorted(self.client.smembers(index))
        pipe = self.client.pipeline(transaction=False)
        for m in members:
            pipe.hgetall(f"{prefix}:{m}")
        out = []
        for member, h in zip(members, pipe.execute()):
            if h:                                  # an index entry whose hash expired: skip it
                item = _typed(h)
                item["key"] = member
                out.append(item)
        return out

    def drift(self) -> list[dict[str, Any]]:
        items = self._hashes(DRIFT_INDEX, "streamscore:drift")
        for item in items:
            model, feature = _split_member(item["key"])
            item.setdefault("model", model)
            item.setdefault("feature", feature)
        return items

    def shadow(self) -> list[dict[str, Any]]:
        items = self._hashes(SHADOW_INDEX, "streamscore:shadow")
        for item in items:
            model, shadow = _split_member(item["key"])
            item.setdefault("model", model)
            item.setdefault("shadow_model", shadow)
        return items

    def alerts(self, count: int = 50) -> list[dict[str, Any]]:
        """Latest first."""
        out = []
        for entry_id, fields in self.client.xrevrange(ALERTS_STREAM, count=count):
            item = _typed(fields)
            item["id"] = entry_id
            out.append(item)
        return out
