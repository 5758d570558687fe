"""The real scorer's telemetry feeds the real monitor: drift injected upstream shows up in Redis."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

import pytest
import redis
import yaml

from models.demo_data import DriftSpec
from streamscore.produce import produce_events
from tests.integration.helpers import ROOT, ScorerProcess, read_all, wait_for, write_config

pytestmark = pytest.mark.integration


def test_scorer_telemetry_to_monitor_to_redis(tmp_path: Path, bootstrap: str, redis_url: str,
                                              names: Callable[[str], str], topics: Callable[..., None]) -> None:
    n, k = 60_000, 30_000
    t_in, t_out, t_tel = names("tx"), names("pred"), names("telemetry")
    prefix = names("ss")
    topics({t_in: 2, t_out: 2, t_tel: 1})
    cfg = write_config(tmp_path / "p.yaml", bootstrap, names("g"),
                       [{"name": "fraud", "input": {"topic": t_in}, "model": {"name": "fraud-mlp"},
                         "output": {"topic": t_out}, "telemetry": {"topic": t_tel}}])
    mon_cfg = tmp_path / "monitor.yaml"
    mon_cfg.write_text(yaml.safe_dump({"broker": bootstrap, "telemetry_topic": t_tel, "redis_url": redis_url,
                                       "redis_prefix": prefix, "app_id": names("monitor"), "window_ms": 1000,
                                       "k": 1, "m": 2}))
    mlog = open(tmp_path / "monitor.log", "wb")
    env = {k_: v for k_, v in os.environ.items() if k_ not in ("KAFKA_BOOTSTRAP", "REDIS_URL")}
    monitor = subprocess.Popen([sys.executable, "-m", "streamscore", "monitor", "-c", str(mon_cfg)],
                               stdout=mlog, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    scorer = ScorerProcess(cfg, tmp_path / "scorer.log")
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        drift = DriftSpec(start_at=k, shift={"f03": 3.0, "f07": -3.0})
        producer = threading.Thread(target=produce_events, args=({"bootstrap.servers": bootstrap}, t_in, n),
                                    kwargs={"seed": 51, "rate": 6_000, "drift": drift})
        producer.start()
        producer.join(60)
        read_all(bootstrap, t_out, expect=n, timeout=60, alive=scorer)

        def drifted() -> set[str]:
            return {x["feature"] for x in (f for _, f in r.xrange(f"{prefix}:alerts")) if x.get("state") == "raised"}

        wait_for(lambda: {"f03", "f07"} <= drifted(), 90, "drift alerts for f03 and f07 in Redis")
        assert drifted() - {"f03", "f07", "__score__"} == set(), f"unexpected alerts {drifted()}"
        state = r.hgetall(f"{prefix}:drift:fraud-mlp:f03")
        assert state["status"] == "drift" and float(state["value"]) > float(state["threshold"])
        assert r.hgetall(f"{prefix}:drift:fraud-mlp:f01")["status"] == "ok"
        shown = subprocess.run([sys.executable, "-m", "streamscore", "drift", "show", "--redis-url", redis_url,
                                "--prefix", prefix], capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert shown.returncode == 0 and "f03" in shown.stdout and "drift" in shown.stdout, shown.stdout
        tail = subprocess.run([sys.executable, "-m", "streamscore", "alerts", "tail", "--redis-url", redis_url,
                               "--prefix", prefix], capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert tail.returncode == 0 and "f07" in tail.stdout, tail.stdout
        assert scorer.terminate() == 0
    finally:
        scorer.close()
        monitor.terminate()
        try:
            monitor.wait(30)
        except subprocess.TimeoutExpired:
            monitor.kill()
        mlog.close()
