"""Per-key streaming aggregates through a real broker: events keyed by account, six aggregates
(every op, windows 10m / 1h / 24h) as model features written with ``include_features``; the
scorer SIGKILLed twice mid-stream, then a rebalance to two processes. Every value written equals
a numpy computation over the same events in the same order within each partition: each event
once under exactly-once (read_committed), and every re-emission identical under at-least-once.

Size: ``STREAMSCORE_AGG_EVENTS`` events (default 40,000; the issue's figure is 200,000) over
1,000 accounts.
"""

from __future__ import annotations

import collections
import io
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

import fastavro
import numpy as np
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, ConfigResource

from models.base import InputSpec
from models.demo_data import generate
from models.registry import ModelRegistry
from models.testing import write_linear_onnx
from schemas.output import output_schema
from schemas.prediction import prediction_fields
from streamscore.contract import FEATURES_FIELD
from streamscore.produce import encode_transactions
from tests.integration.helpers import (ScorerProcess, committed, decode_transaction, read_all, wait_for,
                                       write_config)

pytestmark = pytest.mark.integration

N = int(os.environ.get("STREAMSCORE_AGG_EVENTS", "40000"))
ACCOUNTS = 1000
PARTS = 4
SPAN_MS = 3 * 3_600_000                 # record times spread over three hours
AGGS = [{"name": "n_10m", "key": "account_id", "op": "count", "window": "10m"},
        {"name": "amt_sum_1h", "key": "account_id", "op": "sum", "field": "amount", "window": "1h"},
        {"name": "amt_mean_10m", "key": "account_id", "op": "mean", "field": "amount", "window": "10m"},
        {"name": "amt_min_1h", "key": "account_id", "op": "min", "field": "amount", "window": "1h"},
        {"name": "amt_max_24h", "key": "account_id", "op": "max", "field": "amount", "window": "24h"},
        {"name": "countries_24h", "key": "account_id", "op": "distinct_count", "field": "country", "window": "24h"}]
WINDOW = {"10m": 600_000, "1h": 3_600_000, "24h": 86_400_000}


def _events() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The demo events with 1,000 accounts and Kafka timestamps (a little out of order)."""
    cols = generate(N, seed=31)
    rng = np.random.default_rng(31)
    cols["account_id"] = np.array([f"acct-{a:04d}" for a in rng.integers(0, ACCOUNTS, N)], dtype=object)
    base = int(time.time() * 1000) - SPAN_MS - 3_600_000
    ts = base + (np.arange(N) * SPAN_MS) // N + rng.integers(-3000, 3000, N)
    return cols, ts.astype(np.int64)


def _produce(bootstrap: str, topic: str, cols: dict[str, np.ndarray], ts: np.ndarray, seconds: float) -> None:
    """Keyed by account (one account lives in one partition), spread over ``seconds``."""
    values = encode_transactions(cols, N)
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True})
    start = time.monotonic()
    chunk = max(1, N // 200)
    for i in range(0, N, chunk):
        for j in range(i, min(N, i + chunk)):
            p.produce(topic, values[j], cols["account_id"][j].encode(), timestamp=int(ts[j]))
        p.poll(0)
        lag = start + seconds * (i + chunk) / N - time.monotonic()
        if lag > 0:
            time.sleep(lag)
    assert p.flush(60) == 0


def _reference(inputs: list[Any]) -> dict[str, dict[str, float]]:
    """event_id -> aggregate -> value, from the input topic as the broker holds it (partition, offset, timestamp)."""
    rows = collections.defaultdict(list)
    for m in inputs:
        rec = decode_transaction(m.value())
        rows[(m.partition(), rec["account_id"])].append((m.offset(), m.timestamp()[1], rec["amount"],
                                                         rec["country"], rec["event_id"]))
    out: dict[str, dict[str, float]] = {}
    for evs in rows.values():
        evs.sort()
        o = np.array([e[0] for e in evs])
        t = np.array([e[1] for e in evs])
        amt = np.array([e[2] for e in evs], np.float64)
        _, country = np.unique(np.array([e[3] for e in evs], dtype=object).astype(str), return_inverse=True)
        onehot = np.eye(country.max() + 1)[country.reshape(-1)]
        before = o[None, :] <= o[:, None]
        vals: dict[str, np.ndarray] = {}
        for a in AGGS:
            w = WINDOW[a["window"]]
            m = before & (t[None, :] > t[:, None] - w) & (t[None, :] <= t[:, None])
            op = a["op"]
            if op == "count":
                vals[a["name"]] = m.sum(1)
            elif op == "sum":
                vals[a["name"]] = m @ amt
            elif op == "mean":
                vals[a["name"]] = (m @ amt) / m.sum(1)
            elif op == "min":
                vals[a["name"]] = np.where(m, amt[None, :], np.inf).min(1)
            elif op == "max":
                vals[a["name"]] = np.where(m, amt[None, :], -np.inf).max(1)
            else:
                vals[a["name"]] = ((m.astype(np.float64) @ onehot) > 0).sum(1)
        for i, e in enumerate(evs):
            out[e[4]] = {name: float(v[i]) for name, v in vals.items()}
    return out


def _committed(bootstrap: str, group: str, topic: str) -> int:
    return sum(max(0, o) for o in committed(bootstrap, group, topic, PARTS).values())


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("mode", ["exactly_once", "at_least_once"])
def test_aggregates_equal_the_definition_across_kills_and_a_rebalance(mode: str, tmp_path: Path, bootstrap: str,
                                                                     names: Callable[[str], str],
                                                                     topics: Callable[..., None]) -> None:
    t_in, t_out, group = names("t-agg"), names("t-agg-out"), names("g-agg")
    topics({t_in: PARTS, t_out: PARTS, f"{t_in}.dlq": PARTS})
    w = np.array([0.01, 0.0001, 0.001, 0.001, 0.0005, 0.1], np.float32)
    model = write_linear_onnx(tmp_path / "m.onnx", w)
    features = [{"name": a["name"]} for a in AGGS]
    ModelRegistry(tmp_path / "registry").register("agg", model, format="onnx",
                                                  input_spec=InputSpec.from_dict({"features": features}),
                                                  output_spec={}, stage="production")
    pipeline = {"name": "agg", "input": {"topic": t_in}, "model": {"name": "agg"},
                "output": {"topic": t_out, "include_features": True}, "telemetry": {"enabled": False},
                "batching": {"max_size": 2000}, "aggregates": AGGS}
    cfg = write_config(tmp_path / "p.yaml", bootstrap, group, [pipeline], registry=str(tmp_path / "registry"),
                       delivery=mode, commit_interval_ms=200)
    cols, ts = _events()
    producer = threading.Thread(target=_produce, args=(bootstrap, t_in, cols, ts, max(60.0, N / 1000)))
    t0 = time.monotonic()
    producer.start()
    logs = []
    for round_ in range(2):                              # SIGKILLed twice while events arrive
        logs.append(tmp_path / f"s{round_}.log")
        proc = ScorerProcess(cfg, logs[-1], "--instance", "slot-0")
        try:
            before = _committed(bootstrap, group, t_in)
            wait_for(lambda: _committed(bootstrap, group, t_in) > before + N // 10 or proc.proc.poll() is not None,
                     300, "batches committing")
            assert proc.proc.poll() is None, proc.output()[-3000:]
            proc.kill()
        finally:
            proc.close()
    a = ScorerProcess(cfg, tmp_path / "a.log", "--instance", "slot-0")
    b = None
    try:
        before = _committed(bootstrap, group, t_in)
        wait_for(lambda: _committed(bootstrap, group, t_in) > before + N // 20 or a.proc.poll() is not None, 300,
                 "the third scorer committing")
        b = ScorerProcess(cfg, tmp_path / "b.log", "--instance", "slot-1")   # joins: a rebalance to two processes
        producer.join(600)
        isolation = "read_committed" if mode == "exactly_once" else "read_uncommitted"
        seen: set[str] = set()
        read = [0]

        def complete(xs: list[Any]) -> bool:
            seen.update(_event_id(m) for m in xs[read[0]:])
            read[0] = len(xs)
            return len(seen) >= N

        out = read_all(bootstrap, t_out, expect=complete, timeout=900, isolation=isolation, alive=a)
        wait_for(lambda: _committed(bootstrap, group, t_in) == N, 120, "every offset committed")
        out = read_all(bootstrap, t_out, expect=len(out), timeout=120, isolation=isolation, idle=3.0)
        assert b.proc.poll() is None, b.output()[-3000:]
        assert a.terminate() == 0, a.output()[-3000:]
        assert b.terminate() == 0, b.output()[-3000:]
    finally:
        a.close()
        if b is not None:
            b.close()
    took = time.monotonic() - t0
    both = a.output() + b.output()
    assert "restored from" in both and "assigned" in b.output(), "the joining process restored state"
    assert _consumed(b.output()) > 0, "the joining process scored part of the stream"
    inputs = read_all(bootstrap, t_in, expect=N, timeout=120)
    want = _reference(inputs)
    schema = fastavro.parse_schema(output_schema([*prediction_fields(), FEATURES_FIELD], []))
    recs = [fastavro.schemaless_reader(io.BytesIO(m.value()[5:]), schema) for m in out]
    counts = collections.Counter(r["event_id"] for r in recs)
    assert set(counts) == set(want), "every event scored"
    if mode == "exactly_once":
        assert max(counts.values()) == 1, f"{sum(c > 1 for c in counts.values())} events committed twice"
    bad = []
    for r in recs:
        exp = want[r["event_id"]]
        got = r["features"]
        for name, v in exp.items():
            if not np.isclose(got[name], v, rtol=1e-6, atol=1e-9):
                bad.append((r["event_id"], name, got[name], v))
    assert not bad, f"{len(bad)} aggregate values differ, e.g. {bad[:5]}"
    dup = sum(c - 1 for c in counts.values())
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = f"{group}-agg-aggregates-changelog"
    assert len(admin.list_topics(topic, timeout=10).topics[topic].partitions) == PARTS
    conf = next(iter(admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)]).values())).result()
    assert conf["cleanup.policy"].value == "compact"
    print(f"\n{mode}: {N} events, {len(recs)} predictions ({dup} re-emitted), {took:.0f}s")


def _consumed(output: str) -> int:
    """Events a scorer consumed, from the summary line it prints when it stops."""
    import json

    lines = [ln for ln in output.splitlines() if ln.startswith('{"consumed"')]
    return int(json.loads(lines[-1])["consumed"]) if lines else 0


def _event_id(m: Any) -> str:
    return str(_SCHEMA_READER(m.value())["event_id"])


def _reader() -> Callable[[bytes], dict[str, Any]]:
    schema = fastavro.parse_schema(output_schema([*prediction_fields(), FEATURES_FIELD], []))
    return lambda v: fastavro.schemaless_reader(io.BytesIO(v[5:]), schema)  # type: ignore[return-value]


_SCHEMA_READER = _reader()
