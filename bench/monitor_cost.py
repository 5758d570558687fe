"""Bench: telemetry cost per batch, and the monitor's CPU while it keeps up with a flat-out scorer.

    python -m bench.monitor_cost telemetry            # µs per 2,000-row summarize
    python -m bench.monitor_cost monitor -s 60        # needs KAFKA_BOOTSTRAP and REDIS_URL
    python -m bench.monitor_cost truth -n 5000        # ground truth; its own Kafka + Redis unless those are set
    python -m bench.monitor_cost faust-floor -n 300000   # a Faust agent that does nothing: records per CPU-second

``monitor`` runs the monitor as a child process and publishes telemetry at ``--rate``
records/s (default 50: 100k events/s in 2,000-event batches, with a shadow model), event
time advancing as in real time; it reports the child's CPU (user + system, from
/proc) over the measured span and how far behind the monitor's heartbeat was.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import timeit
import uuid
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _scored_batch(n: int = 2000, seed: int = 1) -> tuple[Any, Any, Any, np.ndarray]:
    """A decoded demo Transaction batch (the scorer's columnar form), its builder inputs and scores."""
    import fastavro

    from models import DEMO_REGISTRY
    from models.demo_data import generate
    from models.registry import ModelRegistry
    from schemas.columnar import BatchDecoder
    from schemas.registry import SchemaRegistry
    from schemas.wire import frame

    reg = ModelRegistry(DEMO_REGISTRY)
    entry = reg.get("fraud-mlp")
    sr = SchemaRegistry.default()
    schema = sr.schema("transaction")
    cols = generate(n, seed=seed)
    values = []
    for row in zip(*[c.tolist() for c in cols.values()]):
        out = io.BytesIO()
        fastavro.schemaless_writer(out, schema, dict(zip(cols, row)))
        values.append(frame(sr.id_for("transaction"), out.getvalue()))
    batch = BatchDecoder(schema, sr).decode(values)
    scores = reg.load(entry).predict(entry.input_spec.assemble(batch.columns))  # type: ignore[arg-type]
    return entry, batch, cols, scores


def bench_telemetry(repeat: int = 7, number: int = 300) -> dict[str, float]:
    from monitoring.telemetry import TelemetryBuilder

    entry, batch, _cols, scores = _scored_batch()
    shadow = scores.copy()
    shadow[::14] = 1.0 - shadow[::14]
    et = batch.columns["event_time"]
    out: dict[str, float] = {}
    for label, sample in (("sampled_512", 512), ("all_rows", None)):
        tb = TelemetryBuilder(pipeline="bench", model=entry.name, version=entry.version,
                              reference_profile=entry.reference_profile, feature_names=list(entry.input_spec.names),
                              threshold=entry.decision_threshold, sample=sample)
        runs: tuple[tuple[str, dict[str, Any]], ...] = (("", {}), ("+shadow", {"shadow_scores": shadow}))
        for tag, kw in runs:
            fn = lambda: tb.summarize(batch.columns, scores, event_time_ms=et, symbols=batch.symbols, **kw)  # noqa: E731
            out[f"summarize_{label}{tag}_us"] = min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6
        summary = tb.summarize(batch.columns, scores, event_time_ms=et, symbols=batch.symbols, shadow_scores=shadow)
        out[f"encode_{label}_us"] = min(timeit.repeat(lambda: tb.encode(summary), number=number, repeat=repeat)) / number * 1e6
    return out


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_monitor(seconds: float, rate: float, window_ms: int, warmup: float = 10.0) -> dict[str, Any]:
    from confluent_kafka import Producer

    from monitoring.redis_state import Keys, connect
    from monitoring.telemetry import TelemetryBuilder, encode_telemetry

    bootstrap, redis_url = os.environ["KAFKA_BOOTSTRAP"], os.environ["REDIS_URL"]
    run = uuid.uuid4().hex[:8]
    topic, prefix = f"bench-telemetry-{run}", f"bench-{run}"
    entry, batch, _cols, scores = _scored_batch()
    tb = TelemetryBuilder(pipeline="bench", model=entry.name, version=entry.version,
                          reference_profile=entry.reference_profile, feature_names=list(entry.input_spec.names),
                          threshold=entry.decision_threshold)
    shadow = scores.copy()
    shadow[::14] = 1.0 - shadow[::14]
    base = tb.summarize(batch.columns, scores, symbols=batch.symbols, shadow_scores=shadow, shadow_model="shadow")
    cfg = {"broker": bootstrap, "telemetry_topic": topic, "redis_url": redis_url, "redis_prefix": prefix,
           "app_id": f"bench-monitor-{run}", "window_ms": window_ms}
    tmp = Path(tempfile.mkdtemp(prefix="bench-monitor-"))
    (tmp / "c.json").write_text(json.dumps(cfg))
    log = open(tmp / "monitor.log", "ab")
    child = subprocess.Popen([sys.executable, "-m", "monitoring.monitor_app", "-c", str(tmp / "c.json")],
                             cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    r, keys = connect(redis_url), Keys(prefix)
    sent, t0 = 0, time.time()
    mark: tuple[float, float, int] | None = None
    lag: list[float] = []
    try:
        while time.time() - t0 < warmup + seconds:
            due = int((time.time() - t0) * rate)
            while sent < due:
                rec = {**base, "batch_id": f"{run}-{sent}", "window_ts": int(t0 * 1000 + sent * 1000 / rate),
                       "created_at": int(time.time() * 1000)}
                producer.produce(topic, encode_telemetry(rec), key=tb.key())
                sent += 1
            producer.poll(0)
            if mark is None and time.time() - t0 >= warmup and r.get(keys.heartbeat):
                mark = (time.time(), _cpu_seconds(child.pid), sent)
            if mark is not None:
                beat = r.get(keys.heartbeat)
                if beat:
                    lag.append(time.time() - int(beat) / 1000)
            if child.poll() is not None:
                raise RuntimeError(f"monitor exited; see {tmp / 'monitor.log'}")
            time.sleep(0.05)
        producer.flush(10)
        if mark is None:
            raise RuntimeError(f"monitor never processed telemetry; see {tmp / 'monitor.log'}")
        wall, cpu = time.time() - mark[0], _cpu_seconds(child.pid) - mark[1]
        windows = r.hlen(keys.windows)
    finally:
        child.terminate()
        child.wait(30)
        log.close()
    return {"seconds": round(wall, 1), "records": sent - mark[2], "rate_per_s": round((sent - mark[2]) / wall, 1),
            "cpu_percent_of_one_core": round(100 * cpu / wall, 1), "windows_closed": windows,
            "heartbeat_age_p50_s": round(float(np.median(lag)), 3) if lag else None,
            "heartbeat_age_max_s": round(float(np.max(lag)), 3) if lag else None}


def _services() -> tuple[str, str, Any]:
    """KAFKA_BOOTSTRAP and REDIS_URL if set, else a Kafka and Redis of our own (stopped by the caller)."""
    if os.environ.get("KAFKA_BOOTSTRAP") and os.environ.get("REDIS_URL"):
        return os.environ["KAFKA_BOOTSTRAP"], os.environ["REDIS_URL"], None
    from streamscore.dev.services import ensure_services

    svc = ensure_services(Path(tempfile.mkdtemp(prefix="bench-truth-")))
    return svc.kafka_bootstrap, svc.redis_url, svc


def bench_truth(events: int, partitions: int, window_ms: int, lateness_ms: int, batch: int | None = None
                ) -> dict[str, Any]:
    """The ground-truth side stream catching up a backlog: ``events`` predictions, every one labelled
    (JSON, keyed by account, labels ``span`` = 10 windows of label time), pre-produced; the monitor
    (a child process) joins and scores them.
    Measured from its first committed label to the last: records/s (predictions + labels) and the
    child's CPU (user + system) as a share of one core; then the same until the quality stage has
    committed every row operation (``*_with_quality``)."""
    from confluent_kafka import Producer

    from confluent_kafka import Consumer, KafkaException, TopicPartition

    from consumers.kafka_client import ensure_topics

    bootstrap, redis_url, svc = _services()
    run = uuid.uuid4().hex[:8]
    preds, labels, app_id = f"bench-preds-{run}", f"bench-labels-{run}", f"bench-truth-{run}"
    try:
        ensure_topics({"bootstrap.servers": bootstrap}, {preds: partitions, labels: partitions})
        rng = np.random.default_rng(1)
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        span = 10 * window_ms
        y = rng.random(events) < 0.3
        score = np.clip(rng.normal(np.where(y, 0.65, 0.35), 0.2), 0, 1)
        for i in range(events):
            key = f"acct-{i % 997}".encode()
            producer.produce(preds, json.dumps({"event_id": f"e{i}", "model": "fraud-mlp", "version": "1",
                                                "variant": "primary", "score": float(score[i]),
                                                "decision": bool(score[i] >= 0.5), "event_time": i}), key=key)
            producer.produce(labels, json.dumps({"event_id": f"e{i}", "label": bool(y[i]),
                                                 "label_time": i * span // events}), key=key)
            if i % 10_000 == 0:
                producer.poll(0)
        assert producer.flush(60) == 0
        cfg = {"broker": bootstrap, "telemetry_topic": f"bench-tele-{run}", "redis_url": redis_url,
               "redis_prefix": f"bench-{run}", "app_id": app_id, "commit_interval_s": 1.0,
               "ground_truth": [{"name": "bench", "predictions": [preds], "labels": {"topic": labels},
                                 "window_ms": window_ms, "lateness_ms": lateness_ms, "auc_drop": None,
                                 **({} if batch is None else {"batch": batch})}]}
        tmp = Path(tempfile.mkdtemp(prefix="bench-truth-"))
        (tmp / "c.json").write_text(json.dumps(cfg))
        log = open(tmp / "monitor.log", "ab")
        child = subprocess.Popen([sys.executable, "-m", "monitoring.monitor_app", "-c", str(tmp / "c.json")],
                                 cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        mark: tuple[float, float, int] | None = None
        done = 0
        group = Consumer({"bootstrap.servers": bootstrap, "group.id": app_id})
        tps = [TopicPartition(t, p) for t in (preds, labels) for p in range(partitions)]

        def committed(parts: list[Any]) -> list[int]:
            """The group's committed offsets (-1: none yet) once the coordinator answers."""
            for _ in range(60):
                try:
                    return [tp.offset for tp in group.committed(parts, timeout=10)]
                except KafkaException:      # the group's coordinator moving while the monitor joins
                    time.sleep(0.5)
            raise RuntimeError("no committed offsets from the group's coordinator")
        try:
            while done < 2 * events:
                if child.poll() is not None:
                    raise RuntimeError(f"monitor exited; see {tmp / 'monitor.log'}")
                done = sum(max(o, 0) for o in committed(tps))
                if mark is None and done > 0:
                    mark = (time.time(), _cpu_seconds(child.pid), done)
                time.sleep(0.5)
            assert mark is not None
            wall, cpu = time.time() - mark[0], _cpu_seconds(child.pid) - mark[1]
            # then the quality stage: until it has committed every row operation the join sent
            rows = [TopicPartition(f"{app_id}-truth-bench-rows", p) for p in range(partitions)]
            while True:
                if child.poll() is not None:
                    raise RuntimeError(f"monitor exited; see {tmp / 'monitor.log'}")
                ends = [group.get_watermark_offsets(tp, timeout=10)[1] for tp in rows]
                if [max(o, 0) for o in committed(rows)] == ends:
                    break
                time.sleep(0.5)
            wall_all, cpu_all = time.time() - mark[0], _cpu_seconds(child.pid) - mark[1]
            from monitoring.redis_state import Keys, connect

            counts = [json.loads(v) for v in connect(redis_url).hvals(Keys(f"bench-{run}").labels("bench"))]
            joined, late = (sum(c[k] for c in counts) for k in ("joined", "late"))   # as of the last window step
        finally:
            group.close()
            child.terminate()
            child.wait(30)
            log.close()
    finally:
        if svc is not None:
            svc.stop()
    return {"events": events, "records": 2 * events, "measured_records": done - mark[2], "seconds": round(wall, 1),
            "records_per_s": round((done - mark[2]) / wall, 1), "cpu_percent_of_one_core": round(100 * cpu / wall, 1),
            "joined": joined, "late": late, "row_operations": sum(ends), "quality_done_s": round(wall_all, 1),
            "records_per_s_with_quality": round((done - mark[2]) / wall_all, 1),
            "cpu_percent_with_quality": round(100 * cpu_all / wall_all, 1), "batch": batch,
            "load_average_1m": os.getloadavg()[0]}


def bench_faust_floor(records: int, partitions: int) -> dict[str, Any]:
    """A no-op Faust agent (``bench/peers/faust_noop.py``, a child process) reading ``records`` pre-produced
    150-byte records: records per second of wall time and per CPU-second, from its first batch to its
    last. No Faust stage can do better than this per core, whatever it does with the records."""
    from confluent_kafka import Producer

    from consumers.kafka_client import ensure_topics

    bootstrap, _, svc = _services()
    run = uuid.uuid4().hex[:8]
    topic = f"bench-faust-floor-{run}"
    try:
        ensure_topics({"bootstrap.servers": bootstrap}, {topic: partitions})
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10000,
                             "queue.buffering.max.messages": 2_000_000})
        value = bytes(range(150))
        for i in range(records):
            producer.produce(topic, value, f"acct-{i % 997}".encode(), partition=i % partitions)
            if i % 100_000 == 0:
                producer.poll(0)
        assert producer.flush(60) == 0
        out = subprocess.run([sys.executable, "-m", "bench.peers.faust_noop", "--bootstrap", bootstrap, "--input", topic,
                              "--output", topic, "--group", f"floor-{run}", "--count", str(records), "--seconds", "600"],
                             cwd=ROOT, capture_output=True, text=True, timeout=660)
        # Faust's worker logs what its agents print: the line may arrive on stderr, behind a log prefix
        lines = [ln[ln.index('{"records"'):] for ln in (out.stdout + out.stderr).splitlines() if '{"records"' in ln]
        if out.returncode != 0 or not lines:
            raise RuntimeError(f"the no-op agent exited {out.returncode}: {out.stderr.strip()[-2000:]}")
        got = json.loads(lines[-1])
    finally:
        if svc is not None:
            svc.stop()
    return {"records": got["records"], "partitions": partitions, "seconds": round(got["seconds"], 2),
            "cpu_seconds": round(got["cpu_seconds"], 2), "records_per_s": round(got["records"] / got["seconds"]),
            "records_per_cpu_second": round(got["records"] / got["cpu_seconds"]), "load_average_1m": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.monitor_cost")
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("telemetry")
    mon = sub.add_parser("monitor")
    mon.add_argument("-s", "--seconds", type=float, default=60.0)
    mon.add_argument("--rate", type=float, default=50.0, help="telemetry records per second")
    mon.add_argument("--window-ms", type=int, default=10_000)
    truth = sub.add_parser("truth", help="ground truth: the join + quality catching up a labelled backlog")
    truth.add_argument("-n", "--events", type=int, default=5_000)
    truth.add_argument("--partitions", type=int, default=2)
    truth.add_argument("--window-ms", type=int, default=60_000)
    truth.add_argument("--lateness-ms", type=int, default=None,
                       help="default: the labels' span plus a window, so none is late and the work is the same "
                       "each run (catching up a backlog, labels run ahead of their predictions by a varying span)")
    truth.add_argument("--batch", type=int, default=None, help="the entry's batch (default: the config's default)")
    floor = sub.add_parser("faust-floor", help="a Faust agent that does nothing with its records: the floor")
    floor.add_argument("-n", "--records", type=int, default=300_000)
    floor.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args(argv)
    if args.what == "faust-floor":
        result = bench_faust_floor(args.records, args.partitions)
    elif args.what == "truth":
        lateness = 11 * args.window_ms if args.lateness_ms is None else args.lateness_ms
        result = bench_truth(args.events, args.partitions, args.window_ms, lateness, args.batch)
    else:
        result = bench_telemetry() if args.what == "telemetry" else bench_monitor(args.seconds, args.rate, args.window_ms)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
