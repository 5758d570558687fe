"""Online feature lookups through a real broker and a real Redis: per-account features loaded into
Redis hashes, joined per batch, scored by an ONNX model; the predictions (with
``include_features``) equal onnxruntime run offline on the joined rows, and a Redis SIGKILLed
mid-stream and restarted loses nothing and dead-letters nothing."""

from __future__ import annotations

import collections
import io
import time
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pytest

from models.base import InputSpec
from models.demo_data import generate
from models.registry import ModelRegistry
from models.testing import write_linear_onnx
from schemas.output import output_schema
from schemas.prediction import prediction_fields
from streamscore.contract import FEATURES_FIELD
from streamscore.dev.redis import start_redis
from streamscore.produce import produce_events
from tests.integration.helpers import ScorerProcess, committed, read_all, wait_for, write_config

pytestmark = pytest.mark.integration

N = 20_000
SEED = 23
W = np.array([0.4, 0.8, -0.3, 1.5], np.float32)      # log1p(amount), f01, standardized limit, risk
DEFAULTS = {"limit": 50.0, "risk": 0.5}
FEATURES = [{"name": "amount", "transforms": ["log1p"]}, {"name": "f01"},
            {"name": "limit", "field": "acct.limit", "transforms": [{"standardize": {"mean": 500.0, "std": 300.0}}]},
            {"name": "risk", "field": "acct.risk"}]


def _account_features(accounts: list[str]) -> dict[str, dict[str, float]]:
    """Features for ~90% of the accounts; the rest are absent from Redis (their defaults apply)."""
    rng = np.random.default_rng(5)
    return {a: {"limit": float(rng.integers(100, 1000)), "risk": round(float(rng.random()), 6)}
            for a in accounts if rng.random() < 0.9}


def _offline(cols: dict[str, np.ndarray], store: dict[str, dict[str, float]], model: Path) -> tuple[np.ndarray, np.ndarray]:
    """(the joined feature rows, onnxruntime's scores on them), computed without streamscore."""
    import onnxruntime as ort

    accts = cols["account_id"].tolist()
    limit = np.array([store.get(a, DEFAULTS)["limit"] for a in accts])
    risk = np.array([store.get(a, DEFAULTS)["risk"] for a in accts])
    x = np.stack([np.log1p(cols["amount"]), cols["f01"], (limit - 500.0) / 300.0, risk], axis=1).astype(np.float32)
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return x, np.asarray(sess.run(None, {"features": x})[0]).reshape(-1)


def test_lookups_match_offline_scores_and_survive_a_redis_kill(tmp_path: Path, bootstrap: str, names: Any,
                                                              topics: Any) -> None:
    import redis

    t_in, t_out, group = names("t-online"), names("t-online-out"), names("g-online")
    topics({t_in: 2, t_out: 2, f"{t_in}.dlq": 2})
    model = write_linear_onnx(tmp_path / "m.onnx", W)
    ModelRegistry(tmp_path / "registry").register("online", model, format="onnx",
                                                  input_spec=InputSpec.from_dict({"features": FEATURES}),
                                                  output_spec={}, stage="production")
    cols = generate(N, seed=SEED)
    store = _account_features(sorted(set(cols["account_id"].tolist())))
    server = start_redis(tmp_path / "redis", persistent=True)
    port = int(server.url.rsplit(":", 1)[1].split("/")[0])
    r = redis.Redis.from_url(server.url)
    pipe = r.pipeline(transaction=False)
    for a, feats in store.items():
        pipe.hset(f"acct:{a}", mapping={**feats, "_ts": time.time()})
    pipe.execute()
    lookup = {"name": "acct", "redis": {"url": server.url, "key": "acct:{account_id}", "fields": ["limit", "risk"],
                                        "timeout_ms": 500},
              "defaults": DEFAULTS, "cache_ttl_s": 0.2}
    pipeline = {"name": "online", "input": {"topic": t_in}, "model": {"name": "online"},
                "output": {"topic": t_out, "include_features": True}, "telemetry": {"enabled": False},
                "batching": {"max_size": 500}, "lookups": [lookup]}
    cfg = write_config(tmp_path / "p.yaml", bootstrap, group, [pipeline], registry=str(tmp_path / "registry"))
    conf = {"bootstrap.servers": bootstrap}
    scorer = ScorerProcess(cfg, tmp_path / "scorer.log")
    try:
        produce_events(conf, t_in, N // 2, seed=SEED)
        read_all(bootstrap, t_out, expect=N // 4, timeout=180, alive=scorer)
        server.kill()                                        # SIGKILL, mid-stream
        produce_events(conf, t_in, N - N // 2, seed=SEED, start=N // 2)
        wait_for(lambda: "the store does not answer" in scorer.output(), 120, "the scorer meeting the outage")
        time.sleep(3)                                        # the outage lasts: batches wait, nothing moves on
        assert scorer.proc.poll() is None, scorer.output()[-3000:]
        during = sum(max(o, 0) for o in committed(bootstrap, group, t_in, 2).values())
        assert during < N, "offsets moved past events that could not be scored"
        server = start_redis(tmp_path / "redis", port=port, persistent=True)   # the AOF brings the features back
        out = read_all(bootstrap, t_out, expect=N, timeout=240, alive=scorer)
        dlq = read_all(bootstrap, f"{t_in}.dlq", expect=0, timeout=5, idle=3.0)
        wait_for(lambda: sum(committed(bootstrap, group, t_in, 2).values()) == N, 60, "every offset committed")
        assert "the store answers again" in scorer.output()
        assert scorer.terminate() == 0, scorer.output()[-3000:]
    finally:
        scorer.close()
        server.stop()
    assert dlq == [], f"{len(dlq)} dead letters"
    schema = fastavro.parse_schema(output_schema([*prediction_fields(), FEATURES_FIELD], []))
    recs = [fastavro.schemaless_reader(io.BytesIO(m.value()[5:]), schema) for m in out]
    counts = collections.Counter(rec["event_id"] for rec in recs)
    assert set(counts) == set(cols["event_id"].tolist()), "every event scored"
    by_id = {rec["event_id"]: rec for rec in recs}
    x, want = _offline(cols, store, model)
    ids = cols["event_id"].tolist()
    got = np.array([by_id[e]["score"] for e in ids])
    assert np.abs(got - want).max() <= 1e-5, f"max difference {np.abs(got - want).max()}"
    served = np.array([[by_id[e]["features"][k] for k in ("amount", "f01", "limit", "risk")] for e in ids])
    assert np.abs(served - x).max() <= 1e-6
    missing = sum(a not in store for a in cols["account_id"].tolist())
    assert 0 < missing < N                                   # defaults were used, and looked-up values too


def test_on_missing_dead_letter_sends_exactly_the_events_without_an_entry(tmp_path: Path, bootstrap: str,
                                                                            names: Any, topics: Any) -> None:
    import redis

    n = 3000
    t_in, t_out = names("t-online-dl"), names("t-online-dl-out")
    topics({t_in: 2, t_out: 2, f"{t_in}.dlq": 2})
    model = write_linear_onnx(tmp_path / "m.onnx", W)
    ModelRegistry(tmp_path / "registry").register("online", model, format="onnx",
                                                  input_spec=InputSpec.from_dict({"features": FEATURES}),
                                                  output_spec={}, stage="production")
    cols = generate(n, seed=SEED + 1)
    store = _account_features(sorted(set(cols["account_id"].tolist())))
    server = start_redis(tmp_path / "redis")
    r = redis.Redis.from_url(server.url)
    for a, feats in store.items():
        r.hset(f"acct:{a}", mapping=feats)
    lookup = {"name": "acct", "redis": {"url": server.url, "key": "acct:{account_id}", "fields": ["limit", "risk"]},
              "on_missing": "dead_letter"}
    pipeline = {"name": "online", "input": {"topic": t_in}, "model": {"name": "online"}, "output": {"topic": t_out},
                "telemetry": {"enabled": False}, "lookups": [lookup]}
    cfg = write_config(tmp_path / "p.yaml", bootstrap, names("g-online-dl"), [pipeline],
                       registry=str(tmp_path / "registry"))
    absent = {e for e, a in zip(cols["event_id"].tolist(), cols["account_id"].tolist()) if a not in store}
    assert 0 < len(absent) < n
    scorer = ScorerProcess(cfg, tmp_path / "scorer.log")
    try:
        produce_events({"bootstrap.servers": bootstrap}, t_in, n, seed=SEED + 1)
        out = read_all(bootstrap, t_out, expect=n - len(absent), timeout=180, idle=2.0, alive=scorer)
        dlq = read_all(bootstrap, f"{t_in}.dlq", expect=len(absent), timeout=60, idle=2.0, alive=scorer)
        assert scorer.terminate() == 0, scorer.output()[-3000:]
    finally:
        scorer.close()
        server.stop()
    from tests.integration.helpers import decode_transaction

    assert {decode_transaction(m.value())["event_id"] for m in dlq} == absent and len(dlq) == len(absent)
    assert {dict(m.headers())["error.class"] for m in dlq} == {b"lookup_missing"}
    schema = fastavro.parse_schema(output_schema(prediction_fields(), []))
    scored = {fastavro.schemaless_reader(io.BytesIO(m.value()[5:]), schema)["event_id"] for m in out}
    assert scored == set(cols["event_id"].tolist()) - absent and len(out) == n - len(absent)


def test_sigterm_while_a_batch_waits_on_a_dead_store_is_a_clean_stop(tmp_path: Path, bootstrap: str, names: Any,
                                                                     topics: Any) -> None:
    """Redis is gone before the first batch: the batch waits; a SIGTERM then ends the scorer with
    exit 0 within its stop budget, and no offset moves past the batch that never got its features."""
    import socket

    t_in, t_out, group = names("t-online-stop"), names("t-online-stop-out"), names("g-online-stop")
    topics({t_in: 2, t_out: 2, f"{t_in}.dlq": 2})
    model = write_linear_onnx(tmp_path / "m.onnx", W)
    ModelRegistry(tmp_path / "registry").register("online", model, format="onnx",
                                                  input_spec=InputSpec.from_dict({"features": FEATURES}),
                                                  output_spec={}, stage="production")
    with socket.socket() as s:                     # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    lookup = {"name": "acct", "redis": {"url": f"redis://127.0.0.1:{dead_port}/0", "key": "acct:{account_id}",
                                        "fields": ["limit", "risk"], "timeout_ms": 200},
              "defaults": DEFAULTS}
    pipeline = {"name": "online", "input": {"topic": t_in}, "model": {"name": "online"},
                "output": {"topic": t_out}, "telemetry": {"enabled": False}, "lookups": [lookup]}
    cfg = write_config(tmp_path / "p.yaml", bootstrap, group, [pipeline], registry=str(tmp_path / "registry"),
                       stop_timeout_s=10)
    scorer = ScorerProcess(cfg, tmp_path / "scorer.log")
    try:
        produce_events({"bootstrap.servers": bootstrap}, t_in, 500, seed=SEED)
        wait_for(lambda: "the store does not answer" in scorer.output(), 120, "the scorer meeting the dead store")
        sent = time.monotonic()
        assert scorer.terminate(timeout=30) == 0, scorer.output()[-3000:]
        assert time.monotonic() - sent <= 10 + 5, "stopped within stop_timeout_s (slack for a busy machine)"
    finally:
        scorer.close()
    assert "scorer failing" not in scorer.output()
    assert sum(max(o, 0) for o in committed(bootstrap, group, t_in, 2).values()) == 0
    assert read_all(bootstrap, t_out, expect=0, timeout=5, idle=3.0) == []
