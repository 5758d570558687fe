"""A real Prometheus (Debian's binary) scrapes scorer metrics; values read back via its HTTP API.

The first test feeds a ScorerMetrics endpoint known batches, so the bucket arithmetic of
the p99 can be checked exactly; the second scrapes a real `streamscore serve` scoring
real events from a real broker.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from monitoring.metrics import MetricsServer, ScorerMetrics

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("prometheus") is None and not os.environ.get("CI"),
                       reason="prometheus not installed (apt-get install prometheus)"),
]
ALERTS = Path(__file__).resolve().parents[2] / "monitoring" / "prometheus" / "alerts.yml"
STEPS = 40                   # batches fed, 0.1 s apart
FAST, SLOW = 90, 10          # per batch: 90 events at 12 ms, 10 at 120 ms -> p99 in the (0.1, 0.15] bucket


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(cond: Callable[[], Any], timeout: float, what: str, alive: Callable[[], bool] = lambda: True) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise AssertionError(f"{what}: process exited")
        try:
            got = cond()
        except OSError:
            got = None
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def scorer() -> Iterator[tuple[MetricsServer, Callable[[], None], threading.Event]]:
    reg = CollectorRegistry()
    metrics = ScorerMetrics(registry=reg, instance="scorer-0")
    server = MetricsServer(0, reg, host="127.0.0.1")
    metrics.consumer_stats(json.dumps({"topics": {"tx": {"partitions": {"0": {"consumer_lag": 42}}}}}))
    done = threading.Event()
    batch = np.concatenate([np.full(FAST, 0.012), np.full(SLOW, 0.12)])

    def feed() -> None:
        for _ in range(STEPS):
            # one call per batch: every scrape sees whole batches, so bucket ratios stay exact
            metrics.batch_consumed("fraud", FAST + SLOW)
            metrics.e2e_latency("fraud", batch)
            time.sleep(0.1)
        done.set()

    t = threading.Thread(target=feed, daemon=True)
    try:
        yield server, t.start, done          # the test starts feeding once Prometheus scrapes the target
    finally:
        if t.is_alive():
            t.join(10)
        server.close()


@pytest.fixture
def prometheus(tmp_path: Path, scorer: tuple[MetricsServer, Callable[[], None], threading.Event]) -> Iterator[str]:
    server, _, _ = scorer
    with _prometheus(tmp_path, server.port) as base:
        yield base


@contextlib.contextmanager
def _prometheus(tmp_path: Path, target_port: int) -> Iterator[str]:
    port = _free_port()
    shutil.copyfile(ALERTS, tmp_path / "alerts.yml")
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "rule_files: [alerts.yml]\n"
        "scrape_configs:\n  - job_name: streamscore\n    honor_labels: true\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{target_port}']}}]\n")
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen([shutil.which("prometheus") or "prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: urllib.request.urlopen(base + "/-/ready", timeout=2).status == 200, 60, "prometheus ready",
              alive=lambda: proc.poll() is None)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def _query(base: str, expr: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    body = json.loads(urllib.request.urlopen(url, timeout=5).read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_prometheus_scrapes_events_and_e2e_p99(prometheus: str, scorer: tuple[MetricsServer, Callable[[], None], threading.Event]) -> None:
    _, start_feeding, done = scorer
    _wait(lambda: [r for r in _query(prometheus, 'up{job="streamscore"}') if r["value"][1] == "1"], 30, "first scrape")
    start_feeding()
    assert done.wait(30), "feeder did not finish"
    total = float(STEPS * (FAST + SLOW))

    def events_in() -> list[dict[str, Any]] | None:
        res = _query(prometheus, 'streamscore_events_total{direction="in"}')
        return res if res and float(res[0]["value"][1]) == total else None

    (series,) = _wait(events_in, 30, f"streamscore_events_total == {total}")
    assert series["metric"]["pipeline"] == "fraud" and series["metric"]["instance"] == "scorer-0"
    assert series["metric"]["job"] == "streamscore"

    (p99,) = _query(prometheus, "histogram_quantile(0.99, sum(rate(streamscore_e2e_latency_seconds_bucket[1m])) by (le))")
    # rank 0.99 of each batch falls 9/10 of the way into the (0.1, 0.15] bucket: 0.1 + 0.05 * 0.9
    assert float(p99["value"][1]) == pytest.approx(0.145, rel=1e-6)
    (lag,) = _query(prometheus, 'streamscore_consumer_lag{topic="tx"}')
    assert float(lag["value"][1]) == 42

    rules = json.loads(urllib.request.urlopen(prometheus + "/api/v1/rules", timeout=5).read())["data"]["groups"]
    loaded = {r["name"] for g in rules for r in g["rules"]}
    assert {"StreamscoreE2ELatencyP99High", "StreamscoreConsumerStalled", "StreamscoreFeatureDrift"} <= loaded
    assert all(r["health"] in ("ok", "unknown") for g in rules for r in g["rules"])


def test_prometheus_scrapes_a_real_scorer(tmp_path: Path, bootstrap: str, names: Callable[[str], str],
                                          topics: Callable[..., None]) -> None:
    from streamscore.produce import produce_events
    from tests.integration.helpers import ScorerProcess, read_all, write_config

    n = 5_000
    t_in, t_out = names("tx"), names("pred")
    topics({t_in: 2, t_out: 2})
    metrics_port = _free_port()
    cfg = write_config(tmp_path / "p.yaml", bootstrap, names("g"),
                       [{"name": "fraud", "input": {"topic": t_in}, "model": {"name": "fraud-mlp"},
                         "output": {"topic": t_out}}], metrics_port=metrics_port)
    proc = ScorerProcess(cfg, tmp_path / "scorer.log", "--instance", "scorer-real")
    try:
        with _prometheus(tmp_path, metrics_port) as prom:
            _wait(lambda: [r for r in _query(prom, 'up{job="streamscore"}') if r["value"][1] == "1"], 60,
                  "first scrape of the scorer", alive=lambda: proc.proc.poll() is None)
            produce_events({"bootstrap.servers": bootstrap, "linger.ms": 1}, t_in, n, rate=2_500, seed=31)
            assert len(read_all(bootstrap, t_out, expect=n, timeout=60)) == n

            def scraped_all() -> list[dict[str, Any]] | None:
                res = _query(prom, 'streamscore_events_total{direction="out",instance="scorer-real"}')
                return res if res and float(res[0]["value"][1]) == n else None

            _wait(scraped_all, 30, f"streamscore_events_total == {n}")
            (p99,) = _query(prom, "histogram_quantile(0.99, sum(rate(streamscore_e2e_latency_seconds_bucket[1m])) by (le))")
            value = float(p99["value"][1])
            assert 0.0 < value < 10.0, f"p99 end-to-end latency {value}s"
            (info,) = _query(prom, "streamscore_model_info")
            assert info["metric"]["model"] == "fraud-mlp" and info["metric"]["variant"] == "primary"
        assert proc.terminate() == 0
    finally:
        proc.close()
