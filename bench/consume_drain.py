"""Drain rate of the consume side: Consumer.consume vs the native drain (consumers/native_consume.py).

One process, one pre-filled topic of small records. Each round joins a fresh group, takes the
first batch (the join), lets librdkafka prefetch for ``--prefetch-s``, then times draining the
rest in batches of ``--batch`` into what the scorer's decode step reads (wall time, and the
calling thread's CPU time: on a busy machine the second is the steadier figure): for the plain path the
Message list plus the values / partitions / offsets / keys it extracts (as decode_work does),
for the native path the RawBatch compacted plus its key list. Rounds alternate plain / native.

    python bench/consume_drain.py [--bootstrap HOST:PORT] [--records 500000] [--rounds 2]

Without ``--bootstrap`` a local broker is started (streamscore.dev, as the integration tests do).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import Consumer, Message, Producer

from consumers.kafka_client import CONSUMER_DEFAULTS, ensure_topics
from consumers.native_consume import NativeDrain
from consumers.raw_batch import RawBatch


def fill(bootstrap: str, topic: str, n: int, partitions: int) -> None:
    ensure_topics({"bootstrap.servers": bootstrap}, {topic: partitions})
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10000,
                  "queue.buffering.max.messages": 1000000})
    rng = np.random.default_rng(1)
    body = rng.integers(0, 256, (n, 40), dtype=np.uint8)
    for i in range(n):
        p.produce(topic, value=body[i].tobytes(), key=b"acct%04d" % (i % 10000))
        if i % 10000 == 0:
            p.poll(0)
    if p.flush(120) != 0:
        raise SystemExit("could not write the records")


def _consumer(bootstrap: str) -> Consumer:
    return Consumer({**CONSUMER_DEFAULTS, "bootstrap.servers": bootstrap, "group.id": f"drain-{uuid.uuid4().hex[:8]}",
                     "enable.auto.commit": False})


def _extract_plain(msgs: list[Message]) -> int:
    n = len(msgs)
    np.fromiter(map(Message.partition, msgs), np.int32, n)
    np.fromiter(map(Message.offset, msgs), np.int64, n)
    b"".join(map(Message.value, msgs))
    list(map(Message.key, msgs))
    return n


def _extract_native(raw: RawBatch) -> int:
    raw = raw.compact()
    raw.key_column()
    return len(raw)


def run_round(bootstrap: str, topic: str, n: int, batch: int, prefetch_s: float, native: bool) -> dict[str, Any]:
    c = _consumer(bootstrap)
    c.subscribe([topic])
    drain = NativeDrain.attach(c) if native else None
    if native and drain is None:
        raise SystemExit("the native route was refused here")

    def take() -> int:
        if drain is not None:
            return _extract_native(drain.consume(batch, 0.5))
        return _extract_plain(c.consume(batch, 0.5))

    try:
        got = 0
        deadline = time.monotonic() + 60
        while got == 0 and time.monotonic() < deadline:
            got = take()
        time.sleep(prefetch_s)
        t0, c0, timed = time.perf_counter(), time.thread_time(), 0
        while got + timed < n:
            k = take()
            if k == 0 and time.perf_counter() - t0 > 120:
                break
            timed += k
        dt, cpu = time.perf_counter() - t0, time.thread_time() - c0
    finally:
        if drain is not None:
            drain.close()
        c.close()
    return {"path": "native" if native else "plain", "timed_records": timed, "seconds": round(dt, 3),
            "records_per_s": round(timed / dt), "thread_cpu_s": round(cpu, 3),
            "records_per_cpu_s": round(timed / max(cpu, 1e-9)), "ns_per_record": round(cpu / max(timed, 1) * 1e9)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap")
    ap.add_argument("--records", type=int, default=500_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--prefetch-s", type=float, default=8.0)
    args = ap.parse_args()
    svc = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        from streamscore.dev.services import ensure_services

        svc = ensure_services(Path(tempfile.mkdtemp(prefix="streamscore-drain-")))
        bootstrap = svc.kafka_bootstrap
    try:
        topic = f"drain-{uuid.uuid4().hex[:8]}"
        fill(bootstrap, topic, args.records, args.partitions)
        for _ in range(args.rounds):
            for native in (False, True):
                print(json.dumps(run_round(bootstrap, topic, args.records, args.batch, args.prefetch_s, native)),
                      flush=True)
    finally:
        if svc is not None:
            svc.stop()


if __name__ == "__main__":
    main()
