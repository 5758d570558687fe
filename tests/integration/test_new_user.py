"""What a new user meets following the README: lag on /metrics with the default config, the
canary + shadow snippet reaching Redis, a failed start leaving no topics, a demo that cleans up."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest
import redis
import yaml
from confluent_kafka.admin import AdminClient

from models import DEMO_REGISTRY
from monitoring.redis_state import Keys
from streamscore.cli import main
from streamscore.produce import produce_events
from tests.integration.helpers import ROOT, ScorerProcess, decode_prediction, read_all, wait_for, write_config
from tests.unit.test_readme_configs import kind_of, yaml_blocks

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _lag(port: int) -> float:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return 0.0
    values = [float(m.group(1)) for m in re.finditer(r"^streamscore_consumer_lag\{[^}]*\} (\S+)$", text, re.M)]
    return max(values, default=0.0)


def test_default_config_exports_consumer_lag(tmp_path: Path, bootstrap: str, names: Callable[[str], str],
                                             topics: Callable[..., None]) -> None:
    t_in, t_out = names("tx"), names("pred")
    topics({t_in: 2, t_out: 2})
    produce_events({"bootstrap.servers": bootstrap}, t_in, 10_000, seed=3)
    port = _free_port()
    # nothing under kafka.consumer; one-row batches only keep the backlog around long enough to be seen
    cfg = write_config(tmp_path / "p.yaml", bootstrap, names("g"),
                       [{"name": "fraud", "input": {"topic": t_in}, "model": {"name": "fraud-mlp"},
                         "output": {"topic": t_out}, "batching": {"max_size": 1}}], metrics_port=port)
    scorer = ScorerProcess(cfg, tmp_path / "scorer.log")
    try:
        wait_for(lambda: _lag(port) > 0 or scorer.proc.poll() is not None, 60, "a positive streamscore_consumer_lag")
        assert scorer.proc.poll() is None, scorer.output()[-3000:]
        assert scorer.terminate() == 0
    finally:
        scorer.close()


def test_a_start_that_fails_creates_no_topics(tmp_path: Path, bootstrap: str, names: Callable[[str], str]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP"}
    for model, schema in ((("fraud-mlp", "2"), "transaction"),          # a version the registry lacks
                          (("fraud-mlp", None), "no_such_schema")):     # a reader schema that does not exist
        t_in, t_out = names("tx"), names("pred")
        cfg = write_config(tmp_path / "p.yaml", bootstrap, names("g"), [
            {"name": "fraud", "input": {"topic": t_in, "schema": schema}, "output": {"topic": t_out},
             "model": {"name": model[0], "version": model[1]}}])
        res = subprocess.run([sys.executable, "-m", "streamscore", "serve", "-c", str(cfg)], capture_output=True,
                             text=True, cwd=ROOT, env=env, timeout=120)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
        created = {t for t in admin.list_topics(timeout=10).topics if t.startswith((t_in, t_out))}
        assert created == set(), f"a failed start created {created}"


def test_readme_canary_and_shadow_snippet_reaches_redis(tmp_path: Path, bootstrap: str, redis_url: str,
                                                        names: Callable[[str], str],
                                                        topics: Callable[..., None]) -> None:
    snippet = next(yaml.safe_load(b) for _, b in yaml_blocks() if kind_of(b) == "pipeline" and "mode: canary" in b)
    fraud: dict[str, Any] = snippet["pipelines"][0]
    assert fraud["route"]["mode"] == "canary" and fraud["route"]["shadow"]
    # the README's steps before the snippet: a registry of one's own with a v2
    reg = Path(snippet["registry"].replace("/tmp/streamscore-registry", str(tmp_path / "registry")))
    shutil.copytree(DEMO_REGISTRY, reg)
    assert main(["models", "register", "fraud-mlp", "--artifact", str(DEMO_REGISTRY / "fraud-mlp/1/model.onnx"),
                 "--threshold", "0.4", "--registry", str(reg)]) == 0
    t_in, t_out, t_tel, prefix = names("tx"), names("pred"), names("telemetry"), names("ss")
    topics({t_in: 2, t_out: 2, t_tel: 1})
    fraud = {**fraud, "input": {**fraud["input"], "topic": t_in}, "telemetry": {"topic": t_tel},
             "output": {**fraud["output"], "topic": t_out, "shadow_topic": f"{t_out}.shadow"}}
    cfg = write_config(tmp_path / "p.yaml", bootstrap, names("g"), [fraud], registry=str(reg))
    mon_cfg = tmp_path / "monitor.yaml"
    mon_cfg.write_text(yaml.safe_dump({"broker": bootstrap, "telemetry_topic": t_tel, "redis_url": redis_url,
                                       "redis_prefix": prefix, "app_id": names("monitor"), "window_ms": 1000,
                                       "registry": str(reg)}))
    mlog = tmp_path / "monitor.log"
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP", "REDIS_URL")}
    with open(mlog, "wb") as out:
        monitor = subprocess.Popen([sys.executable, "-m", "streamscore", "monitor", "-c", str(mon_cfg)],
                                   stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    scorer = ScorerProcess(cfg, tmp_path / "scorer.log")
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    key = f"{prefix}:shadow:fraud-mlp:fraud-mlp-torch"
    try:
        # produced while the scorer runs, so telemetry spans several 1-s event-time windows and they close
        wait_for(lambda: "assigned [" in scorer.output() or scorer.proc.poll() is not None, 90, "partitions assigned")
        produce_events({"bootstrap.servers": bootstrap}, t_in, 6_000, seed=5, rate=3_000)
        preds = [decode_prediction(m.value()) for m in read_all(bootstrap, t_out, expect=6_000, timeout=90,
                                                                  alive=scorer)]
        assert {p["variant"] for p in preds} == {"primary", "canary"}
        wait_for(lambda: int(r.hget(key, "n_pairs") or 0) > 0, 90, f"{key} in Redis")
        shadow = r.hgetall(key)
        assert float(shadow["agreement_rate"]) > 0.9           # the shadow is the same network in torch
        # every row the primary arm scored in the window was compared with the shadow, not only whole batches
        window = json.loads(r.hget(Keys(prefix).windows, f"fraud-mlp:{shadow['window_start']}") or "{}")
        assert int(shadow["n_pairs"]) == window["n"] > 0, (shadow, window)
        assert scorer.terminate() == 0
    finally:
        scorer.close()
        monitor.terminate()
        try:
            monitor.wait(30)
        except subprocess.TimeoutExpired:
            monitor.kill()
    assert "\x1b[" not in mlog.read_text(errors="replace"), "terminal escapes in the monitor's output"


def test_demo_removes_its_data_directory(tmp_path: Path, bootstrap: str, redis_url: str) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "KAFKA_BOOTSTRAP": bootstrap, "REDIS_URL": redis_url,
           "STREAMSCORE_HOME": str(tmp_path / "home")}          # no running dev services to reuse
    res = subprocess.run([sys.executable, "-m", "streamscore", "demo", "--seconds", "1", "--rate", "2000",
                          "--partitions", "1"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=180)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert re.search(r"predictions +2,000 ", res.stdout), res.stdout[-2000:]
    assert [p.name for p in tmp.iterdir() if p.name.startswith("streamscore-demo-")] == []
