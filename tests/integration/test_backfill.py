"""streamscore backfill: a time range of a real topic, scored once per event, across a kill and --resume."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnxruntime as ort
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Producer

from models import DEMO_REGISTRY
from models.demo_data import generate
from models.registry import ModelRegistry
from streamscore.produce import produce_events
from tests.integration.helpers import ROOT, committed, decode_prediction, read_all, wait_for, write_config

pytestmark = pytest.mark.integration

SEED = 21
BEFORE, IN_RANGE, AFTER = 3_000, 24_000, 3_000
BAD = 3            # undecodable records inside the range: dead letters, not predictions


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.fixture(scope="module")
def produced(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 4-partition topic: BEFORE events, then [T1, T2): IN_RANGE events + BAD garbage, then AFTER events."""
    from consumers.kafka_client import ensure_topics

    topic = f"t-bf-{time.monotonic_ns()}"
    conf = {"bootstrap.servers": bootstrap}
    ensure_topics(conf, {topic: 4})
    produce_events(conf, topic, BEFORE, seed=SEED, start=0)
    time.sleep(0.02)
    t1 = _now_ms()
    time.sleep(0.02)
    produce_events(conf, topic, IN_RANGE, seed=SEED, start=BEFORE)
    p = Producer(conf)
    for i in range(BAD):
        p.produce(topic, b"\x00\x00\x00\x00\x01garbage-%d" % i, b"k", partition=i % 4)
    assert p.flush(30) == 0
    time.sleep(0.02)
    t2 = _now_ms()
    time.sleep(0.02)
    produce_events(conf, topic, AFTER, seed=SEED, start=BEFORE + IN_RANGE)
    cols = generate(BEFORE + IN_RANGE + AFTER, seed=SEED)
    entry = ModelRegistry(DEMO_REGISTRY).get("fraud-mlp")
    feats = np.stack([np.asarray(cols[f], dtype=np.float32) for f in entry.input_spec.names], axis=1)
    sess = ort.InferenceSession(str(entry.artifact_path), providers=["CPUExecutionProvider"])
    scores = np.asarray(sess.run(None, {sess.get_inputs()[0].name: feats})[0]).reshape(-1)
    ids = cols["event_id"].tolist()
    return {"topic": topic, "t1": t1, "t2": t2, "expected": dict(zip(ids, scores.tolist())),
            "in_range": set(ids[BEFORE:BEFORE + IN_RANGE])}


def _backfill(cfg: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP"}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "streamscore", "backfill", "-c", str(cfg), *args],
                                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env={**env, "PYTHONUNBUFFERED": "1"})


def _kill_midway(proc: subprocess.Popen[bytes], done: Callable[[], int], log: Path) -> int:
    """SIGKILL once 30-70% of the range is durably done; returns how much was done."""
    def midway() -> bool:
        assert proc.poll() is None, f"backfill exited early ({proc.returncode}):\n{log.read_text()[-2000:]}"
        return done() >= IN_RANGE * 0.3
    wait_for(midway, 120, "backfill 30% done", interval=0.05)
    proc.kill()
    proc.wait(30)
    return done()


def _check(preds: list[dict[str, Any]], produced: dict[str, Any]) -> None:
    counts = collections.Counter(p["event_id"] for p in preds)
    assert set(counts) == produced["in_range"], (
        f"{len(produced['in_range'] - set(counts))} in range missing, {len(set(counts) - produced['in_range'])} outside")
    assert max(counts.values()) == 1, f"{sum(c - 1 for c in counts.values())} events scored twice"
    exp = produced["expected"]
    diffs = np.array([abs(p["score"] - exp[p["event_id"]]) for p in preds])
    assert diffs.max() <= 1e-5


def test_backfill_to_parquet_killed_and_resumed(tmp_path: Path, bootstrap: str, produced: dict[str, Any]) -> None:
    cfg = write_config(tmp_path / "p.yaml", bootstrap, "g-bf", [{
        "name": "fraud", "input": {"topic": produced["topic"]}, "model": {"name": "fraud-mlp"},
        "output": {"topic": "unused"}}])
    out = tmp_path / "out.parquet"
    args = ["--from", str(produced["t1"]), "--to", str(produced["t2"]), "--to-file", str(out), "--model", "fraud-mlp@1"]
    state = Path(f"{out}.backfill") / "state.json"

    def rows_done() -> int:
        try:
            return int(json.loads(state.read_text())["rows"])
        except (OSError, ValueError):
            return 0

    first = _backfill(cfg, tmp_path / "1.log", *args, "--max-rate", "4000")
    done = _kill_midway(first, rows_done, tmp_path / "1.log")
    assert 0 < done < IN_RANGE and not out.exists()
    second = _backfill(cfg, tmp_path / "2.log", *args, "--resume")
    assert second.wait(120) == 0, (tmp_path / "2.log").read_text()[-3000:]
    summary = json.loads((tmp_path / "2.log").read_text().strip().splitlines()[-1])
    assert summary["skipped"] > 0 and summary["complete"] is True
    table = pq.read_table(out)
    assert table.num_rows == IN_RANGE
    preds = table.to_pylist()
    _check(preds, produced)
    assert {p["model"] for p in preds} == {"fraud-mlp"} and {p["version"] for p in preds} == {"1"}
    assert {p["variant"] for p in preds} == {"primary"}
    assert not state.parent.exists(), "the state directory is removed once the backfill is complete"


def test_backfill_to_topic_killed_and_resumed_exactly_once(tmp_path: Path, bootstrap: str, produced: dict[str, Any],
                                                          names: Callable[[str], str]) -> None:
    t_out = names("bf-out")
    dlq = f"{produced['topic']}.dlq"
    started = _now_ms()
    cfg = write_config(tmp_path / "p.yaml", bootstrap, "g-bf", [{
        "name": "fraud", "input": {"topic": produced["topic"]}, "model": {"name": "fraud-mlp"},
        "output": {"topic": "unused"}}])
    t1 = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(produced["t1"] / 1000)) + f".{produced['t1'] % 1000:03d}Z"
    args = ["--from", t1, "--to", str(produced["t2"]), "--to-topic", t_out, "--state-dir", str(tmp_path / "st")]
    first = _backfill(cfg, tmp_path / "1.log", *args, "--max-rate", "2500")   # ~10 s: room to see a commit and kill before the end

    def committed_in() -> int:
        """Input offsets the backfill committed in its transactions (under its own group id)."""
        try:
            st = json.loads((tmp_path / "st" / "state.json").read_text())
        except (OSError, ValueError):
            return 0
        offs = committed(bootstrap, st["group"], produced["topic"], 4)
        return sum(max(0, offs[int(p)] - lo) for p, (lo, _) in st["ranges"].items() if offs[int(p)] >= 0)

    done = _kill_midway(first, committed_in, tmp_path / "1.log")
    assert 0 < done < IN_RANGE
    partial = read_all(bootstrap, t_out, expect=IN_RANGE, timeout=5, idle=1.0, isolation="read_committed")
    assert 0 < len(partial) < IN_RANGE
    second = _backfill(cfg, tmp_path / "2.log", *args, "--resume")
    assert second.wait(120) == 0, (tmp_path / "2.log").read_text()[-3000:]
    msgs = read_all(bootstrap, t_out, expect=IN_RANGE, timeout=60, idle=1.0, isolation="read_committed")
    _check([decode_prediction(m.value()) for m in msgs], produced)
    dead = [m for m in read_all(bootstrap, dlq, expect=BAD, timeout=30, isolation="read_committed", idle=0.5)
            if int(dict(m.headers())["time"]) >= started]      # the module's other tests dead-letter them too
    assert sorted(m.value() for m in dead) == sorted(b"\x00\x00\x00\x00\x01garbage-%d" % i for i in range(BAD))


def test_backfill_bad_arguments_are_one_line(tmp_path: Path, bootstrap: str, produced: dict[str, Any],
                                            capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from streamscore.cli import main

    monkeypatch.chdir(tmp_path)
    cfg = write_config(tmp_path / "p.yaml", bootstrap, "g-bf", [{
        "name": "fraud", "input": {"topic": produced["topic"]}, "model": {"name": "fraud-mlp"},
        "output": {"topic": "unused"}}])
    cases = [
        (["--from", "yesterday", "--to-file", "x.parquet"], "neither ISO-8601"),
        (["--from", "2026-01-02", "--to", "2026-01-01", "--to-file", "x.parquet"], "must be after"),
        (["--from", "0", "--to-file", str(tmp_path / "x.parquet"), "--model", "nope@1"], "nope"),
        (["--from", "0", "--to-file", str(tmp_path / "y.parquet"), "--resume"], "nothing to resume"),
        (["--input-file", str(tmp_path / "missing.csv"), "--to-file", str(tmp_path / "z.parquet")], "does not exist"),
        (["--from", "0", "--to-file", str(tmp_path / "c.parquet"), "--compare"], "--compare: give the candidate"),
        (["--from", "0", "--to-file", str(tmp_path / "c.parquet"), "--compare-out", "c.json"], "only with --compare"),
    ]
    for args, needle in cases:
        code = main(["backfill", "-c", str(cfg), "--quiet", *args])
        err = capsys.readouterr().err
        assert code == 2 and needle in err and "Traceback" not in err, (args, err)
        assert len(err.strip().splitlines()) == 1, err


def test_backfill_from_csv_file(tmp_path: Path, bootstrap: str, produced: dict[str, Any]) -> None:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    cols = generate(500, seed=SEED)
    table = pa.table({k: (v.tolist() if hasattr(v, "tolist") else list(v)) for k, v in cols.items()})
    pacsv.write_csv(table, tmp_path / "in.csv")
    cfg = write_config(tmp_path / "p.yaml", bootstrap, "g-bf", [{
        "name": "fraud", "input": {"topic": produced["topic"]}, "model": {"name": "fraud-mlp"},
        "output": {"topic": "unused"}}])
    proc = _backfill(cfg, tmp_path / "f.log", "--input-file", str(tmp_path / "in.csv"), "--to-file", str(tmp_path / "o.parquet"))
    assert proc.wait(120) == 0, (tmp_path / "f.log").read_text()[-3000:]
    preds = pq.read_table(tmp_path / "o.parquet").to_pylist()
    exp = produced["expected"]
    assert sorted(p["event_id"] for p in preds) == sorted(cols["event_id"].tolist())
    assert max(abs(p["score"] - exp[p["event_id"]]) for p in preds) <= 1e-5


def test_backfill_compare_candidate_with_production(tmp_path: Path, bootstrap: str, produced: dict[str, Any]) -> None:
    """--compare: decisions and score differences equal onnxruntime's on the same events, for a
    candidate whose weights and threshold differ from production's."""
    import shutil

    import onnx
    from onnx import numpy_helper

    root = tmp_path / "registry"
    shutil.copytree(DEMO_REGISTRY, root)
    reg = ModelRegistry(root)
    v1 = reg.get("fraud-mlp")
    m = onnx.load(str(v1.artifact_path))
    init = max(m.graph.initializer, key=lambda t: int(np.prod(t.dims)))     # the largest weight matrix
    w = numpy_helper.to_array(init)
    init.CopyFrom(numpy_helper.from_array((w * 1.5 + 0.05).astype(w.dtype), init.name))
    onnx.save(m, str(tmp_path / "candidate.onnx"))
    reg.register("fraud-mlp", tmp_path / "candidate.onnx", format="onnx", input_spec=v1.input_spec,
                 output_spec=v1.output_spec, stage="staging", version="2", decision_threshold=0.3)
    cfg = write_config(tmp_path / "p.yaml", bootstrap, "g-bf", [{
        "name": "fraud", "input": {"topic": produced["topic"]}, "model": {"name": "fraud-mlp"},
        "output": {"topic": "unused"}}], registry=str(root))
    out, report = tmp_path / "cand.parquet", tmp_path / "compare.json"
    proc = _backfill(cfg, tmp_path / "c.log", "--from", str(produced["t1"]), "--to", str(produced["t2"]),
                     "--to-file", str(out), "--model", "fraud-mlp@2", "--compare", "--compare-out", str(report))
    assert proc.wait(180) == 0, (tmp_path / "c.log").read_text()[-3000:]
    got = json.loads(report.read_text())

    cols = generate(BEFORE + IN_RANGE + AFTER, seed=SEED)
    feats = np.stack([np.asarray(cols[f], dtype=np.float32) for f in v1.input_spec.names], axis=1)[BEFORE:BEFORE + IN_RANGE]

    def offline(path: Path) -> np.ndarray:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return np.asarray(sess.run(None, {sess.get_inputs()[0].name: feats})[0], dtype=np.float32).reshape(-1)

    prod, cand = offline(v1.artifact_path), offline(reg.get("fraud-mlp", "2", stage=None).artifact_path)
    diff = cand.astype(np.float64) - prod.astype(np.float64)
    pos_p, pos_c = prod >= v1.decision_threshold, cand >= 0.3
    assert got["production"] == "fraud-mlp@1" and got["candidate"] == "fraud-mlp@2"
    assert got["compared"] == IN_RANGE and got["not_compared"] == 0
    d = got["decisions"]
    assert d["agree"] == int(np.count_nonzero(pos_p == pos_c)) < IN_RANGE, "the candidate should decide differently"
    assert d["candidate_only_positive"] == int(np.count_nonzero(pos_c & ~pos_p))
    assert d["production_only_positive"] == int(np.count_nonzero(pos_p & ~pos_c))
    s = got["score_diff"]
    assert abs(s["mean_abs"] - float(np.abs(diff).mean())) <= 1e-6 and s["mean_abs"] > 0.01
    assert abs(s["mean"] - float(diff.mean())) <= 1e-6
    for key, q in (("p1", 0.01), ("p50", 0.5), ("p99", 0.99)):
        assert abs(s["quantiles"][key] - float(np.quantile(diff, q))) <= 1e-5, key
    assert got["quality"] is None and "labels" in got["quality_note"]
    preds = pq.read_table(out).to_pylist()        # the output holds the candidate's predictions
    assert {p["version"] for p in preds} == {"2"} and len(preds) == IN_RANGE
    by_id = dict(zip(cols["event_id"].tolist()[BEFORE:BEFORE + IN_RANGE], cand.tolist()))
    assert max(abs(p["score"] - by_id[p["event_id"]]) for p in preds) <= 1e-5
    summary = json.loads((tmp_path / "c.log").read_text().strip().splitlines()[-1])
    assert summary["compare"]["decisions"] == d
