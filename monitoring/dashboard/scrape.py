"""Scraping the scorers' /metrics in a background thread: throughput from successive scrapes, lag, p99."""

from __future__ import annotations

import logging
import math
import threading
import time
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)


@dataclass
class Sample:
    """One scrape of every target, summed over processes and pipelines."""

    t: float
    events_in: float = 0.0
    events_out: float = 0.0
    dead_letters: float = 0.0
    lag: dict[str, float] = field(default_factory=dict)           # "topic[partition]" -> lag
    e2e_buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count
    targets: list[dict[str, Any]] = field(default_factory=list)


def parse_metrics(text: str, sample: Sample) -> None:
    """Add one target's exposition text into ``sample``."""
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "streamscore_events_total":
                if s.labels.get("direction") == "in":
                    sample.events_in += s.value
                elif s.labels.get("direction") == "out":
                    sample.events_out += s.value
            elif s.name == "streamscore_dead_letters_total":
                sample.dead_letters += s.value
            elif s.name == "streamscore_consumer_lag":
                key = f"{s.labels.get('topic', '?')}[{s.labels.get('partition', '?')}]"
                sample.lag[key] = sample.lag.get(key, 0.0) + s.value
            elif s.name == "streamscore_e2e_latency_seconds_bucket":
                le = float(s.labels["le"])
                sample.e2e_buckets[le] = sample.e2e_buckets.get(le, 0.0) + s.value


def bucket_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative ``le -> count`` (linear within a bucket)."""
    bounds = sorted(buckets)
    if not bounds or bounds[-1] != math.inf:
        return None
    total = buckets[math.inf]
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for b in bounds:
        c = buckets[b]
        if c >= rank:
            if b == math.inf:
                return prev_bound
            return prev_bound + (b - prev_bound) * (rank - prev_count) / max(c - prev_count, 1e-12)
        prev_bound, prev_count = b, c
    return prev_bound


def _fetch(url: str, timeout: float) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return str(resp.read().decode("utf-8", "replace"))


class MetricsPoller:
    """Scrapes ``urls`` every ``interval_s`` and keeps the last ``history`` samples."""

    def __init__(self, urls: list[str], *, interval_s: float = 1.0, history: int = 180,
                 fetch: Callable[[str, float], str] = _fetch, clock: Callable[[], float] = time.time) -> None:
        self.urls = list(urls)
        self.interval_s = interval_s
        self._fetch = fetch
        self._clock = clock
        self._samples: deque[Sample] = deque(maxlen=history)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.urls and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="dashboard-scrape", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            self._stop.wait(self.interval_s)

    def poll_once(self) -> Sample:
        sample = Sample(t=self._clock())
        for url in self.urls:
            try:
                parse_metrics(self._fetch(url, max(self.interval_s, 1.0)), sample)
                sample.targets.append({"url": url, "up": True})
            except Exception as exc:  # noqa: BLE001 - a down target is shown, not raised
                sample.targets.append({"url": url, "up": False, "error": str(exc)[:200]})
        with self._lock:
            self._samples.append(sample)
        return sample

    def snapshot(self, window_s: float = 5.0) -> dict[str, Any]:
        with self._lock:
            samples = list(self._samples)
        if not samples:
            return {"targets": [{"url": u, "up": None} for u in self.urls], "history": [], "lag": {},
                    "lag_total": None, "events_in_per_s": None, "events_out_per_s": None}
        last = samples[-1]
        base = next((s for s in samples if last.t - s.t <= window_s), last)
        if base is last and len(samples) > 1:
            base = samples[-2]
        history = [{"t": b.t, "in_per_s": _rate(a.events_in, b.events_in, b.t - a.t),
                    "out_per_s": _rate(a.events_out, b.events_out, b.t - a.t)}
                   for a, b in zip(samples, samples[1:])]
        dt = last.t - base.t
        window = {le: max(0.0, c - base.e2e_buckets.get(le, 0.0)) for le, c in last.e2e_buckets.items()}
        return {
            "t": last.t,
            "targets": last.targets,
            "events_in_total": last.events_in,
            "events_out_total": last.events_out,
            "dead_letters_total": last.dead_letters,
            "events_in_per_s": _rate(base.events_in, last.events_in, dt) if dt > 0 else None,
            "events_out_per_s": _rate(base.events_out, last.events_out, dt) if dt > 0 else None,
            "lag": dict(sorted(last.lag.items())),
            "lag_total": sum(last.lag.values()) if last.lag else None,
            "e2e_p99_s": bucket_quantile(0.99, window) if dt > 0 else None,
            "history": history,
        }


def _rate(a: float, b: float, dt: float) -> float:
    # a restarted process resets its counters: count that interval as 0, never negative
    return max(0.0, b - a) / dt if dt > 0 else 0.0
