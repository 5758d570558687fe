"""MLflow as the model registry: a real ``mlflow server`` (sqlite, local artifacts, loopback);
the model served under alias ``champion``, and moving the alias mid-stream swaps it in."""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from models import DEMO_REGISTRY
from models.demo_data import generate
from models.registry import ModelRegistry
from streamscore.produce import produce_events
from tests.integration.helpers import ScorerProcess, decode_prediction, read_all, wait_for, write_config

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    log = open(tmp / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp}/db.sqlite",
                             "--artifacts-destination", str(tmp / "artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert proc.poll() is None, (tmp / "server.log").read_text()[-2000:]
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        wait_for(healthy, 240, "mlflow server /health", interval=0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


def _log_versions(url: str, name: str, count: int) -> None:
    """``count`` versions of the demo ONNX model, each tagged with its streamscore spec."""
    import mlflow
    import onnx
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(url)
    demo = ModelRegistry(DEMO_REGISTRY).get("fraud-mlp")
    spec = {"input_spec": demo.input_spec.to_dict(), "decision_threshold": demo.decision_threshold}
    client = MlflowClient()
    for _ in range(count):   # a fresh proto each time: log_model moves tensors out of the one it is given
        mlflow.onnx.log_model(onnx.load(str(demo.artifact_path)), name="model", registered_model_name=name)
    for v in range(1, count + 1):
        client.set_model_version_tag(name, str(v), "streamscore.spec", json.dumps(spec))
    client.set_registered_model_alias(name, "champion", "1")


def test_alias_served_and_moved_mid_stream(mlflow_url: str, tmp_path: Path, bootstrap: str,
                                           names: Callable[[str], str], topics: Callable[..., None]) -> None:
    from mlflow import MlflowClient

    _log_versions(mlflow_url, "fraud", 2)
    t_in, t_out = names("tx"), names("pred")
    topics({t_in: 4, t_out: 4})
    cfg = write_config(tmp_path / "p.yaml", bootstrap, names("g"),
                       [{"name": "fraud", "input": {"topic": t_in}, "output": {"topic": t_out},
                         "model": {"name": "fraud@champion", "watch_interval_ms": 200}, "telemetry": {"enabled": False}}],
                       registry=f"mlflow+{mlflow_url}")
    scorer = ScorerProcess(cfg, tmp_path / "scorer.log")
    # events keep arriving until 2 s after the swap, however long loading version 2 takes
    stop_at: list[float] = []
    produced: list[Any] = []
    producer = threading.Thread(target=lambda: produced.append(produce_events(
        {"bootstrap.servers": bootstrap}, t_in, 300_000, seed=43, rate=1_500,
        stop=lambda: bool(stop_at) and time.monotonic() >= stop_at[0])))
    try:
        wait_for(lambda: "assigned" in scorer.output() or scorer.proc.poll() is not None, 120, "scorer assigned")
        producer.start()
        wait_for(lambda: len(read_all(bootstrap, t_out, expect=3_000, timeout=3)) >= 3_000, 120, "3,000 scored")
        MlflowClient(mlflow_url).set_registered_model_alias("fraud", "champion", "2")
        wait_for(lambda: "fraud swapped 1 -> 2" in scorer.output() or scorer.proc.poll() is not None, 120, "the swap")
        stop_at.append(time.monotonic() + 2.0)
        producer.join(60)
        n = produced[0].events
        msgs = read_all(bootstrap, t_out, expect=n, timeout=120, idle=2.0, alive=scorer)
        assert scorer.terminate() == 0, scorer.output()[-3000:]
    finally:
        stop_at.append(0.0)
        scorer.close()
    assert "fraud swapped 1 -> 2" in scorer.output(), scorer.output()[-3000:]
    preds = [(m.partition(), decode_prediction(m.value())) for m in msgs]
    ids = collections.Counter(p["event_id"] for _, p in preds)
    assert set(ids) == set(generate(n, seed=43)["event_id"].tolist())
    assert max(ids.values()) == 1, "an event was scored twice"
    for part in range(4):
        versions = [p["version"] for q, p in preds if q == part]
        switch = versions.index("2") if "2" in versions else len(versions)
        assert versions[:switch] == ["1"] * switch and set(versions[switch:]) <= {"2"}, f"partition {part} interleaves"
    assert {p["version"] for _, p in preds} == {"1", "2"}
    assert {p["model"] for _, p in preds} == {"fraud"}
