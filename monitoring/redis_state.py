"""Redis as the ops interface: current drift / shadow state, the alert stream, terminal views.

The layout is documented in ``monitoring/REDIS.md`` (a dashboard reads exactly it).
Invariant: writing the result of a window twice leaves Redis as writing it once -- hashes
are overwritten with the same values and an alert is added to the stream only if its
(model, feature, window_end, state) was never added before (checked atomically in Lua).
"""

from __future__ import annotations

import datetime
import json
import math
import time
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis

ALERTS_MAXLEN = 10_000
_DEDUPE_KEEP = 100_000

_ADD_ALERT = """
if redis.call('ZADD', KEYS[2], 'NX', ARGV[2], ARGV[1]) == 0 then return 0 end
if redis.call('ZCARD', KEYS[2]) > tonumber(ARGV[4]) then
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -tonumber(ARGV[4]) - 1)
end
local args = {'XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*'}
for i = 5, #ARGV do args[#args + 1] = ARGV[i] end
redis.call(unpack(args))
return 1
"""


def redact(url: str) -> str:
    """The URL with any password replaced by ``***`` (safe to log)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


def connect(url: str) -> Any:   # redis.Redis with decode_responses=True: every reply is str
    """A client from ``redis://`` / ``rediss://`` (TLS) URLs; the password comes from the URL."""
    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=10, socket_connect_timeout=5,
                                health_check_interval=30)


class Keys:
    """Every key of the layout (``monitoring/REDIS.md``) under one prefix; writers and readers share it."""

    def __init__(self, prefix: str = "streamscore") -> None:
        self.prefix = prefix
        self.drift_index = f"{prefix}:drift:index"
        self.shadow_index = f"{prefix}:shadow:index"
        self.alerts = f"{prefix}:alerts"
        self.alert_ids = f"{prefix}:monitor:alert_ids"
        self.heartbeat = f"{prefix}:monitor:heartbeat"
        self.windows = f"{prefix}:monitor:windows"
        self.quality_index = f"{prefix}:quality:index"
        self.quality_windows = f"{prefix}:quality:windows"
        self.estimate_index = f"{prefix}:quality:estimate:index"

    def drift(self, model: str, feature: str) -> str:
        return f"{self.prefix}:drift:{model}:{feature}"

    def shadow(self, model: str, shadow_model: str) -> str:
        return f"{self.prefix}:shadow:{model}:{shadow_model}"

    def quality(self, model: str, version: str, variant: str) -> str:
        return f"{self.prefix}:quality:{model}:{version}:{variant}"

    def labels(self, pipeline: str) -> str:
        return f"{self.prefix}:labels:{pipeline}"

    def quality_pairs(self, model: str, version: str, variant: str) -> str:
        return f"{self.prefix}:quality:pairs:{model}:{version}:{variant}"

    def quality_estimate(self, model: str, version: str, variant: str) -> str:
        return f"{self.prefix}:quality:estimate:{model}:{version}:{variant}"


def split_member(member: str) -> tuple[str, str]:
    """``"{model}:{feature}"`` of an index set as (model, feature); split on the last ``:``
    (a model name may contain ``:`` only if feature names do not)."""
    model, _, rest = member.rpartition(":")
    return model, rest


def _num(v: float) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else repr(float(v))


def drift_fields(result: Mapping[str, Any], feature: str, f: Mapping[str, Any], now_ms: int) -> dict[str, str]:
    out = {"model": result["model"], "version": result["version"], "feature": feature, "statistic": f["statistic"],
           "value": _num(f["psi"]), "threshold": _num(f["threshold"]), "status": f["status"],
           "window_start": str(result["window_start"]), "window_end": str(result["window_end"]), "n": str(f["n"]),
           "reference": json.dumps(f["reference"]), "current": json.dumps(f["current"]),
           "edges": json.dumps(f["edges"]), "updated_at": str(now_ms)}
    for stat in ("psi", "js", "ks", "ks_critical", "chi2", "chi2_p"):
        if f.get(stat) is not None:
            out[stat] = _num(f[stat])
    return out


class RedisState:
    """Writes closed-window results; one instance per monitor process."""

    def __init__(self, url: str, *, prefix: str = "streamscore", client: redis.Redis | None = None) -> None:
        self.client = client or connect(url)
        self.keys = Keys(prefix)
        self._add_alert = self.client.register_script(_ADD_ALERT)

    def write_window(self, result: Mapping[str, Any]) -> int:
        """Drift hashes, shadow hashes, the window summary and new alerts; returns alerts added."""
        now = int(time.time() * 1000)
        k = self.keys
        pipe = self.client.pipeline(transaction=True)
        model = result["model"]
        for feature, f in result["features"].items():
            pipe.hset(k.drift(model, feature), mapping=drift_fields(result, feature, f, now))  # type: ignore[arg-type]
            pipe.sadd(k.drift_index, f"{model}:{feature}")
        for shadow_model, s in result["shadow"].items():
            pipe.hset(k.shadow(model, shadow_model), mapping={
                "model": model, "version": result["version"], "shadow_model": shadow_model,
                "shadow_version": s["version"], "n_pairs": str(s["n_pairs"]),
                "agreement_rate": _num(s["agreement_rate"]), "diff_p50": _num(s["diff_p50"]),
                "diff_p90": _num(s["diff_p90"]), "diff_p99": _num(s["diff_p99"]),
                "window_start": str(result["window_start"]), "window_end": str(result["window_end"]),
                "updated_at": str(now)})
            pipe.sadd(k.shadow_index, f"{model}:{shadow_model}")
        pipe.hset(k.windows, f"{model}:{result['window_start']}", json.dumps(window_summary(result), sort_keys=True))
        pipe.execute()
        return self.add_alerts(result["alerts"])

    def add_alerts(self, alerts: list[Mapping[str, Any]]) -> int:
        """Append alerts to the stream, each at most once (by model|feature|window_end|state)."""
        k = self.keys
        added = 0
        for alert in alerts:
            ident = f"{alert['model']}|{alert['feature']}|{alert['window_end']}|{alert['state']}"
            flat: list[str] = []
            for key, value in alert.items():
                flat += [key, str(value)]
            added += int(self._add_alert(keys=[k.alerts, k.alert_ids],
                                         args=[ident, alert["window_end"], ALERTS_MAXLEN, _DEDUPE_KEEP, *flat]))
        return added

    def write_quality(self, pipeline: str, result: Mapping[str, Any], *, keep_pairs: int = 168) -> None:
        """One closed quality window: the latest-window hash (with cumulative figures), its JSON
        under ``quality:windows``, its sampled joined rows (``pairs``, if any; the newest
        ``keep_pairs`` windows are kept), and its quality-drop alerts. Idempotent per window."""
        k = self.keys
        model, version, variant = result["model"], result["version"], result["variant"]
        fields = {"pipeline": pipeline, "model": model, "version": version, "variant": variant,
                  "window_start": str(result["window_start"]), "window_end": str(result["window_end"]),
                  "updated_at": str(int(time.time() * 1000)),
                  **{m: _num(v) for m, v in result["metrics"].items()},
                  **{f"cumulative_{m}": _num(v) for m, v in result["cumulative"].items()}}
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(k.quality(model, version, variant), mapping=fields)  # type: ignore[arg-type]
        pipe.sadd(k.quality_index, f"{model}:{version}:{variant}")
        pipe.hset(k.quality_windows, f"{model}:{version}:{variant}:{result['window_start']}",
                  json.dumps({"pipeline": pipeline, "model": model, "version": version, "variant": variant,
                              "window_start": result["window_start"], "window_end": result["window_end"],
                              "metrics": result["metrics"]}, sort_keys=True))
        pairs_key = k.quality_pairs(model, version, variant)
        if "pairs" in result:
            pipe.hset(pairs_key, str(result["window_start"]), json.dumps(
                {"pipeline": pipeline, "window_start": result["window_start"], "window_end": result["window_end"],
                 "count": result["metrics"]["count"], **result["pairs"]}))
        pipe.execute()
        if "pairs" in result:
            starts = sorted(int(w) for w in self.client.hkeys(pairs_key))
            if len(starts) > keep_pairs:
                self.client.hdel(pairs_key, *(str(w) for w in starts[:len(starts) - keep_pairs]))
        self.add_alerts(result.get("alerts", []))

    def write_estimate(self, pipeline: str, result: Mapping[str, Any], *, keep: int = 48) -> None:
        """One event-time window's live estimate (``est_*`` over every prediction, labelled or not)
        as JSON under its window start; the newest ``keep`` windows are kept. Idempotent per window."""
        key = self.keys.quality_estimate(result["model"], result["version"], result["variant"])
        figures = {k: v for k, v in result.items() if k not in ("estimate", "model", "version", "variant")}
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, str(result["window_start"]), json.dumps(
            {"pipeline": pipeline, **figures, "updated_at": int(time.time() * 1000)}, sort_keys=True))
        pipe.sadd(self.keys.estimate_index, f"{result['model']}:{result['version']}:{result['variant']}")
        pipe.execute()
        starts = sorted(int(w) for w in self.client.hkeys(key))
        if len(starts) > keep:
            self.client.hdel(key, *(str(w) for w in starts[:len(starts) - keep]))

    def write_label_counts(self, pipeline: str, partition: int, counts: Mapping[str, int]) -> None:
        """One join partition's label counters (labels, duplicates, orphans, ...) as JSON."""
        self.client.hset(self.keys.labels(pipeline), str(partition), json.dumps(dict(counts), sort_keys=True))

    def heartbeat(self, ms: int | None = None) -> None:
        self.client.set(self.keys.heartbeat, str(int(time.time() * 1000) if ms is None else ms))

    def close(self) -> None:
        self.client.close()


def window_summary(result: Mapping[str, Any]) -> dict[str, Any]:
    """What ``{prefix}:monitor:windows`` keeps per window: counts and each feature's PSI / status."""
    return {"model": result["model"], "version": result["version"], "window_start": result["window_start"],
            "window_end": result["window_end"], "n": result["n"], "n_sampled": result["n_sampled"],
            "batches": result["batches"],
            "psi": {f: round(v["psi"], 6) for f, v in result["features"].items()},
            "status": {f: v["status"] for f, v in result["features"].items()},
            "shadow": {m: {"n_pairs": s["n_pairs"], "agree": s["agree"]} for m, s in result["shadow"].items()}}


# --- terminal views --------------------------------------------------------------------

def _ts(ms: str | int) -> str:
    try:
        return datetime.datetime.fromtimestamp(int(ms) / 1000, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (TypeError, ValueError):
        return str(ms)


def format_alert(fields: Mapping[str, str]) -> str:
    return (f"{_ts(fields.get('raised_at', '0'))} {fields.get('state', '?'):<7} {fields.get('severity', '?'):<8} "
            f"{fields.get('model')}:{fields.get('feature')} {fields.get('statistic')}={float(fields.get('value', 'nan')):.4f} "
            f"threshold={float(fields.get('threshold', 'nan')):.4f} "
            f"window=[{_ts(fields.get('window_start', 0))}, {_ts(fields.get('window_end', 0))})")


def alerts_tail(redis_url: str, follow: bool = False, count: int = 20, *, prefix: str = "streamscore",
                block_ms: int = 1000, client: Any = None) -> Iterator[str]:
    """The last ``count`` alerts, oldest first; with ``follow``, then every new one as it arrives."""
    r: Any = client or connect(redis_url)
    key = Keys(prefix).alerts
    entries = list(reversed(r.xrevrange(key, count=count))) if count > 0 else []
    last = entries[-1][0] if entries else "$"
    for _id, fields in entries:
        yield format_alert(fields)
    if last == "$":
        last = r.xrevrange(key, count=1)[0][0] if r.exists(key) else "0-0"
    while follow:
        for _stream, items in r.xread({key: last}, block=block_ms) or []:
            for entry_id, fields in items:
                last = entry_id
                yield format_alert(fields)


def drift_show(redis_url: str, *, prefix: str = "streamscore", client: Any = None) -> str:
    """A text table of every model/feature's current drift state, then shadow comparisons."""
    r: Any = client or connect(redis_url)
    keys = Keys(prefix)
    head = ("MODEL", "FEATURE", "STATUS", "PSI", "THRESHOLD", "JS", "KS/CHI2_P", "N", "WINDOW_END")
    rows: list[tuple[str, ...]] = [head]
    for member in sorted(r.smembers(keys.drift_index)):
        model, feature = split_member(member)
        h = r.hgetall(keys.drift(model, feature))
        if not h:
            continue
        extra = h.get("ks") or h.get("chi2_p") or ""
        rows.append((model, feature, h.get("status", ""), _fmt(h.get("psi")), _fmt(h.get("threshold")),
                     _fmt(h.get("js")), _fmt(extra), h.get("n", ""), _ts(h.get("window_end", "0"))))
    out = [_table(rows)]
    shadows: list[tuple[str, ...]] = [("MODEL", "SHADOW", "AGREEMENT", "DIFF_P50", "DIFF_P90", "DIFF_P99", "PAIRS", "WINDOW_END")]
    for member in sorted(r.smembers(keys.shadow_index)):
        model, shadow_model = split_member(member)
        h = r.hgetall(keys.shadow(model, shadow_model))
        if h:
            shadows.append((model, shadow_model, _fmt(h.get("agreement_rate")), _fmt(h.get("diff_p50")),
                            _fmt(h.get("diff_p90")), _fmt(h.get("diff_p99")), h.get("n_pairs", ""),
                            _ts(h.get("window_end", "0"))))
    if len(shadows) > 1:
        out.append(_table(shadows))
    beat = r.get(keys.heartbeat)
    out.append(f"monitor heartbeat: {_ts(beat) if beat else 'never'}")
    return "\n\n".join(out)


def _fmt(v: str | None) -> str:
    if v is None or v == "":
        return ""
    try:
        return f"{float(v):.4f}"
    except ValueError:
        return v


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
