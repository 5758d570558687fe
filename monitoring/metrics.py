"""Prometheus metrics for one scoring process.

The scorer calls :class:`ScorerMetrics` once per BATCH (never per event): every call is a
dict lookup of a cached labelled child plus one locked increment, and the end-to-end
latency histogram takes a whole batch's latencies as one numpy array
(:class:`BulkHistogram`), binned with ``searchsorted`` + ``bincount``.

Multi-process: ``streamscore serve --processes N`` forks N single-consumer processes;
process ``i`` serves its own ``/metrics`` on ``metrics_port + i`` (see
:func:`metrics_port_for`), so no shared files or multiprocess mode are needed. Every
series carries an ``instance`` label naming the process (e.g. ``scorer-0``); scrape with
``honor_labels: true`` (as monitoring/prometheus/prometheus.yml does) to keep it as the
``instance`` target label, or Prometheus stores it as ``exported_instance``.

Metric names (all prefixed ``streamscore_``)::

    events_total{pipeline,direction=in|out}        dead_letters_total{pipeline,reason}
    batches_total{pipeline,reason}                 batch_size{pipeline}            (histogram, rows)
    batch_wait_seconds{pipeline}                   model_latency_seconds{pipeline,model}
    model_rows_total{pipeline,model}               e2e_latency_seconds{pipeline}   (bulk histogram)
    stage_latency_seconds{stage}                   queue_depth{stage}
    consumer_lag{topic,partition}                  consumer_fetchq_messages{topic,partition}
    consumer_fetchq_bytes{topic,partition}         consumer_replyq
    model_info{pipeline,model,version,variant}=1   model_swaps_total{pipeline,result=ok|failed}
    delivery_errors_total{pipeline}                gpu_utilization_ratio{gpu} ... (GpuMetrics)
    child_restarts_total{instance,child,reason}    (SupervisorMetrics: the ``serve --processes N`` parent)
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence
from wsgiref.simple_server import WSGIServer

import numpy as np
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

# 1 ms .. 10 s: about three bounds per decade, finer where a latency target of ~20 ms sits.
E2E_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
    0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0,
)
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
BATCH_SIZE_BUCKETS: tuple[float, ...] = tuple(float(2 ** i) for i in range(17))   # 1 .. 65536 rows


def metrics_port_for(base: int | None, index: int) -> int | None:
    """The port process ``index`` of ``serve --processes N`` serves on: ``base + index`` (0 stays 0 = any free)."""
    if base is None:
        return None
    return 0 if base == 0 else base + index


class BulkHistogram(Collector):
    """A labelled histogram fed whole arrays at a time.

    Same semantics as ``prometheus_client.Histogram.observe`` (a value lands in the first
    bucket whose upper bound is >= it; ``+Inf`` catches the rest; ``_sum`` adds every
    value), applied to an array in one ``searchsorted``. NaNs are dropped.
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 buckets: Sequence[float], *, const_labels: dict[str, str] | None = None) -> None:
        bounds = np.asarray(sorted(float(b) for b in buckets if b != float("inf")), dtype=np.float64)
        if len(bounds) == 0:
            raise ValueError("a histogram needs at least one finite bucket bound")
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._const = dict(const_labels or {})
        self._bounds = bounds
        self._le = [_float_str(b) for b in bounds] + ["+Inf"]
        self._series: dict[tuple[str, ...], list[Any]] = {}   # labels -> [bucket counts (int64), sum]
        self._lock = threading.Lock()

    def observe(self, labelvalues: tuple[str, ...], values: np.ndarray) -> None:
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        if np.isnan(v).any():
            v = v[~np.isnan(v)]
        if len(v) == 0:
            return
        counts = np.bincount(np.searchsorted(self._bounds, v, side="left"), minlength=len(self._bounds) + 1)
        total = float(v.sum())
        with self._lock:
            s = self._series.get(labelvalues)
            if s is None:
                self._series[labelvalues] = [counts.astype(np.int64), total]
            else:
                s[0] += counts
                s[1] += total

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=[*self._const, *self.labelnames])]

    def collect(self) -> Iterable[Metric]:
        fam = HistogramMetricFamily(self.name, self.documentation, labels=[*self._const, *self.labelnames])
        with self._lock:
            snapshot = [(k, s[0].copy(), s[1]) for k, s in self._series.items()]
        for labelvalues, counts, total in snapshot:
            cum = np.cumsum(counts).tolist()
            fam.add_metric([*self._const.values(), *labelvalues], list(zip(self._le, cum)), sum_value=total)
        return [fam]


@dataclass(frozen=True)
class _PartitionStats:
    lag: int
    fetchq_msgs: int
    fetchq_bytes: int


class ConsumerStatsCollector(Collector):
    """The latest librdkafka statistics snapshot as gauges; partitions no longer fetched vanish."""

    def __init__(self, const_labels: dict[str, str]) -> None:
        self._const = dict(const_labels)
        self._parts: dict[tuple[str, str], _PartitionStats] = {}
        self._replyq: int | None = None
        self._lock = threading.Lock()

    def update(self, stats: dict[str, Any]) -> None:
        parts: dict[tuple[str, str], _PartitionStats] = {}
        for topic, t in (stats.get("topics") or {}).items():
            for pid, p in (t.get("partitions") or {}).items():
                if int(pid) < 0 or not _fetching(p):
                    continue
                lag = int(p.get("consumer_lag", -1))
                if lag < 0:
                    continue
                parts[(topic, str(pid))] = _PartitionStats(lag, int(p.get("fetchq_cnt", 0)), int(p.get("fetchq_size", 0)))
        with self._lock:
            self._parts = parts
            self._replyq = int(stats["replyq"]) if "replyq" in stats else None

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        labels = [*self._const, "topic", "partition"]
        return (GaugeMetricFamily("streamscore_consumer_lag", "Messages behind the partition's high watermark "
                                  "(librdkafka consumer_lag).", labels=labels),
                GaugeMetricFamily("streamscore_consumer_fetchq_messages", "Messages pre-fetched and waiting in "
                                  "librdkafka's fetch queue.", labels=labels),
                GaugeMetricFamily("streamscore_consumer_fetchq_bytes", "Bytes pre-fetched and waiting in "
                                  "librdkafka's fetch queue.", labels=labels),
                GaugeMetricFamily("streamscore_consumer_replyq", "Operations waiting in librdkafka's reply queue.",
                                  labels=list(self._const)))

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        lag, cnt, size, replyq = self._families()
        const = list(self._const.values())
        with self._lock:
            parts, rq = dict(self._parts), self._replyq
        for (topic, pid), s in sorted(parts.items()):
            lag.add_metric([*const, topic, pid], s.lag)
            cnt.add_metric([*const, topic, pid], s.fetchq_msgs)
            size.add_metric([*const, topic, pid], s.fetchq_bytes)
        if rq is not None:
            replyq.add_metric(const, rq)
        return [lag, cnt, size, replyq]


def _fetching(p: dict[str, Any]) -> bool:
    """An assigned partition: librdkafka lists every partition of a subscribed topic."""
    return bool(p.get("desired", True)) and p.get("fetch_state", "active") not in ("none", "stopped")


class ScorerMetrics:
    """Every metric a scoring process exports, behind per-batch calls."""

    def __init__(self, *, registry: CollectorRegistry | None = None, instance: str = "") -> None:
        self.registry = REGISTRY if registry is None else registry
        self.instance = instance or socket.gethostname()
        reg = self.registry
        inst = ["instance"]
        self._events = Counter("streamscore_events", "Events consumed (direction=in) and predictions "
                               "produced (direction=out).", [*inst, "pipeline", "direction"], registry=reg)
        self._dead = Counter("streamscore_dead_letters", "Records sent to the dead-letter topic, by reason.",
                             [*inst, "pipeline", "reason"], registry=reg)
        self._batches = Counter("streamscore_batches", "Micro-batches closed, by the rule that closed them "
                                "(size, wait, latency, flush).", [*inst, "pipeline", "reason"], registry=reg)
        self._batch_size = Histogram("streamscore_batch_size", "Rows per micro-batch.", [*inst, "pipeline"],
                                     buckets=BATCH_SIZE_BUCKETS, registry=reg)
        self._batch_wait = Histogram("streamscore_batch_wait_seconds", "Time from a batch's first row to its close.",
                                     [*inst, "pipeline"], buckets=LATENCY_BUCKETS, registry=reg)
        self._model_latency = Histogram("streamscore_model_latency_seconds", "model.predict time per batch.",
                                        [*inst, "pipeline", "model"], buckets=LATENCY_BUCKETS, registry=reg)
        self._model_rows = Counter("streamscore_model_rows", "Rows scored by each model.",
                                   [*inst, "pipeline", "model"], registry=reg)
        self._stage_latency = Histogram("streamscore_stage_latency_seconds", "Time a batch spends in each stage "
                                        "(decode, model, sink, ...).", [*inst, "stage"], buckets=LATENCY_BUCKETS,
                                        registry=reg)
        self._queue_depth = Gauge("streamscore_queue_depth", "Batches waiting in the queue in front of a stage.",
                                  [*inst, "stage"], registry=reg)
        self._model_info = Gauge("streamscore_model_info", "The model version each pipeline scores with (value 1).",
                                 [*inst, "pipeline", "model", "version", "variant"], registry=reg)
        self._swaps = Counter("streamscore_model_swaps", "Model hot swaps, by result (ok, failed).",
                              [*inst, "pipeline", "result"], registry=reg)
        self._delivery_errors = Counter("streamscore_delivery_errors", "Outputs the broker failed to acknowledge.",
                                        [*inst, "pipeline"], registry=reg)
        self._registry_waits = Counter("streamscore_schema_registry_waits", "Retries while the schema registry "
                                       "was unreachable and a batch waited for a writer schema.", [*inst, "pipeline"],
                                       registry=reg)
        self._registry_wait_s = Counter("streamscore_schema_registry_wait_seconds", "Time batches waited for an "
                                        "unreachable schema registry.", [*inst, "pipeline"], registry=reg)
        self._decode_fallbacks = Counter("streamscore_decode_fallbacks", "Writer schemas decoded per record "
                                         "(fastavro) because the columnar decoder cannot compile them.",
                                         [*inst, "pipeline"], registry=reg)
        self._lookup_waits = Counter("streamscore_lookup_waits", "Retries while a feature lookup's Redis did not "
                                     "answer and a batch waited.", [*inst, "pipeline", "lookup"], registry=reg)
        self._lookup_wait_s = Counter("streamscore_lookup_wait_seconds", "Time batches waited for a feature "
                                      "lookup's Redis.", [*inst, "pipeline", "lookup"], registry=reg)
        self._lookup_keys = Counter("streamscore_lookup_keys", "Distinct keys a lookup needed, by where they came "
                                    "from (fetched, cached).", [*inst, "pipeline", "lookup", "source"], registry=reg)
        self._lookup_missing = Counter("streamscore_lookup_missing_rows", "Events whose lookup key had no fresh entry.",
                                       [*inst, "pipeline", "lookup"], registry=reg)
        self._agg_keys = Gauge("streamscore_aggregate_keys", "Keys held in the aggregate state of the partitions "
                               "this process owns (expired keys count until the next renumbering: at most 2 x live "
                               "+ 1024 per partition).", [*inst, "pipeline"], registry=reg)
        self._agg_bytes = Gauge("streamscore_aggregate_state_bytes", "Bytes of aggregate state held (entry columns with "
                                "their spare capacity, plus an estimate of 120 per key).", [*inst, "pipeline"], registry=reg)
        self._agg_restored = Counter("streamscore_aggregate_restored_records", "Changelog records read to restore "
                                     "aggregate state on assignment.", [*inst, "pipeline"], registry=reg)
        self._agg_restore_s = Counter("streamscore_aggregate_restore_seconds", "Time spent restoring aggregate "
                                      "state on assignment.", [*inst, "pipeline"], registry=reg)
        self._e2e = BulkHistogram("streamscore_e2e_latency_seconds", "Event time to prediction produced, per event.",
                                  ["pipeline"], E2E_BUCKETS, const_labels={"instance": self.instance})
        self._consumer = ConsumerStatsCollector({"instance": self.instance})
        reg.register(self._e2e)
        reg.register(self._consumer)
        self._children: dict[tuple[Any, ...], Any] = {}
        self._info_labels: dict[tuple[str, str], tuple[str, str, str, str]] = {}
        self._info_lock = threading.Lock()

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(self.instance, *labels)
        return child

    # ---------------------------------------------------------------- per batch
    def batch_consumed(self, pipeline: str, n: int) -> None:
        self._child(self._events, pipeline, "in").inc(n)

    def batch_produced(self, pipeline: str, n: int) -> None:
        self._child(self._events, pipeline, "out").inc(n)

    def dead_letters(self, pipeline: str, reason: str, n: int) -> None:
        self._child(self._dead, pipeline, reason).inc(n)

    def batch_closed(self, pipeline: str, size: int, wait_s: float, reason: str) -> None:
        self._child(self._batches, pipeline, reason).inc()
        self._child(self._batch_size, pipeline).observe(size)
        self._child(self._batch_wait, pipeline).observe(wait_s)

    def model_latency(self, pipeline: str, model: str, seconds: float, rows: int) -> None:
        self._child(self._model_latency, pipeline, model).observe(seconds)
        self._child(self._model_rows, pipeline, model).inc(rows)

    def e2e_latency(self, pipeline: str, seconds: np.ndarray) -> None:
        """A whole batch of end-to-end latencies (seconds), observed in one vectorised step."""
        self._e2e.observe((pipeline,), seconds)

    def stage_latency(self, stage: str, seconds: float) -> None:
        self._child(self._stage_latency, stage).observe(seconds)

    def queue_depth(self, stage: str, depth: int) -> None:
        self._child(self._queue_depth, stage).set(depth)

    # ---------------------------------------------------------------- occasional
    def consumer_stats(self, stats_json: str) -> None:
        """The consumer's ``stats_cb`` (librdkafka ``statistics.interval.ms``); bad JSON is logged, not raised."""
        try:
            stats = json.loads(stats_json)
            self._consumer.update(stats)
        except (ValueError, TypeError, AttributeError) as exc:
            log.warning("ignoring unreadable librdkafka statistics: %s", exc)

    def model_info(self, pipeline: str, model: str, version: str, variant: str) -> None:
        """Mark ``model:version`` active for (pipeline, variant); the previous version's series is removed."""
        labels = (pipeline, model, str(version), variant)
        with self._info_lock:
            old = self._info_labels.get((pipeline, variant))
            if old is not None and old != labels:
                self._model_info.remove(self.instance, *old)
            self._info_labels[(pipeline, variant)] = labels
            self._model_info.labels(self.instance, *labels).set(1)

    def model_swap(self, pipeline: str, ok: bool) -> None:
        self._child(self._swaps, pipeline, "ok" if ok else "failed").inc()

    def delivery_error(self, pipeline: str) -> None:
        self._child(self._delivery_errors, pipeline).inc()

    def registry_wait(self, pipeline: str, seconds: float) -> None:
        self._child(self._registry_waits, pipeline).inc()
        self._child(self._registry_wait_s, pipeline).inc(seconds)

    def decode_fallback(self, pipeline: str) -> None:
        self._child(self._decode_fallbacks, pipeline).inc()

    def lookup_wait(self, pipeline: str, lookup: str, seconds: float) -> None:
        self._child(self._lookup_waits, pipeline, lookup).inc()
        self._child(self._lookup_wait_s, pipeline, lookup).inc(seconds)

    def lookup_keys(self, pipeline: str, lookup: str, fetched: int, cached: int, missing: int) -> None:
        self._child(self._lookup_keys, pipeline, lookup, "fetched").inc(fetched)
        self._child(self._lookup_keys, pipeline, lookup, "cached").inc(cached)
        if missing:
            self._child(self._lookup_missing, pipeline, lookup).inc(missing)

    def aggregate_state(self, pipeline: str, keys: int, nbytes: int) -> None:
        self._child(self._agg_keys, pipeline).set(keys)
        self._child(self._agg_bytes, pipeline).set(nbytes)

    def aggregate_restore(self, pipeline: str, records: int, seconds: float) -> None:
        self._child(self._agg_restored, pipeline).inc(records)
        self._child(self._agg_restore_s, pipeline).inc(seconds)


class GpuMetrics(Collector):
    """NVML utilisation and memory per GPU; registers nothing when NVML or a GPU is absent."""

    def __init__(self, *, registry: CollectorRegistry | None = None, instance: str = "") -> None:
        self.instance = instance or socket.gethostname()
        self._nvml: Any = None
        self._handles: list[Any] = []
        try:
            import pynvml  # type: ignore[import-untyped]  # nvidia-ml-py

            pynvml.nvmlInit()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self._nvml = pynvml
        except Exception as exc:  # noqa: BLE001 - no driver, no library, no device: metrics are optional
            log.debug("GPU metrics off: %s", exc)
            self._handles = []
        if self.available:
            (REGISTRY if registry is None else registry).register(self)

    @property
    def available(self) -> bool:
        return bool(self._handles)

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001
                pass
            self._nvml = None
            self._handles = []

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        labels = ["instance", "gpu"]
        return (GaugeMetricFamily("streamscore_gpu_utilization_ratio", "GPU busy fraction over NVML's last "
                                  "sample period (0..1).", labels=labels),
                GaugeMetricFamily("streamscore_gpu_memory_used_bytes", "GPU memory in use.", labels=labels),
                GaugeMetricFamily("streamscore_gpu_memory_total_bytes", "GPU memory installed.", labels=labels))

    def collect(self) -> Iterator[Metric]:
        util, used, total = self._families()
        nvml = self._nvml
        for i, h in enumerate(list(self._handles)):
            try:
                u = nvml.nvmlDeviceGetUtilizationRates(h)
                m = nvml.nvmlDeviceGetMemoryInfo(h)
            except Exception as exc:  # noqa: BLE001 - a scrape must not fail on one device
                log.debug("NVML read of GPU %d failed: %s", i, exc)
                continue
            util.add_metric([self.instance, str(i)], u.gpu / 100.0)
            used.add_metric([self.instance, str(i)], m.used)
            total.add_metric([self.instance, str(i)], m.total)
        yield from (util, used, total)


class SupervisorMetrics:
    """The ``serve --processes N`` parent's own series: restarts of children that exited abnormally."""

    def __init__(self, *, registry: CollectorRegistry | None = None, instance: str = "") -> None:
        self.instance = instance or socket.gethostname()
        self._restarts = Counter("streamscore_child_restarts_total", "Scoring child processes restarted by the "
                                 "serve --processes supervisor after an abnormal exit (reason: exit code or signal).",
                                 ["instance", "child", "reason"], registry=REGISTRY if registry is None else registry)

    def child_restarted(self, child: str, reason: str) -> None:
        self._restarts.labels(self.instance, child, reason).inc()


class MetricsServer:
    """``/metrics`` on a daemon thread; ``close()`` stops it."""

    def __init__(self, port: int, registry: CollectorRegistry | None = None, host: str = "0.0.0.0") -> None:
        from prometheus_client import start_http_server

        self._httpd: WSGIServer
        self._httpd, self._thread = start_http_server(port, addr=host, registry=REGISTRY if registry is None else registry)
        self.port: int = self._httpd.server_address[1]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


def start_metrics_server(port: int, registry: CollectorRegistry | None = None, host: str = "0.0.0.0") -> int:
    """Serve ``/metrics`` for the life of the process; returns the bound port (``port=0`` picks a free one)."""
    return MetricsServer(port, registry, host).port


def _float_str(b: float) -> str:
    # the same text prometheus_client uses for `le`
    from prometheus_client.utils import floatToGoString

    return str(floatToGoString(b))
