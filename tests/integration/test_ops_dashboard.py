"""The ops dashboard against a real Redis, loaded in headless Chromium.

Seeds the monitor's Redis layout (drift hashes + index, shadow hash + index, alerts stream)
and a live ScorerMetrics endpoint, serves the page, and checks the rendered DOM (drift
table, alerts list, a drawn histogram canvas) and a screenshot's pixels. The screenshot is
written under the test's tmp_path (docs/dashboard.png, the README's image, is tracked and
never rewritten by a test).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import redis
from prometheus_client import CollectorRegistry

from monitoring.dashboard import serve_dashboard
from monitoring.metrics import MetricsServer, ScorerMetrics
from monitoring.redis_state import Keys

pytestmark = pytest.mark.integration

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), shutil.which("google-chrome"))
                 if p), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                                    reason="chromium not installed (apt-get install chromium)")
REF = [0.02, 0.05, 0.10, 0.15, 0.18, 0.18, 0.15, 0.10, 0.05, 0.02]
CUR = [0.01, 0.02, 0.04, 0.08, 0.12, 0.15, 0.18, 0.18, 0.12, 0.10]


@pytest.fixture
def dash_redis_url(redis_url: str) -> Iterator[str]:
    """A Redis database of our own on the shared server: the monitor's keys are fixed names."""
    url = redis_url.rsplit("/", 1)[0] + "/13"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


def seed(url: str, model: str) -> dict[str, Any]:
    r = redis.Redis.from_url(url, decode_responses=True)
    now = int(time.time() * 1000)
    edges = [round(x, 3) for x in np.linspace(-3, 3, 11).tolist()]
    features = {"amount": ("drift", 0.31, REF, CUR), "f03": ("warning", 0.12, REF, REF[::-1]), "f01": ("ok", 0.01, REF, REF)}
    for feature, (status, value, ref, cur) in features.items():
        r.hset(f"streamscore:drift:{model}:{feature}", mapping={
            "model": model, "version": "3", "feature": feature, "statistic": "psi", "value": value,
            "threshold": 0.2, "status": status, "psi": value, "js": 0.04, "ks": 0.11, "chi2": "nan",
            "window_start": now - 60_000, "window_end": now, "n": 5000, "reference": json.dumps(ref),
            "current": json.dumps(cur), "edges": json.dumps(edges), "updated_at": now})
        r.sadd("streamscore:drift:index", f"{model}:{feature}")
    r.hset(f"streamscore:shadow:{model}:{model}-torch", mapping={
        "model": model, "version": "3", "shadow_model": f"{model}-torch", "shadow_version": "1", "n_pairs": 4000,
        "agreement_rate": 0.985, "diff_p50": 0.001, "diff_p90": 0.004, "diff_p99": 0.02,
        "window_start": now - 60_000, "window_end": now, "updated_at": now})
    r.sadd("streamscore:shadow:index", f"{model}:{model}-torch")
    for state in ("raised", "cleared", "raised"):
        r.xadd("streamscore:alerts", {"model": model, "version": "3", "feature": "f03" if state == "cleared" else "amount",
                                      "statistic": "psi", "value": 0.31, "threshold": 0.2, "window_start": now - 60_000,
                                      "window_end": now, "severity": "critical", "raised_at": now, "state": state})
    for version, variant, aucs in (("3", "primary", [0.93, 0.92, 0.94]), ("4", "canary", [0.90, float("nan"), 0.86])):
        for i, auc in enumerate(aucs):   # closed quality windows, as the monitor's ground truth writes them
            start = now - (3 - i) * 60_000
            r.hset("streamscore:quality:windows", f"{model}:{version}:{variant}:{start}", json.dumps({
                "pipeline": "fraud", "model": model, "version": version, "variant": variant, "window_start": start,
                "window_end": start + 60_000, "metrics": {"count": 400.0, "auc": auc, "accuracy": 0.97}}))
    from monitoring.redis_state import RedisState

    state = RedisState(url)
    for start, acc in ((now - 120_000, 0.95), (now - 60_000, 0.962)):    # live estimates, as the monitor writes them
        state.write_estimate("fraud", {"estimate": True, "model": model, "version": "3", "variant": "primary",
                                       "window_start": start, "window_end": start + 60_000, "count": 5120,
                                       "calibrated_on": 1200, "est_accuracy": acc, "est_precision": 0.7,
                                       "est_recall": float("nan")})
    state.close()
    r.close()
    return {"features": list(features)}


class Scorer:
    """A ScorerMetrics endpoint fed with synthetic batches (stands in for `streamscore serve`)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = ScorerMetrics(registry=self.registry, instance="scorer-0")
        self.server = MetricsServer(0, self.registry, host="127.0.0.1")
        self.metrics.consumer_stats(json.dumps({"topics": {"tx": {"partitions": {
            "0": {"consumer_lag": 1200}, "1": {"consumer_lag": 34}}}}}))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._feed, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}/metrics"

    def _feed(self) -> None:
        rng = np.random.default_rng(1)
        while not self._stop.wait(0.02):
            self.metrics.batch_consumed("fraud", 1000)
            self.metrics.batch_produced("fraud", 998)
            self.metrics.dead_letters("fraud", "decode", 2)
            self.metrics.e2e_latency("fraud", rng.exponential(0.01, 1000))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.server.close()


@pytest.fixture
def dashboard(dash_redis_url: str) -> Iterator[tuple[str, str]]:
    model = f"fraud-{uuid.uuid4().hex[:6]}"
    seed(dash_redis_url, model)
    scorer = Scorer()
    server, port = serve_dashboard(dash_redis_url, [scorer.url], poll_interval_s=0.25)
    try:
        yield f"http://127.0.0.1:{port}/", model
    finally:
        server.close()
        scorer.close()


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _wait(cond: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_json_endpoints_read_redis_and_metrics(dashboard: tuple[str, str]) -> None:
    base, model = dashboard
    status, drift = _get(base + "api/drift")
    assert status == 200
    by_feature = {d["feature"]: d for d in drift["items"] if d["model"] == model}
    assert set(by_feature) == {"amount", "f03", "f01"}
    amount = by_feature["amount"]
    assert amount["status"] == "drift" and amount["value"] == 0.31 and amount["n"] == 5000
    assert amount["reference"] == REF and amount["current"] == CUR and len(amount["edges"]) == 11
    assert amount["chi2"] is None                          # "nan" in Redis -> null in JSON
    status, alerts = _get(base + "api/alerts?n=2")
    assert status == 200 and [a["state"] for a in alerts["items"]] == ["raised", "cleared"]   # latest first
    status, shadow = _get(base + "api/shadow")
    assert status == 200 and shadow["items"][0]["agreement_rate"] == 0.985
    metrics = _wait(lambda: (m := _get(base + "api/metrics")[1]).get("events_in_per_s") and m)
    assert metrics["targets"] == [{"url": metrics["targets"][0]["url"], "up": True}]
    assert metrics["events_in_per_s"] > 1000 and metrics["events_in_total"] >= metrics["events_out_total"] > 0
    assert metrics["lag"] == {"tx[0]": 1200.0, "tx[1]": 34.0} and metrics["lag_total"] == 1234.0
    assert 0 < metrics["e2e_p99_s"] < 0.2
    status, quality = _get(base + "api/quality")
    arms = {q["arm"]: q for q in quality["items"] if q["model"] == model}
    assert status == 200 and set(arms) == {f"{model}:3:primary", f"{model}:4:canary"}
    assert [p["auc"] for p in arms[f"{model}:4:canary"]["points"]] == [0.90, None, 0.86]   # oldest first, NaN null
    status, est = _get(base + "api/estimate")
    [mine] = [e for e in est["items"] if e["model"] == model]
    assert status == 200 and mine["arm"] == f"{model}:3:primary" and mine["est_accuracy"] == 0.962   # the newest
    assert mine["count"] == 5120 and mine["est_recall"] is None
    assert _get(base + "api/nope")[0] == 404


def test_dashboard_reads_under_its_prefix(dash_redis_url: str) -> None:
    """``--prefix`` (the monitor's ``redis_prefix``): only that prefix's keys are shown."""
    model = f"fraud-{uuid.uuid4().hex[:6]}"
    seed(dash_redis_url, model)                        # under the default prefix
    keys = Keys("team-b")
    r = redis.Redis.from_url(dash_redis_url, decode_responses=True)
    r.hset(keys.drift("other-model", "f09"), mapping={"status": "drift", "value": 0.4})
    r.sadd(keys.drift_index, "other-model:f09")
    r.xadd(keys.alerts, {"model": "other-model", "feature": "f09", "state": "raised"})
    r.close()
    for prefix, want in (("team-b", {("other-model", "f09")}), ("streamscore", {(model, f) for f in ("amount", "f03", "f01")})):
        server, port = serve_dashboard(dash_redis_url, [], prefix=prefix)
        try:
            status, drift = _get(f"http://127.0.0.1:{port}/api/drift")
            assert status == 200 and {(d["model"], d["feature"]) for d in drift["items"]} == want
            alerts = _get(f"http://127.0.0.1:{port}/api/alerts")[1]["items"]
            assert {a["model"] for a in alerts} == {m for m, _ in want}
        finally:
            server.close()


def test_redis_down_answers_503() -> None:
    server, port = serve_dashboard("redis://127.0.0.1:1/0", [])
    try:
        status, body = _get(f"http://127.0.0.1:{port}/api/drift")
        assert status == 503 and "error" in body
        status, body = _get(f"http://127.0.0.1:{port}/api/metrics")
        assert status == 200 and body["targets"] == []
    finally:
        server.close()


def _chromium(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None, "chromium is required in CI (Debian package: chromium)"
    with tempfile.TemporaryDirectory(prefix="streamscore-chromium-") as profile:
        cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,900",
               "--virtual-time-budget=5000", *args, url]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def read_png(path: Path) -> np.ndarray:
    """A minimal PNG decoder (8-bit RGB/RGBA, non-interlaced): enough for a Chromium screenshot."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    assert header is not None
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and color in (2, 6) and interlace == 0, header
    bpp = 3 if color == 2 else 4
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(height, 1 + width * bpp)
    out = np.zeros((height, width * bpp), dtype=np.int32)
    prev = np.zeros(width * bpp, dtype=np.int32)
    for y in range(height):
        ftype, line = raw[y, 0], raw[y, 1:].astype(np.int32)
        if ftype == 0:
            cur = line
        elif ftype == 2:
            cur = (line + prev) & 0xFF
        else:                                               # Sub, Average, Paeth depend on the left byte
            cur = np.zeros_like(line)
            for x in range(len(line)):
                a = cur[x - bpp] if x >= bpp else 0
                b, c = prev[x], (prev[x - bpp] if x >= bpp else 0)
                if ftype == 1:
                    pred = a
                elif ftype == 3:
                    pred = (a + b) // 2
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                cur[x] = (line[x] + pred) & 0xFF
        out[y] = cur
        prev = cur
    return out.reshape(height, width, bpp)[:, :, :3].astype(np.uint8)


@needs_chromium
def test_page_renders_drift_table_alerts_and_charts(dashboard: tuple[str, str], tmp_path: Path) -> None:
    url, model = dashboard
    res = _chromium("--dump-dom", url=url)
    assert res.returncode == 0, res.stderr[-2000:]
    dom = _Tags()
    dom.feed(res.stdout)
    rows = {a["data-key"]: a.get("data-status") for t, a in dom.tags if t == "tr" and "data-status" in a and a["data-key"].startswith(model + ":")}
    assert rows == {f"{model}:amount": "drift", f"{model}:f03": "warning", f"{model}:f01": "ok"}
    alerts = [a for t, a in dom.tags if t == "li" and "data-state" in a]
    assert [a["data-state"] for a in alerts] == ["raised", "cleared", "raised"]
    assert alerts[0]["data-feature"] == "amount"
    canvases = {a["id"]: a for t, a in dom.tags if t == "canvas"}
    assert canvases["hist"].get("data-drawn") == f"{model}:amount"   # the drifting feature is selected first
    assert canvases["hist"].get("data-bins") == "10"
    assert int(canvases["tput-chart"].get("data-points", "0")) >= 1
    assert canvases["quality-chart"].get("data-series") == "2"       # primary and canary on one chart
    arms = [a["data-arm"] for t, a in dom.tags if t == "tr" and "data-arm" in a]
    assert f"{model}:3:primary" in arms                              # the live estimate's row
    text = " ".join(dom.text)
    assert "98.50%" in text and f"{model}-torch" in text             # shadow agreement
    assert "1234" in text                                            # consumer lag tile

    shot = tmp_path / "dashboard.png"
    res = _chromium(f"--screenshot={shot}", url=url)
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    px = read_png(shot)
    assert px.shape[:2] == (900, 1280)
    assert px.std() > 10, "the screenshot is blank"
    colors = px.reshape(-1, 3).astype(np.int32)
    near = lambda rgb: int((np.abs(colors - np.array(rgb)).sum(axis=1) < 30).sum())   # noqa: E731
    assert near((0x58, 0xA6, 0xFF)) > 500, "no reference bars drawn"
    assert near((0xF0, 0x88, 0x3E)) > 500, "no current bars drawn"
