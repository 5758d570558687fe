"""``streamscore models compare NAME``: the primary and a challenger's joined rows from Redis (what the
monitor's quality stage keeps, ``{prefix}:quality:pairs:*``), compared by ``monitoring.canary``.

Arms are ``model:version:variant`` members of ``{prefix}:quality:index``. The primary is NAME's
``primary`` variant (the version with the newest closed window, or ``--primary VERSION``); a
challenger is any other arm of the same pipeline whose newest window is as new: a canary, a
shadow, or another A/B arm (``--challenger MODEL:VERSION:VARIANT`` picks one of several).
The window: every kept window since the challenger's first (its "went live"), or one window.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from monitoring.canary import Comparison, Method, Rows, compare
from monitoring.redis_state import Keys
from schemas.errors import ConfigError


@dataclass(frozen=True)
class Arm:
    model: str
    version: str
    variant: str

    def __str__(self) -> str:
        return f"{self.model}:{self.version}:{self.variant}"

    @classmethod
    def parse(cls, text: str) -> Arm:
        parts = text.rsplit(":", 2)
        if len(parts) != 3 or not all(parts):
            raise ConfigError(f"challenger {text!r}: expected MODEL:VERSION:VARIANT, e.g. fraud-mlp:2:canary")
        return cls(*parts)


@dataclass(frozen=True)
class Report:
    name: str
    primary: Arm
    challenger: Arm
    windows: tuple[int, int, int]       # count, first start, last end (ms)
    result: Comparison

    def as_dict(self) -> dict[str, Any]:
        n, first, last = self.windows
        return {"model": self.name, "primary": str(self.primary), "challenger": str(self.challenger),
                "windows": n, "from_ms": first, "to_ms": last, **self.result.as_dict()}


def _windows(r: Any, keys: Keys, arm: Arm) -> dict[int, Mapping[str, Any]]:
    raw = r.hgetall(keys.quality_pairs(arm.model, arm.version, arm.variant))
    return {int(w): json.loads(v) for w, v in raw.items()}


def _pick(options: Sequence[Arm], what: str, flag: str) -> Arm:
    if len(options) > 1:
        raise ConfigError(f"several {what}: {', '.join(map(str, options))}; pick one with {flag}")
    return options[0]


def build_report(r: Any, prefix: str, name: str, *, primary_version: str | None = None,
                 challenger: str | None = None, window: int | None = None, level: float = 0.95,
                 method: Method = "delong", min_class: int = 30, seed: int = 0) -> Report:
    """The comparison for model ``name``; ``ConfigError`` (one line) for an unknown model, no or an
    ambiguous challenger, or a window neither arm kept."""
    wanted = Arm.parse(challenger) if challenger is not None else None
    keys = Keys(prefix)
    arms = [Arm(*m.rsplit(":", 2)) for m in sorted(r.smembers(keys.quality_index)) if m.count(":") >= 2]
    stored = {a: w for a in arms if (w := _windows(r, keys, a))}
    mine = [a for a in stored if a.model == name and a.variant == "primary"
            and (primary_version is None or a.version == primary_version)]
    if not mine:
        known = sorted({a.model for a in stored})
        raise ConfigError(f"no joined labels kept for model {name!r}"
                          f"{'' if primary_version is None else f' version {primary_version}'} (primary variant) "
                          f"under prefix {prefix!r}; models with some: {known or 'none'} (is the monitor's "
                          "ground_truth configured, with compare_pairs > 0?)")
    newest = max(max(stored[a]) for a in mine)
    primary = _pick([a for a in mine if max(stored[a]) == newest], f"primary versions of {name}",
                    "--primary VERSION")
    pipeline = stored[primary][newest]["pipeline"]
    if wanted is not None:
        chal = wanted
        if chal not in stored or chal == primary:
            raise ConfigError(f"challenger {chal}: no joined labels kept for it (arms: "
                              f"{', '.join(str(a) for a in stored if a != primary) or 'none'})")
    else:
        live = [a for a in stored if a != primary and max(stored[a]) == newest
                and stored[a][newest]["pipeline"] == pipeline]
        if not live:
            raise ConfigError(f"model {name}: no challenger (canary, shadow or another A/B arm) with joined labels "
                              f"in pipeline {pipeline!r}'s newest window")
        chal = _pick(live, f"challengers of {primary}", "--challenger MODEL:VERSION:VARIANT")
    since = min(stored[chal])
    chosen = [w for w in sorted(stored[chal]) if (w == window if window is not None else w >= since)
              and w in stored[primary]]
    if not chosen:
        raise ConfigError(f"window {window}: not kept for both {primary} and {chal} "
                          f"(common windows: {sorted(set(stored[primary]) & set(stored[chal]))[-5:]} ...)")
    rows = [_rows([stored[arm][w] for w in chosen]) for arm in (primary, chal)]
    result = compare(rows[0], rows[1], level=level, method=method, min_class=min_class, seed=seed)
    span = (len(chosen), chosen[0], int(stored[chal][chosen[-1]]["window_end"]))
    return Report(name, primary, chal, span, result)


def _rows(windows: Sequence[Mapping[str, Any]]) -> Rows:
    return Rows([e for w in windows for e in w["eid"]],
                np.array([s for w in windows for s in w["score"]], dtype=np.float64),
                np.array([y for w in windows for y in w["label"]], dtype=bool))


def _ts(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def render(rep: Report) -> str:
    c = rep.result
    n, first, last = rep.windows
    pct = f"{c.level * 100:g}%"
    ci = "n/a" if c.reason.startswith("too few") else f"[{c.low:+.4f}, {c.high:+.4f}]"
    return "\n".join([
        f"{rep.name}: primary {rep.primary} vs challenger {rep.challenger}",
        f"  labels of {n} window(s), {_ts(first)} .. {_ts(last)}; "
        f"{'paired (same events)' if c.paired else 'unpaired (different events)'}",
        f"  primary     AUC {c.auc_primary:.4f}  on {c.n_primary:,} labelled events ({c.positives_primary:,} positive)",
        f"  challenger  AUC {c.auc_challenger:.4f}  on {c.n_challenger:,} labelled events "
        f"({c.positives_challenger:,} positive)",
        f"  difference  {c.diff:+.4f}  {pct} CI {ci} ({'DeLong' if c.method == 'delong' else 'bootstrap'})",
        f"verdict: {c.verdict} ({c.reason})",
    ])
