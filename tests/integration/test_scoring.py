"""The walking skeleton end to end: real broker, real scorer process, model checked directly."""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import threading
import urllib.request
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnxruntime as ort
import pytest
from confluent_kafka import Producer

from models import DEMO_REGISTRY
from models.demo_data import generate
from models.registry import ModelRegistry
from streamscore.produce import produce_events
from tests.integration.helpers import ScorerProcess, committed, decode_prediction, decode_transaction, read_all, wait_for, write_config

pytestmark = pytest.mark.integration


def _pipeline(topic_in: str, topic_out: str, **kw: Any) -> dict[str, Any]:
    return {"name": "fraud", "input": {"topic": topic_in}, "model": {"name": "fraud-mlp"},
            "output": {"topic": topic_out}, **kw}


def _expected_scores(n: int, seed: int) -> dict[str, float]:
    entry = ModelRegistry(DEMO_REGISTRY).get("fraud-mlp")
    cols = generate(n, seed=seed)
    feats = np.stack([np.asarray(cols[f], dtype=np.float32) for f in entry.input_spec.names], axis=1)
    sess = ort.InferenceSession(str(entry.artifact_path), providers=["CPUExecutionProvider"])
    scores = np.asarray(sess.run(None, {sess.get_inputs()[0].name: feats})[0]).reshape(-1)
    return dict(zip(cols["event_id"].tolist(), scores.tolist()))


@pytest.mark.parametrize("consume", ["native", "plain"])
def test_50k_events_one_prediction_each_matching_onnx(tmp_path: Path, bootstrap: str, names: Callable[[str], str],
                                                      topics: Callable[..., None], consume: str) -> None:
    """On both consume paths: the native drain (the default) and Consumer.consume (its fallback)."""
    n, seed = 50_000, 11
    t_in, t_out = names("tx"), names("pred")
    topics({t_in: 4, t_out: 4})
    produce_events({"bootstrap.servers": bootstrap}, t_in, n, seed=seed)
    cfg = write_config(tmp_path / "p.yaml", bootstrap, names("g"), [_pipeline(t_in, t_out)])
    scorer = ScorerProcess(cfg, tmp_path / "scorer.log",
                           env={"STREAMSCORE_NATIVE_CONSUME": "1" if consume == "native" else "0"})
    try:
        msgs = read_all(bootstrap, t_out, expect=n, timeout=180, idle=2.0, alive=scorer)
        assert scorer.terminate() == 0, scorer.output()
    finally:
        scorer.close()
    assert ("native consume: draining" in scorer.output()) == (consume == "native")
    preds = [decode_prediction(m.value()) for m in msgs]
    counts = collections.Counter(p["event_id"] for p in preds)
    expected = _expected_scores(n, seed)
    assert len(counts) == n, f"{n - len(counts)} events without a prediction"
    assert max(counts.values()) == 1, "some event scored twice"
    assert set(counts) == set(expected)
    diffs = np.array([abs(p["score"] - expected[p["event_id"]]) for p in preds])
    assert diffs.max() <= 1e-5, f"max score difference {diffs.max()}"
    p0 = preds[0]
    assert p0["model"] == "fraud-mlp" and p0["variant"] == "primary" and p0["version"]
    threshold = ModelRegistry(DEMO_REGISTRY).get("fraud-mlp").decision_threshold
    assert all(p["decision"] == (p["score"] >= threshold) for p in preds)
    assert 0 < sum(p["decision"] for p in preds) < n
    # the prediction carries the event's key, in the Kafka key and in the record, and lands in
    # the input's partition (outputs go through the one-call batch produce by default)
    src = {decode_transaction(m.value())["event_id"]: (m.key(), m.partition())
           for m in read_all(bootstrap, t_in, expect=n, timeout=60)}
    for m, p in zip(msgs, preds):
        assert (m.key(), m.partition()) == src[p["event_id"]] and m.key().decode() == p["key"]
    assert not msgs[0].headers(), "no headers unless output.headers is set"


def test_a_trickle_is_scored_on_the_source_thread_once_each_and_in_order(
        tmp_path: Path, bootstrap: str, names: Callable[[str], str], topics: Callable[..., None]) -> None:
    """At low load the source thread scores small batches itself (the model stage idle), and produces
    them itself (the sink stage idle too): nothing is lost, doubled or reordered within a partition,
    and the scores are the model's."""
    n, seed = 6_000, 12
    t_in, t_out = names("tx"), names("pred")
    topics({t_in: 4, t_out: 4})
    cfg = write_config(tmp_path / "p.yaml", bootstrap, names("g"), [_pipeline(t_in, t_out)])
    scorer = ScorerProcess(cfg, tmp_path / "scorer.log")
    try:
        # a probe event first: the scorer has joined its group before the trickle starts
        produce_events({"bootstrap.servers": bootstrap}, t_in, 1, seed=seed, start=n)
        read_all(bootstrap, t_out, expect=1, timeout=120, alive=scorer)
        produce_events({"bootstrap.servers": bootstrap}, t_in, n, seed=seed, rate=2_000)
        msgs = read_all(bootstrap, t_out, expect=n + 1, timeout=120, idle=2.0, alive=scorer)
        assert scorer.terminate() == 0, scorer.output()
    finally:
        scorer.close()
    summary = json.loads(next(line for line in scorer.output().splitlines() if line.startswith('{"consumed"')))
    assert summary["scored_inline"] > 0 and summary["emitted_inline"] > 0, summary
    preds = [decode_prediction(m.value()) for m in msgs]
    counts = collections.Counter(p["event_id"] for p in preds)
    expected = _expected_scores(n, seed)
    assert len(counts) == n + 1 and max(counts.values()) == 1
    assert max(abs(p["score"] - expected[p["event_id"]]) for p in preds if p["event_id"] in expected) <= 1e-5
    # within each partition, predictions come in the order of their events
    src = {decode_transaction(m.value())["event_id"]: (m.partition(), m.offset())
           for m in read_all(bootstrap, t_in, expect=n + 1, timeout=60)}
    for part in range(4):
        offsets = [src[p["event_id"]][1] for m, p in zip(msgs, preds) if m.partition() == part]
        assert offsets == sorted(offsets), f"partition {part} reordered"


def test_sigkill_midstream_then_restart_loses_nothing(tmp_path: Path, bootstrap: str,
                                                      names: Callable[[str], str], topics: Callable[..., None]) -> None:
    n = 60_000
    t_in, t_out, group = names("tx"), names("pred"), names("g")
    topics({t_in: 4, t_out: 4})
    cfg = write_config(tmp_path / "p.yaml", bootstrap, group, [_pipeline(t_in, t_out, batching={"max_size": 500})])
    # events keep arriving (20k/s for 3 s) while the scorer is killed, so the kill is mid-stream
    producer = threading.Thread(target=produce_events, args=({"bootstrap.servers": bootstrap}, t_in, n),
                                kwargs={"seed": 3, "rate": 20_000})
    first = ScorerProcess(cfg, tmp_path / "s1.log")
    try:
        producer.start()
        def progressed() -> bool:   # scored some and committed some, with more still arriving
            done = sum(max(0, o) for o in committed(bootstrap, group, t_in, 4).values())
            return done > 0 and len(read_all(bootstrap, t_out, expect=5_000, timeout=2)) >= 5_000

        wait_for(progressed, 120, "first predictions and commits")
        first.kill()
    finally:
        first.close()
    partial = len(read_all(bootstrap, t_out, expect=n, timeout=3))
    producer.join(60)
    assert 0 < partial < n, f"kill was not mid-stream ({partial} of {n} scored)"
    done_before_kill = sum(max(0, o) for o in committed(bootstrap, group, t_in, 4).values())
    assert 0 < done_before_kill <= partial, f"committed {done_before_kill} before the kill, scored {partial}"
    second = ScorerProcess(cfg, tmp_path / "s2.log")
    try:
        def all_scored(msgs: list[Any]) -> bool:
            return len({decode_prediction(m.value())["event_id"] for m in msgs}) >= n

        msgs = read_all(bootstrap, t_out, expect=all_scored, timeout=180)
        assert second.terminate() == 0, second.output()
    finally:
        second.close()
    ids = collections.Counter(decode_prediction(m.value())["event_id"] for m in msgs)
    want = set(generate(n, seed=3)["event_id"].tolist())
    assert want <= set(ids), f"{len(want - set(ids))} events lost"
    # the restart resumed from committed offsets: only the uncommitted tail was scored twice
    replayed = sum(c - 1 for c in ids.values())
    assert replayed < partial, f"{replayed} re-scored: the restart did not resume from committed offsets"


def test_undecodable_record_goes_to_dlq_and_batch_mates_are_scored(tmp_path: Path, bootstrap: str,
                                                                   names: Callable[[str], str],
                                                                   topics: Callable[..., None]) -> None:
    n = 2_000
    t_in, t_out = names("tx"), names("pred")
    dlq = f"{t_in}.dlq"
    topics({t_in: 1, t_out: 1, dlq: 1})
    cols = generate(n, seed=5)
    from streamscore.produce import encode_transactions

    good = encode_transactions(cols, n)
    bad = {100: b"\x00\x00\x00\x00\x01garbage", 500: b"not avro at all", 1500: good[1500][:20]}
    # Where each record landed, from its delivery report: on a busy machine a retried request
    # can move records, so the index is not the offset.
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    landed: dict[int, int] = {}
    for i, v in enumerate(good):
        p.produce(t_in, bad.get(i, v), cols["account_id"][i].encode(),
                  on_delivery=lambda err, msg, i=i: landed.__setitem__(i, -1 if err else msg.offset()))
    assert p.flush(30) == 0 and sorted(landed.values()) == list(range(n))
    cfg = write_config(tmp_path / "p.yaml", bootstrap, names("g"), [_pipeline(t_in, t_out)])
    scorer = ScorerProcess(cfg, tmp_path / "scorer.log")
    try:
        preds = read_all(bootstrap, t_out, expect=n - len(bad), timeout=120, idle=1.0, alive=scorer)
        dead = read_all(bootstrap, dlq, expect=len(bad), timeout=60)
        assert scorer.proc.poll() is None, "scorer died on a bad record"
        assert scorer.terminate() == 0
    finally:
        scorer.close()
    scored = {decode_prediction(m.value())["event_id"] for m in preds}
    want = {e for i, e in enumerate(cols["event_id"].tolist()) if i not in bad}
    assert scored == want
    assert len(dead) == len(bad)
    by_offset = {int(dict(m.headers())["source.offset"]): m for m in dead}
    at = {landed[i]: i for i in bad}
    assert set(by_offset) == set(at)
    for off, m in by_offset.items():
        h = dict(m.headers())
        assert m.value() == bad[at[off]], "dead letter must carry the original bytes"
        assert h["source.topic"].decode() == t_in and h["error.class"] and h["error.message"]


def test_processes_two_consumers_share_the_group(tmp_path: Path, bootstrap: str, names: Callable[[str], str],
                                                 topics: Callable[..., None]) -> None:
    n = 20_000
    t_in, t_out = names("tx"), names("pred")
    topics({t_in: 4, t_out: 4})
    produce_events({"bootstrap.servers": bootstrap}, t_in, n, seed=12)
    # output.headers: every prediction also names model, version and variant in Kafka headers
    cfg = write_config(tmp_path / "p.yaml", bootstrap, names("g"),
                       [_pipeline(t_in, "", output={"topic": t_out, "headers": True})])
    scorer = ScorerProcess(cfg, tmp_path / "scorer.log", "--processes", "2")
    try:
        msgs = read_all(bootstrap, t_out, expect=n, timeout=120, idle=2.0, alive=scorer)
        assert scorer.terminate() == 0, scorer.output()
    finally:
        scorer.close()
    ids = collections.Counter(decode_prediction(m.value())["event_id"] for m in msgs)
    assert len(ids) == n and max(ids.values()) == 1
    assert all(dict(m.headers() or [])["model"] == b"fraud-mlp" and dict(m.headers() or [])["variant"] == b"primary"
               for m in msgs)
    # two member processes, each finishing cleanly and reporting its share on exit
    consumed = [json.loads(line)["consumed"] for line in scorer.output().splitlines() if line.startswith('{"consumed"')]
    assert len(consumed) == 2 and sum(consumed) >= n


def test_processes_restarts_a_killed_child_and_counts_it(tmp_path: Path, bootstrap: str,
                                                        names: Callable[[str], str],
                                                        topics: Callable[..., None]) -> None:
    """`serve --processes 2`: a SIGKILLed child is started again (same instance name), the restart is
    counted in the parent's streamscore_child_restarts_total, and the group goes on scoring."""
    t_in, t_out = names("tx"), names("pred")
    topics({t_in: 4, t_out: 4})
    cfg = write_config(tmp_path / "p.yaml", bootstrap, names("g"), [_pipeline(t_in, t_out)], metrics_port=0)
    scorer = ScorerProcess(cfg, tmp_path / "scorer.log", "--processes", "2")
    started = re.compile(r"started scorer-0 \(pid (\d+)\)")
    try:
        wait_for(lambda: bool(started.search(scorer.output())), 60, "scorer-0 started")
        wait_for(lambda: "supervisor metrics on" in scorer.output(), 30, "the supervisor's metrics port")
        os.kill(int(started.findall(scorer.output())[0]), signal.SIGKILL)
        wait_for(lambda: len(started.findall(scorer.output())) == 2, 60, "scorer-0 started again")
        assert "scorer-0 exited abnormally (SIGKILL)" in scorer.output()
        port = int(re.findall(r"supervisor metrics on http://[^:]+:(\d+)/metrics", scorer.output())[0])
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert 'streamscore_child_restarts_total{child="scorer-0",instance="scorer",reason="SIGKILL"} 1.0' in text
        produce_events({"bootstrap.servers": bootstrap}, t_in, 2_000, seed=14)
        msgs = read_all(bootstrap, t_out, expect=2_000, timeout=120, alive=scorer)
        assert len({decode_prediction(m.value())["event_id"] for m in msgs}) == 2_000
        assert scorer.terminate() == 0, scorer.output()
    finally:
        scorer.close()


def test_member_joining_mid_stream_causes_no_duplicates(tmp_path: Path, bootstrap: str,
                                                        names: Callable[[str], str],
                                                        topics: Callable[..., None]) -> None:
    """A graceful rebalance (a second member joins while events flow) hands partitions over
    after their in-flight batches are committed: at-least-once, yet not one duplicate."""
    n = 60_000
    t_in, t_out, group = names("tx"), names("pred"), names("g")
    topics({t_in: 4, t_out: 4})
    cfg = write_config(tmp_path / "p.yaml", bootstrap, group, [_pipeline(t_in, t_out, batching={"max_size": 500})])
    producer = threading.Thread(target=produce_events, args=({"bootstrap.servers": bootstrap}, t_in, n),
                                kwargs={"seed": 13, "rate": 15_000})
    first = ScorerProcess(cfg, tmp_path / "a.log", "--instance", "a")
    second = None
    try:
        producer.start()
        wait_for(lambda: len(read_all(bootstrap, t_out, expect=5_000, timeout=2)) >= 5_000, 120, "first member scoring")
        second = ScorerProcess(cfg, tmp_path / "b.log", "--instance", "b")
        producer.join(60)
        msgs = read_all(bootstrap, t_out, expect=n, timeout=120, idle=3.0, alive=first)
        assert first.terminate() == 0 and second.terminate() == 0
    finally:
        first.close()
        if second is not None:
            second.close()
    ids = collections.Counter(decode_prediction(m.value())["event_id"] for m in msgs)
    assert len(ids) == n
    dupes = sum(c - 1 for c in ids.values())
    assert dupes == 0, f"{dupes} events scored twice across a graceful rebalance"
    assert "revoking" in first.output(), "the second member never took partitions over"


def test_warm_up_before_joining_produces_nothing(tmp_path: Path, bootstrap: str, names: Callable[[str], str],
                                                 topics: Callable[..., None]) -> None:
    from confluent_kafka import Consumer, TopicPartition

    t_in, t_out, t_tele = names("tx"), names("pred"), names("tele")
    topics({t_in: 4, t_out: 4})
    cfg = write_config(tmp_path / "p.yaml", bootstrap, names("g"),
                       [_pipeline(t_in, t_out, telemetry={"topic": t_tele})])
    scorer = ScorerProcess(cfg, tmp_path / "scorer.log")
    outputs = (t_out, f"{t_in}.dlq", t_tele)
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": names("probe")})
    try:
        wait_for(lambda: "warmed up with batches of" in scorer.output() and "assigned" in scorer.output(),
                 120, "the scorer to warm up and join its group")
        assert "warmed up with batches of [1, 4, 16, 64, 256, 1024" in scorer.output()
        for topic in outputs:    # warm-up scored thousands of rows; none of them left the process
            meta = probe.list_topics(topic, timeout=10).topics[topic]
            highs = [probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in meta.partitions]
            assert sum(highs) == 0, f"{topic} got {sum(highs)} records before any input"
        produce_events({"bootstrap.servers": bootstrap}, t_in, 20, seed=5)
        msgs = read_all(bootstrap, t_out, expect=20, timeout=60, idle=2.0, alive=scorer)
        assert scorer.terminate() == 0, scorer.output()
    finally:
        probe.close()
        scorer.close()
    ids = [decode_prediction(m.value())["event_id"] for m in msgs]
    assert len(ids) == 20 and not any(i == "warm-up" for i in ids), ids
