"""``streamscore demo``: services, topics, scorer, producer and a live summary, all bounded.

Everything it starts it stops again, on success, on error and on Ctrl-C.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np


def _percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def run_demo(*, seconds: float = 30.0, rate: float = 20000.0, partitions: int = 4, keep: bool = False) -> int:
    """``keep``: leave the broker's and Redis's data directory (tens of MB) behind for a look afterwards."""
    from consumers.kafka_client import ensure_topics
    from streamscore.app import build_scorer
    from streamscore.config import parse_config
    from streamscore.dev.services import ensure_services, services_status

    status = services_status()
    owned = None
    home: Path | None = None
    run = uuid.uuid4().hex[:8]
    topic_in, topic_out = f"demo-transactions-{run}", f"demo-predictions-{run}"
    try:
        if status.get("running"):
            bootstrap, redis_url = status["kafka_bootstrap"], status["redis_url"]
            print(f"using running dev services: Kafka {bootstrap}, Redis {redis_url}")
        else:
            home = Path(tempfile.mkdtemp(prefix="streamscore-demo-"))
            print(f"starting Kafka and Redis under {home} ...", flush=True)
            owned = ensure_services(home)
            bootstrap, redis_url = owned.kafka_bootstrap, owned.redis_url
            print(f"  Kafka {bootstrap} ({owned.source['kafka']}), Redis {redis_url} ({owned.source['redis']})")
        conf = {"bootstrap.servers": bootstrap}
        ensure_topics(conf, {topic_in: partitions, topic_out: partitions, f"{topic_in}.dlq": partitions})
        cfg = parse_config({
            "kafka": {"bootstrap_servers": bootstrap},
            "group_id": f"demo-{run}",
            "pipelines": [{"name": "fraud", "input": {"topic": topic_in},
                           "model": {"name": "fraud-mlp"}, "output": {"topic": topic_out}}],
        }, env={})
        scorer = build_scorer(cfg)
        total = int(rate * seconds)
        scorer_err: list[BaseException] = []

        def scoring() -> None:
            try:
                scorer.run()
            except BaseException as exc:  # noqa: BLE001
                scorer_err.append(exc)

        st = threading.Thread(target=scoring, daemon=True)
        st.start()
        if not scorer.assigned.wait(60):
            raise RuntimeError("the scorer was not assigned partitions within 60 s")
        # The producer is a separate process, as a real one would be (and so it has its own GIL).
        producer = subprocess.Popen(
            [sys.executable, "-m", "streamscore", "produce", "--topic", topic_in, "-n", str(total),
             "--rate", str(rate), "--seed", "1", "--bootstrap", bootstrap],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"\nscoring {total:,} events at {rate:,.0f}/s over {partitions} partitions "
              f"(model fraud-mlp, at-least-once); Ctrl-C stops early\n")
        print(f"{'t(s)':>5} {'in/s':>9} {'out/s':>9} {'batches':>8} {'avg batch':>9} {'p50 ms':>7} {'p99 ms':>7} {'scored':>10} {'dead':>5}")
        all_lat: list[float] = []
        t0 = last_t = time.monotonic()
        last_in = last_out = 0
        try:
            while True:
                time.sleep(2.0)
                s = scorer.stats
                now = time.monotonic()
                lat = scorer.take_latencies()
                all_lat.extend(lat)
                dt = now - last_t
                avg = s.produced / s.batches if s.batches else 0
                print(f"{now - t0:5.0f} {(s.consumed - last_in) / dt:9,.0f} {(s.produced - last_out) / dt:9,.0f} "
                      f"{s.batches:8,} {avg:9.0f} {_percentile(lat, 50):7.1f} {_percentile(lat, 99):7.1f} "
                      f"{s.produced:10,} {s.dead:5}", flush=True)
                last_t, last_in, last_out = now, s.consumed, s.produced
                done = producer.poll() is not None and s.produced + s.dead >= total
                if done or scorer_err or now - t0 > seconds + 30:
                    break
        except KeyboardInterrupt:
            print("\ninterrupted: stopping")
        if producer.poll() is None:
            producer.terminate()
        producer.wait(30)
        scorer.stop()
        st.join(120)
        s = scorer.stats
        elapsed = time.monotonic() - t0
        print("\nsummary")
        print(f"  events produced   {s.consumed:,} consumed of {total:,} offered (producer exit {producer.returncode})")
        print(f"  predictions       {s.produced:,}   dead letters {s.dead}")
        print(f"  batches           {s.batches:,}   mean size {s.produced / max(1, s.batches):.0f}   "
              f"closed by {scorer.batcher.stats.closed_by}")
        print(f"  throughput        {s.produced / elapsed:,.0f} events/s over {elapsed:.1f}s (offered {rate:,.0f}/s)")
        print(f"  e2e latency       p50 {_percentile(all_lat, 50):.1f} ms   p99 {_percentile(all_lat, 99):.1f} ms   "
              f"(event_time -> scored_at, {len(all_lat):,} samples)")
        print(f"  committed         {sum(s.committed.values()) if s.committed else 0:,} offsets over {len(s.committed)} partitions")
        if producer.returncode not in (0, -15) or scorer_err:
            print(f"  errors            producer exit={producer.returncode} scorer={scorer_err[:1]}")
            return 1
        return 0
    finally:
        if owned is not None:
            owned.stop()
            print("stopped Kafka and Redis")
        if home is not None:
            if keep:
                print(f"kept their data in {home}")
            else:
                shutil.rmtree(home, ignore_errors=True)
