"""``make bench``: streamscore against its peers, in ONE run, on one broker, one model, one event set.

Throughput: every contender reads the same pre-produced Avro events from the start of the
input topic with its own consumer group and writes predictions to its own topic. We time
from its first output to its N-th by polling the output topic's high watermarks, so
startup (model load, group join) is excluded for everybody alike.

Latency, a matrix: at fixed loads of 10k, 50k and 100k events/s and at 50% of streamscore's
throughput, streamscore and the passthrough (with a 1-ms consume wait, so it holds no batch
open: the floor the broker, the client and this machine set) each join, sit idle for
``--idle-seconds``, then take ``--latency-seconds`` of fresh events. Both topics stamp
LogAppendTime, so latency = output append time - input append time of the same event_id (the
generator's own leg excluded): p50 / p99 / max over the whole window, p99 per second, and the
first second's p99 (``lat_<rate>_<contender>_*``, ``first_second_p99_ms`` the worst first second
of streamscore). At 50% load the older figures (event_time -> output append, ``*_p50_ms``) are
kept (the fixed loads decode no record for them), and the batched loop runs there too. Each
topic is read back in one pass.

Soak: streamscore at 50% of its throughput for ``--soak-seconds`` (``$SOAK_SECONDS``, 180 by
default: the median RSS of its last minute against that of 30-90 s); its read-back is a sample
of offset windows spread over the run (bench/readback.py), not every record.

``byo_schema``: the streamscore run over the same events in a nested user schema resolved
through a schema registry (Apicurio), scored by the demo model registered for the nested
paths (bench/byo.py); ``byo_schema_vs_streamscore`` is its ratio to ``streamscore_eps``.

``features_online``: one Redis lookup and three per-key aggregates over 100,000 distinct accounts,
on its own input topic keyed by account (bench/online.py); ``features_online_vs_streamscore``.

Results: a table on stdout, bench/results/latest.json and bench/results/latest.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from bench.readback import watermarks
from streamscore.dev.util import stop_process

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PARTITIONS = 4


def host_info() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cores": os.cpu_count(), "cpu": model or platform.processor(), "mem_gib": round(mem, 1),
            "python": platform.python_version(), "kernel": platform.release()}


def create_topic(bootstrap: str, name: str, partitions: int = PARTITIONS, append_time: bool = False) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    cfg = {"message.timestamp.type": "LogAppendTime"} if append_time else {}
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futs = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1, config=cfg)])
    for f in futs.values():
        f.result()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:   # usable once every partition has a leader
        t = admin.list_topics(name, timeout=5).topics.get(name)
        if t is not None and t.error is None and len(t.partitions) == partitions and \
                all(p.leader >= 0 for p in t.partitions.values()):
            return
        time.sleep(0.1)


def high_watermark(consumer: Any, topic: str, partitions: int = PARTITIONS) -> int:
    return sum(max(hi, 0) for _lo, hi in watermarks(consumer, topic, partitions).values())


class RssSampler(threading.Thread):
    """Peak resident memory of a process tree, sampled every 0.2 s."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, float]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        t0 = time.monotonic()
        while not self._halt.wait(0.2):
            try:
                procs = [root, *root.children(recursive=True)]
                rss = sum(p.memory_info().rss for p in procs if p.is_running())
            except psutil.Error:
                continue
            if rss:     # an exited process reads 0: not a sample of its memory
                self.samples.append((time.monotonic() - t0, rss / 2**20))

    def stop(self) -> None:
        self._halt.set()
        self.join(2)

    @property
    def peak_mb(self) -> float:
        return max((s for _, s in self.samples), default=0.0)


def scorer_config(path: Path, bootstrap: str, t_in: str, t_out: str, group: str,
                  registry: Path | None = None, model: str = "fraud-mlp", pipeline: dict[str, Any] | None = None) -> Path:
    import yaml

    cfg: dict[str, Any] = {
        "kafka": {"bootstrap_servers": bootstrap}, "group_id": group,
        "pipelines": [pipeline or {"name": "fraud", "input": {"topic": t_in}, "model": {"name": model},
                                   "output": {"topic": t_out}}],
    }
    if registry is not None:
        cfg["registry"] = str(registry)
    path.write_text(yaml.safe_dump(cfg))
    return path


# The `features` contender: the demo pipeline, but the model input is built by declarative
# features over 6 fields (one-hot country and channel, log1p amount, standardised f01..f03).
FEATURES_SPEC: list[dict[str, Any]] = [
    {"name": "country", "transforms": [{"one_hot": {"vocabulary": ["DE", "FR", "GB", "US", "NL", "ES", "IT", "PL"],
                                                    "unknown": "extra"}}]},
    {"name": "channel", "transforms": [{"one_hot": {"vocabulary": ["POS", "ECOM", "ATM", "MOTO"], "unknown": "ignore"}}]},
    {"name": "amount", "default": 0.0, "transforms": ["log1p"]},
    *[{"name": f, "transforms": [{"standardize": {"mean": 0.0, "std": 1.0}}]} for f in ("f01", "f02", "f03")],
]


def features_registry(work: Path) -> Path:
    """A registry with `fraud-features`: a sigmoid-linear ONNX model over FEATURES_SPEC's 19 columns."""
    from models.base import InputSpec
    from models.registry import ModelRegistry
    from models.testing import write_linear_onnx

    root = work / "features-registry"
    if (root / "fraud-features").is_dir():
        return root
    spec = InputSpec.from_dict({"features": FEATURES_SPEC})
    width = spec.inputs["features"][1]
    artifact = write_linear_onnx(work / "features.onnx", np.linspace(-0.5, 0.5, width))
    ModelRegistry(root).register("fraud-features", artifact, format="onnx", input_spec=spec, output_spec={},
                                 stage="production")
    return root


def contender_cmd(name: str, bootstrap: str, t_in: str, t_out: str, group: str, count: int, work: Path,
                  seconds: float, latency: bool = False, byo: dict[str, Any] | None = None) -> list[str]:
    if name == "byo_schema":
        from bench import byo as byo_bench

        assert byo is not None
        cfg = byo_bench.scorer_config(work / f"{group}.yaml", bootstrap, byo["registry_url"], byo["models"],
                                      byo["topic"], t_out, group)
        return [sys.executable, "-m", "streamscore", "serve", "-c", str(cfg), "--max-seconds", str(seconds)]
    if name == "features_online":
        from bench import online

        assert byo is not None
        cfg = scorer_config(work / f"{group}.yaml", bootstrap, t_in, t_out, group, registry=online.model_registry(work),
                            pipeline=online.pipeline(t_in, t_out, byo["redis_url"]))
        return [sys.executable, "-m", "streamscore", "serve", "-c", str(cfg), "--max-seconds", str(seconds)]
    if name == "backfill":
        cfg = scorer_config(work / f"{group}.yaml", bootstrap, t_in, t_out, group)
        return [sys.executable, "-m", "streamscore", "backfill", "-c", str(cfg), "--from", "0", "--to-topic", t_out,
                "--state-dir", str(work / f"{group}.state"), "--quiet"]
    if name.startswith("streamscore") or name == "features":
        procs = 2 if name.endswith("2proc") else 1
        cfg = scorer_config(work / f"{group}.yaml", bootstrap, t_in, t_out, group,
                            *((features_registry(work), "fraud-features") if name == "features" else ()))
        return [sys.executable, "-m", "streamscore", "serve", "-c", str(cfg), "--processes", str(procs),
                "--max-seconds", str(seconds)]
    module = {"passthrough": "passthrough", "naive": "naive", "batched": "batched", "quix": "quix",
              "faust": "faust_app"}[name]
    cmd = [sys.executable, "-m", f"bench.peers.{module}", "--bootstrap", bootstrap, "--input", t_in,
           "--output", t_out, "--group", group, "--count", str(count), "--seconds", str(seconds)]
    if latency and name == "passthrough":
        # as a latency floor it must not hold a batch open: it forwards whatever 1 ms brought
        cmd += ["--wait-ms", "1"]
    return cmd


def run_throughput(name: str, bootstrap: str, t_in: str, count: int, work: Path, timeout: float,
                   byo: dict[str, Any] | None = None) -> dict[str, Any]:
    from confluent_kafka import Consumer

    run = uuid.uuid4().hex[:6]
    t_out = f"bench-out-{name}-{run}"
    create_topic(bootstrap, t_out)
    watcher = Consumer({"bootstrap.servers": bootstrap, "group.id": f"watch-{run}"})
    log = open(work / f"{name}.log", "wb")
    proc = subprocess.Popen(contender_cmd(name, bootstrap, t_in, t_out, f"bench-{name}-{run}", count, work, timeout,
                                          byo=byo),
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    rss = RssSampler(proc.pid)
    rss.start()
    first_t = first_n = None
    first_cpu = end_cpu = None
    last_n = 0
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            n = high_watermark(watcher, t_out)
            now = time.monotonic()
            if n > 0 and first_t is None:
                first_t, first_n, first_cpu = now, n, cpu_seconds(proc.pid)
            last_n = n
            if n >= count:
                break
            if proc.poll() is not None and n < count:
                time.sleep(0.5)
                last_n = high_watermark(watcher, t_out)
                if last_n < count:
                    break
            time.sleep(0.02)
        end_t = time.monotonic()
        end_cpu = cpu_seconds(proc.pid)
    finally:
        stop_process(proc)
        rss.stop()
        log.close()
        watcher.close()
    ok = last_n >= count
    eps = (last_n - (first_n or 0)) / (end_t - first_t) if first_t and end_t > first_t else 0.0
    # the contender's CPU over the same window as eps (start-up left out): telling where the machine is shared
    cpu_us = (end_cpu - first_cpu) / (last_n - first_n) * 1e6 \
        if first_cpu is not None and end_cpu is not None and first_n is not None and last_n > first_n else None
    return {"name": name, "eps": round(eps), "outputs": last_n, "complete": ok, "rss_mb": round(rss.peak_mb, 1),
            "cpu_us_per_event": None if cpu_us is None else round(cpu_us, 2)}


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process and its children so far (None once it is gone)."""
    import psutil

    try:
        root = psutil.Process(pid)
        return sum(sum(p.cpu_times()[:2]) for p in [root, *root.children(recursive=True)])
    except psutil.Error:
        return None


def model_only_eps(batch: int = 1024, seconds: float = 3.0) -> int:
    from bench.peers.common import model_session
    from models.demo_data import generate

    sess, names = model_session()
    inp = sess.get_inputs()[0].name
    cols = generate(batch * 8, seed=99)
    x = np.stack([np.asarray(cols[n], dtype=np.float32) for n in names], axis=1)
    batches = [np.ascontiguousarray(x[i:i + batch]) for i in range(0, len(x), batch)]
    rates = []
    for _ in range(5):
        t0 = time.perf_counter()
        rows = 0
        while time.perf_counter() - t0 < seconds / 5:
            for b in batches:
                sess.run(None, {inp: b})
                rows += len(b)
        rates.append(rows / (time.perf_counter() - t0))
    return int(np.median(rates))


def _prediction_event_time(value: bytes) -> tuple[str, int]:
    from tests.integration.helpers import decode_prediction

    rec = decode_prediction(value)
    return rec["event_id"], rec["event_time"]


def decode_event_time(value: bytes) -> tuple[str, int]:
    """event_id and event_time (ms) of a transaction, decoded by fastavro."""
    from tests.integration.helpers import decode_transaction

    rec = decode_transaction(value)
    t = rec["event_time"]
    return rec["event_id"], t if isinstance(t, int) else round(t.timestamp() * 1000)


def latency_summary(lat: list[float], sent: list[int], warmup_s: float) -> dict[str, Any]:
    """p50/p99 of a window, p99 per 5-s slice of send time, and the window without its first
    ``warmup_s`` (reported beside the whole-window figures, not instead)."""
    if not lat:
        return {"p50_ms": None, "p99_ms": None}
    arr = np.asarray(lat, dtype=np.float64)
    out: dict[str, Any] = {"p50_ms": round(float(np.percentile(arr, 50)), 2),
                           "p99_ms": round(float(np.percentile(arr, 99)), 2)}
    t = (np.asarray(sent, dtype=np.int64) - min(sent)) / 1000.0
    out["p99_ms_by_5s"] = [round(float(np.percentile(arr[(t >= a) & (t < a + 5)], 99)), 1)
                           for a in range(0, int(t.max()) + 1, 5) if np.any((t >= a) & (t < a + 5))]
    steady = arr[t >= warmup_s]
    if len(steady):
        out["warmup_s"] = warmup_s
        out["p50_ms_after_warmup"] = round(float(np.percentile(steady, 50)), 2)
        out["p99_ms_after_warmup"] = round(float(np.percentile(steady, 99)), 2)
    return out


LAT_RATES = (10_000, 50_000, 100_000)      # the fixed loads of the latency matrix (plus 50% of streamscore_eps)


def append_latency_summary(t_in: dict[str, int], t_out: dict[str, int]) -> dict[str, Any]:
    """Input-append -> output-append latency of the ids in both: p50 / p99 / max over the
    whole window, p99 of each second of input append time, and the first second's p99.
    ``missing`` counts sampled inputs with no output (0 unless the contender lost some or
    had not finished when it was stopped)."""
    ids = [k for k in t_in if k in t_out]
    if not ids:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None, "samples": 0, "missing": len(t_in)}
    a_in = np.fromiter((t_in[k] for k in ids), np.int64, len(ids))
    lat = np.fromiter((t_out[k] for k in ids), np.int64, len(ids)) - a_in
    sec = (a_in - a_in.min()) // 1000
    by_s = [round(float(np.percentile(lat[sec == x], 99)), 1) for x in range(int(sec.max()) + 1) if np.any(sec == x)]
    return {"p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "max_ms": int(lat.max()), "p99_ms_by_second": by_s, "first_second_p99_ms": by_s[0],
            "samples": len(ids), "missing": len(t_in) - len(ids)}


def run_latency(name: str, bootstrap: str, rate: float, seconds: float, work: Path,
                soak: bool = False, warmup_s: float = 5.0, idle_s: float = 0.0,
                append_step: int = 0, full_readback: bool = False, event_time: bool = True) -> dict[str, Any]:
    """Offered load ``rate`` for ``seconds``; e2e latency from event_time to LogAppendTime.

    ``idle_s``: the contender sits idle that long after its probe batch before the load starts
    (the first second after an idle period is what ``first_second_p99_ms`` reports).
    ``append_step`` > 0: also input-append -> output-append latency (both topics stamp
    LogAppendTime, so the generator's own leg is excluded), over every ``append_step``-th id.
    ``event_time``: False skips the event_time figures (no record decoded; the append ones stay).
    A soak's read-back is a sample of offset windows (``full_readback``: every 10th record too)."""
    from confluent_kafka import Consumer

    from bench.readback import read_all, read_sampled

    from streamscore.produce import produce_events

    run = uuid.uuid4().hex[:6]
    t_in, t_out = f"bench-lat-in-{name}-{run}", f"bench-lat-out-{name}-{run}"
    create_topic(bootstrap, t_in, append_time=True)
    create_topic(bootstrap, t_out, append_time=True)
    log = open(work / f"lat-{name}.log", "wb")
    total = int(rate * seconds)
    # a soak's generator may fall behind its rate: the contender waits for it rather than stop mid-load
    runtime = (2 * seconds if soak else seconds) + 120
    proc = subprocess.Popen(contender_cmd(name, bootstrap, t_in, t_out, f"bench-lat-{name}-{run}", total + 200, work,
                                          runtime, latency=True), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    rss = RssSampler(proc.pid)
    rss.start()
    try:
        watcher = Consumer({"bootstrap.servers": bootstrap, "group.id": f"watch-{run}"})
        # wait until the contender has joined its group: a probe batch gets scored
        produce_events({"bootstrap.servers": bootstrap, "linger.ms": 1}, t_in, 200, rate=2000, seed=7, start=10**8)
        deadline = time.monotonic() + 90
        while high_watermark(watcher, t_out) < 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        warm = high_watermark(watcher, t_out)
        if idle_s:
            time.sleep(idle_s)        # the idle period itself is the measured condition
        produce_events({"bootstrap.servers": bootstrap, "linger.ms": 1}, t_in, total, rate=rate, seed=8)
        deadline = time.monotonic() + 60
        while high_watermark(watcher, t_out) < warm + total and time.monotonic() < deadline:
            time.sleep(0.1)
        watcher.close()
    finally:
        stop_process(proc)
        rss.stop()
        log.close()
    # passthrough copies the input's bytes, so its output decodes as a transaction
    decode = decode_event_time if name == "passthrough" else _prediction_event_time
    if soak:    # tens of millions of records: offset windows spread over the run (bench/readback.py)
        got, got_in = read_sampled(bootstrap, t_out, decode), read_sampled(bootstrap, t_in, decode_event_time)
    else:       # every record fetched once; decoded up to 20k/s of load, then every step-th
        step = max(1, round(rate / 20_000)) if event_time else 0
        got = read_all(bootstrap, t_out, decode, step, append_step)
        got_in = read_all(bootstrap, t_in, decode_event_time, 10 if event_time else 0, append_step)
    seen = got.total
    out: dict[str, Any] = {"name": name, "offered_eps": round(rate), "scored": seen, "expected": total + 200,
                           "latency_samples": len(got.lat), "rss_peak_mb": round(rss.peak_mb, 1),
                           "readback_s": round(got.seconds + got_in.seconds, 1), "readback_records": got.read + got_in.read}
    if soak:    # read falls short of planned only where a window's records were gone
        out["readback_planned"] = got.planned + got_in.planned
    out.update(latency_summary(got.lat, got.sent, warmup_s))
    # the generator -> broker leg alone (input append time - event_time), sampled: a floor
    # under every contender's end-to-end figure, measured in the same window
    out["input_leg"] = latency_summary(got_in.lat, got_in.sent, warmup_s)
    if append_step:
        out["append"] = append_latency_summary(got_in.appended, got.appended)
    if soak and full_readback:      # the sample checked against every 10th record of the same topics
        full, full_in = read_all(bootstrap, t_out, decode, 10), read_all(bootstrap, t_in, decode_event_time, 10)
        out["full_readback"] = {**latency_summary(full.lat, full.sent, warmup_s), "latency_samples": len(full.lat),
                                "input_leg": latency_summary(full_in.lat, full_in.sent, warmup_s),
                                "readback_s": round(full.seconds + full_in.seconds, 1),
                                "readback_records": full.read + full_in.read}
    if soak and seen < total + 200:
        # the generator fell behind or the contender stopped early: not a steady soak, no growth figure
        out["soak_incomplete"] = f"{seen:,} of {total + 200:,} events scored"
    elif soak and rss.samples:
        first = [s for t, s in rss.samples if 30 <= t < 90]
        last = [s for t, s in rss.samples if t >= rss.samples[-1][0] - 60]
        out["rss_first_min_mb"] = round(float(np.median(first)), 1) if first else None
        out["rss_last_min_mb"] = round(float(np.median(last)), 1) if last else None
        if first and last:
            out["rss_growth"] = round(float(np.median(last)) / float(np.median(first)) - 1, 4)
    return out


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["passthrough_eps", "streamscore_eps_2proc", "streamscore_eps", "batched_eps", "naive_eps",
             "quix_eps", "faust_eps"]
    vals = [results.get(n) or 0 for n in names]
    fig, ax = plt.subplots(figsize=(8, 4))
    bars = ax.barh([n.replace("_eps", "") for n in names], vals,
                   color=["#999", "#2a7", "#2a7", "#47c", "#47c", "#47c", "#47c"])
    ax.bar_label(bars, labels=[f"{v:,.0f}" for v in vals], padding=3)
    ax.invert_yaxis()
    ax.set_xlabel("events/s (Avro in, Avro predictions out, acks=all)")
    ax.set_title(f"streamscore vs peers - {results['host']['cores']} cores, {results['host']['cpu'][:40]}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=2_000_000, help="pre-produced events (fast contenders use all)")
    ap.add_argument("--only", default=None, help="comma-separated contenders")
    ap.add_argument("--repeat", type=int, default=3, help="runs of passthrough, streamscore and batched (median)")
    ap.add_argument("--latency-seconds", type=float, default=20.0,
                    help="each latency run's loaded window (0 skips the latency runs)")
    ap.add_argument("--idle-seconds", type=float, default=5.0,
                    help="how long each latency contender sits idle after joining before its load starts")
    ap.add_argument("--soak-seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", 180)),
                    help="RSS soak at 50%% load (0 to skip)")
    ap.add_argument("--soak-full-readback", action="store_true",
                    help="also read every 10th record of the soak's topics, to check the sampled read-back")
    ap.add_argument("--http-clients", type=int, default=32, help="concurrent clients of the HTTP load phase")
    ap.add_argument("--http-seconds", type=float, default=20.0)
    ap.add_argument("--out", default=str(RESULTS / "latest.json"))
    a = ap.parse_args()

    from streamscore.dev.services import ensure_services
    from streamscore.produce import produce_events

    RESULTS.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="streamscore-bench-"))
    wanted_names = a.only.split(",") if a.only else None
    with_byo = wanted_names is None or "byo_schema" in wanted_names
    svc = ensure_services(work / "services", kafka_heap="1g", registry=with_byo)
    print(f"broker {svc.kafka_bootstrap} ({svc.source['kafka']}); work dir {work}", flush=True)
    started = time.monotonic()
    try:
        bootstrap = svc.kafka_bootstrap
        t_in = f"bench-in-{uuid.uuid4().hex[:6]}"
        create_topic(bootstrap, t_in)
        t0 = time.monotonic()
        produce_events({"bootstrap.servers": bootstrap}, t_in, a.events, seed=42)
        print(f"pre-produced {a.events:,} events in {time.monotonic() - t0:.1f}s", flush=True)
        byo: dict[str, Any] | None = None
        if with_byo:
            from bench import byo as byo_bench

            assert svc.schema_registry_url is not None
            byo = {"registry_url": svc.schema_registry_url, "models": byo_bench.model_registry(work),
                   "topic": f"bench-byo-{uuid.uuid4().hex[:6]}"}
            create_topic(bootstrap, byo["topic"])
            t0 = time.monotonic()
            byo_bench.produce(bootstrap, svc.schema_registry_url, byo["topic"], a.events)
            print(f"pre-produced {a.events:,} events in a nested registry schema in {time.monotonic() - t0:.1f}s",
                  flush=True)
        online_topic = None
        if wanted_names is None or "features_online" in wanted_names:
            from bench import online

            online_topic = f"bench-online-{uuid.uuid4().hex[:6]}"
            create_topic(bootstrap, online_topic)
            t0 = time.monotonic()
            online.produce(bootstrap, online_topic, a.events)
            online.load_redis(svc.redis_url)
            print(f"pre-produced {a.events:,} events over {online.KEYS:,} accounts, loaded their hashes into Redis "
                  f"in {time.monotonic() - t0:.1f}s", flush=True)
        counts = {"passthrough": a.events, "streamscore": a.events, "features": a.events, "byo_schema": a.events,
                  "features_online": a.events,
                  "backfill": a.events, "streamscore_2proc": a.events,
                  "batched": min(a.events, 300_000), "naive": min(a.events, 100_000),
                  "quix": min(a.events, 60_000), "faust": min(a.events, 30_000)}
        wanted = a.only.split(",") if a.only else [*counts, "http"]
        results: dict[str, Any] = {"host": host_info(), "events": a.events, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        runs: dict[str, Any] = {}
        phases: dict[str, float] = {"setup": time.monotonic() - started}   # where the bench's time went
        mark = time.monotonic()
        # the contenders the headline ratios are built from run `--repeat` times (interleaved, so a
        # slow spell of the machine hits all of them); the table shows each one's median
        repeated = [n for n in ("passthrough", "streamscore", "batched") if n in wanted]
        order = [n for _ in range(a.repeat) for n in repeated] + [n for n in wanted if n not in repeated and n in counts]
        for name in order:
            source = byo["topic"] if name == "byo_schema" and byo else online_topic if name == "features_online" else t_in
            r = run_throughput(name, bootstrap, source or t_in, counts[name], work, timeout=300,
                               byo={**(byo or {}), "redis_url": svc.redis_url})
            runs.setdefault(name, []).append(r)
            print(f"  {name:24} {r['eps']:>10,} events/s  ({r['outputs']:,} outputs, complete={r['complete']}, "
                  f"peak rss {r['rss_mb']} MB, {r['cpu_us_per_event']} us CPU/event)", flush=True)
        for name, rs in runs.items():
            key = "streamscore_eps_2proc" if name == "streamscore_2proc" else f"{name}_eps"
            done = [r["eps"] for r in rs if r["complete"]]
            results[key] = int(np.median(done)) if len(done) == len(rs) else None
            if len(rs) > 1:
                results[f"{key}_runs"] = [r["eps"] for r in rs]
        phases["throughput"], mark = time.monotonic() - mark, time.monotonic()
        if "http" in wanted:
            from bench.http_load import run_http_load

            results.update(run_http_load(work, clients=a.http_clients, seconds=a.http_seconds))
        results["model_only_eps"] = model_only_eps()
        print(f"  {'model_only_eps':24} {results['model_only_eps']:>10,} rows/s (batch 1024)", flush=True)
        phases["http_and_model_only"], mark = time.monotonic() - mark, time.monotonic()
        if results.get("streamscore_eps") and a.latency_seconds > 0:
            half = 0.5 * results["streamscore_eps"]
            rate = half
            # the latency matrix: each fixed load and 50% of streamscore_eps, passthrough first at
            # each (its latency at the same load is the floor the I/O path sets), each run after
            # an idle period, input-append -> output-append
            for load, tag in [*((float(r), str(r)) for r in LAT_RATES), (half, "50pct")]:
                for name in ("passthrough", "streamscore", "batched"):
                    if name not in wanted or (name == "batched" and tag != "50pct"):
                        continue
                    lat = run_latency(name, bootstrap, load, a.latency_seconds, work, idle_s=a.idle_seconds,
                                      append_step=max(1, round(load / 20_000)), event_time=tag == "50pct")
                    runs[f"latency_{name}_{tag}"] = lat
                    ap_ = lat["append"]
                    for q in ("p50", "p99", "max"):
                        results[f"lat_{tag}_{name}_{q}_ms"] = ap_[f"{q}_ms"]
                    results[f"lat_{tag}_{name}_first_second_p99_ms"] = ap_.get("first_second_p99_ms")
                    if tag == "50pct":
                        results["lat_50pct_rate"] = round(load)
                        results[f"{name}_p50_ms"] = lat["p50_ms"]
                        results[f"{name}_p99_ms"] = lat["p99_ms"]
                        results[f"{name}_p99_ms_after_warmup"] = lat.get("p99_ms_after_warmup")
                        if name == "streamscore":
                            results["streamscore_rss_mb"] = lat["rss_peak_mb"]
                            results["input_leg_p99_ms"] = lat["input_leg"]["p99_ms"]
                    print(f"  latency {name:11} at {load:,.0f}/s after {a.idle_seconds:.0f} s idle, input append -> "
                          f"output append: p50 {ap_['p50_ms']} / p99 {ap_['p99_ms']} / max {ap_['max_ms']} ms, "
                          f"first second p99 {ap_.get('first_second_p99_ms')} ms, p99 by second "
                          f"{ap_.get('p99_ms_by_second')} ({ap_['samples']:,} samples, {ap_['missing']} without output; "
                          f"{lat['scored']:,}/{lat['expected']:,} scored, peak rss {lat['rss_peak_mb']} MB)", flush=True)
            firsts = [results.get(f"lat_{t}_streamscore_first_second_p99_ms") for t in [*map(str, LAT_RATES), "50pct"]]
            if any(f is not None for f in firsts):
                results["first_second_p99_ms"] = max(f for f in firsts if f is not None)
            phases["latency_matrix"], mark = time.monotonic() - mark, time.monotonic()
            if a.soak_seconds > 0 and "streamscore" in wanted:
                soak = run_latency("streamscore", bootstrap, rate, a.soak_seconds, work, soak=True,
                                   full_readback=a.soak_full_readback)
                runs["soak"] = soak
                results["soak_rss_growth"] = soak.get("rss_growth")
                print(f"  soak {a.soak_seconds:.0f}s at {rate:,.0f}/s: rss {soak.get('rss_first_min_mb')} -> "
                      f"{soak.get('rss_last_min_mb')} MB (growth {soak.get('rss_growth')}), p99 {soak['p99_ms']} ms"
                      + (f"; INCOMPLETE: {soak['soak_incomplete']}" if "soak_incomplete" in soak else "")
                      + f"; read back {soak['readback_records']:,} sampled records in {soak['readback_s']} s", flush=True)
                full = soak.get("full_readback")
                if full:
                    print(f"  soak read-back check: sampled p50 / p99 {soak['p50_ms']} / {soak['p99_ms']} ms "
                          f"({soak['latency_samples']:,} records), every 10th {full['p50_ms']} / {full['p99_ms']} ms "
                          f"({full['latency_samples']:,}); input leg {soak['input_leg']['p99_ms']} vs "
                          f"{full['input_leg']['p99_ms']} ms p99; full read-back {full['readback_records']:,} records "
                          f"in {full['readback_s']} s", flush=True)
                if "soak_incomplete" in soak:
                    results["soak_incomplete"] = soak["soak_incomplete"]
        s, b, pt = results.get("streamscore_eps"), results.get("batched_eps"), results.get("passthrough_eps")
        if s and b:
            results["ratio_vs_batched"] = round(s / b, 2)
        if s and pt:
            results["ratio_vs_passthrough"] = round(s / pt, 2)
        if s and results.get("features_eps"):
            results["features_vs_streamscore"] = round(results["features_eps"] / s, 2)
        if s and results.get("features_online_eps"):
            results["features_online_vs_streamscore"] = round(results["features_online_eps"] / s, 2)
        if s and results.get("byo_schema_eps"):
            results["byo_schema_vs_streamscore"] = round(results["byo_schema_eps"] / s, 2)
        if s and results.get("backfill_eps"):
            results["backfill_vs_streamscore"] = round(results["backfill_eps"] / s, 2)
        phases["soak"] = time.monotonic() - mark if "latency_matrix" in phases else 0.0
        results["phase_seconds"] = {k: round(v, 1) for k, v in phases.items()}
        results["runs"] = runs
        Path(a.out).write_text(json.dumps(results, indent=2))
        try:
            chart(results, Path(a.out).with_suffix(".png"))
        except Exception as exc:  # noqa: BLE001 - the numbers matter more than the picture
            print(f"chart failed: {exc}")
        print("\n" + table(results))
        print(f"\nwrote {a.out}")
        return 0
    finally:
        svc.stop()
        # the broker's data (the soak alone writes ~8 GB) goes; the contenders' logs stay
        shutil.rmtree(work / "services", ignore_errors=True)


def table(r: dict[str, Any]) -> str:
    rows = ["passthrough_eps", "model_only_eps", "naive_eps", "batched_eps", "quix_eps", "faust_eps",
            "streamscore_eps", "features_eps", "features_vs_streamscore", "features_online_eps",
            "features_online_vs_streamscore", "byo_schema_eps", "byo_schema_vs_streamscore", "streamscore_eps_2proc", "streamscore_p50_ms", "streamscore_p99_ms",
            "streamscore_p99_ms_after_warmup", "passthrough_p50_ms", "passthrough_p99_ms", "input_leg_p99_ms",
            *(f"lat_{t}_{n}_{q}_ms" for t in [*map(str, LAT_RATES), "50pct"] for n in ("streamscore", "passthrough")
              for q in ("p50", "p99", "max")), "lat_50pct_rate", "first_second_p99_ms",
            "batched_p99_ms", "streamscore_rss_mb", "ratio_vs_batched", "ratio_vs_passthrough", "soak_rss_growth",
            "backfill_eps", "backfill_vs_streamscore", "http_rps", "http_p50_ms", "http_p99_ms", "http_peer_rps",
            "http_peer_p50_ms", "http_peer_p99_ms", "http_ratio_vs_peer", "http_cpu_us_per_req",
            "http_peer_cpu_us_per_req", "http_cpu_ratio_vs_peer"]
    lines = ["| metric | value |", "|---|---:|"]
    for k in rows:
        v = r.get(k)
        lines.append(f"| {k} | {v:,} |" if isinstance(v, (int, float)) else f"| {k} | {v} |")
    h = r["host"]
    lines.append(f"| host | {h['cores']} cores, {h['cpu']}, {h['mem_gib']} GiB |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
