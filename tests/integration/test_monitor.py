"""The drift / shadow monitor end to end: real Kafka, real Redis, the Faust app in a child process.

Telemetry comes from ``TelemetryBuilder`` on demo batches scored by the demo ONNX model.
Event time is synthetic (``EPOCH + 10 ms * index``): 1,000-event batches are 10 s apart,
50 s windows hold 5 batches, so window w is events [5000 w, 5000 (w + 1)).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from confluent_kafka import Producer

from models import DEMO_REGISTRY
from models.demo_data import DriftSpec, generate
from models.registry import ModelRegistry
from monitoring.redis_state import Keys, connect
from monitoring.telemetry import TelemetryBuilder
from streamscore.dev.redis import start_redis
from tests.integration.helpers import ROOT, wait_for

pytestmark = pytest.mark.integration

BATCH = 1_000
PER_WINDOW = 5
WINDOW_MS = BATCH * PER_WINDOW * 10
SHADOW_FLIP = 0.07


@lru_cache(maxsize=1)
def _model() -> tuple[Any, Any]:
    reg = ModelRegistry(DEMO_REGISTRY)
    entry = reg.get("fraud-mlp")
    return entry, reg.load(entry)


def telemetry(batches: range, *, seed: int, drift: DriftSpec | None = None, shadow: bool = False) -> list[bytes]:
    entry, model = _model()
    tb = TelemetryBuilder(pipeline="fraud", model=entry.name, version=entry.version,
                          reference_profile=entry.reference_profile, feature_names=list(entry.input_spec.names),
                          threshold=entry.decision_threshold)
    out = []
    for b in batches:
        cols = generate(BATCH, seed=seed, start=b * BATCH, drift=drift)
        scores = model.predict(entry.input_spec.assemble(cols))
        kw: dict[str, Any] = {}
        if shadow:  # flip the decision on a deterministic ~7% of rows
            flip = np.random.default_rng([seed, b]).random(BATCH) < SHADOW_FLIP
            primary_yes = scores >= entry.decision_threshold
            kw = {"shadow_scores": np.where(flip, np.where(primary_yes, 0.0, 1.0), scores).astype(np.float32),
                  "shadow_model": "fraud-shadow", "shadow_version": "2"}
        s = tb.summarize(cols, scores, event_time_ms=cols["event_time"], batch_id=f"{seed}-{b}", **kw)
        out.append(tb.encode(s))
    return out


def publish(bootstrap: str, topic: str, values: list[bytes]) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for v in values:
        p.produce(topic, v, key=b"fraud-mlp")
    assert p.flush(30) == 0


class Monitor:
    """``python -m monitoring.monitor_app`` in a child process."""

    def __init__(self, tmp: Path, name: str, config: dict[str, Any]) -> None:
        cfg = tmp / f"{name}.json"
        cfg.write_text(json.dumps(config))
        self.log = tmp / f"{name}.log"
        self._out = open(self.log, "ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "monitoring.monitor_app", "-c", str(cfg)],
                                     stdout=self._out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        self._out.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def _config(bootstrap: str, redis_url: str, topic: str, app_id: str, prefix: str) -> dict[str, Any]:
    return {"broker": bootstrap, "telemetry_topic": topic, "redis_url": redis_url, "redis_prefix": prefix,
            "app_id": app_id, "window_ms": WINDOW_MS, "k": 2, "m": 2, "commit_interval_s": 0.5, "loglevel": "info"}


def _windows(redis_url: str, prefix: str) -> dict[str, dict[str, Any]]:
    raw = connect(redis_url).hgetall(Keys(prefix).windows)
    return {k: json.loads(v) for k, v in raw.items()}


def _alerts(redis_url: str, prefix: str) -> list[dict[str, str]]:
    return [fields for _id, fields in connect(redis_url).xrange(Keys(prefix).alerts)]


def _wait_windows(mon: Monitor, redis_url: str, prefix: str, count: int, timeout: float = 90) -> None:
    def done() -> bool:
        assert mon.proc.poll() is None, f"monitor exited:\n{mon.output()}"
        return len(_windows(redis_url, prefix)) >= count
    try:
        wait_for(done, timeout, f"{count} closed windows under {prefix}")
    except AssertionError as exc:  # where it stood: group, recovery, restored vs. first-read offset (INFO)
        closed = sorted(_windows(redis_url, prefix))
        raise AssertionError(f"{exc}; closed: {closed}\nmonitor log:\n{mon.output()}") from None


def test_stationary_stream_no_alerts_and_shadow_agreement(tmp_path: Path, bootstrap: str, redis_url: str,
                                                          names: Callable[[str], str],
                                                          topics: Callable[..., None]) -> None:
    windows = 22
    topic, prefix = names("telemetry"), names("ss")
    topics({topic: 1})
    publish(bootstrap, topic, telemetry(range(windows * PER_WINDOW + 1), seed=3, shadow=True))  # +1 closes the last
    mon = Monitor(tmp_path, "mon", _config(bootstrap, redis_url, topic, names("app"), prefix))
    try:
        _wait_windows(mon, redis_url, prefix, windows)
    finally:
        mon.stop()
    assert _alerts(redis_url, prefix) == []
    r = connect(redis_url)
    keys = Keys(prefix)
    assert "fraud-mlp:f03" in r.smembers(keys.drift_index)
    assert "fraud-mlp:__score__" in r.smembers(keys.drift_index)
    f03 = r.hgetall(keys.drift("fraud-mlp", "f03"))
    assert f03["status"] == "ok" and float(f03["psi"]) < 0.05 and len(json.loads(f03["current"])) == 10
    shadow = r.hgetall(keys.shadow("fraud-mlp", "fraud-shadow"))
    assert int(shadow["n_pairs"]) == BATCH * PER_WINDOW
    assert abs(float(shadow["agreement_rate"]) - (1 - SHADOW_FLIP)) <= 0.01, shadow
    per_window = [w["shadow"]["fraud-shadow"] for w in _windows(redis_url, prefix).values()]
    total = sum(w["agree"] for w in per_window) / sum(w["n_pairs"] for w in per_window)
    assert abs(total - (1 - SHADOW_FLIP)) <= 0.01
    assert r.get(keys.heartbeat)


def _comparable_drift(redis_url: str, prefix: str) -> dict[str, dict[str, str]]:
    r = connect(redis_url)
    keys = Keys(prefix)
    out = {}
    for member in r.smembers(keys.drift_index):
        model, _, feature = member.partition(":")
        h = r.hgetall(keys.drift(model, feature))
        h.pop("updated_at")
        out[member] = h
    return out


def test_drift_alerts_and_kill_restart_same_results(tmp_path: Path, bootstrap: str, redis_url: str,
                                                    names: Callable[[str], str], topics: Callable[..., None]) -> None:
    windows, drift_window = 14, 8
    start = drift_window * PER_WINDOW * BATCH
    drift = DriftSpec(start_at=start, shift={"f03": 2.0, "f07": -1.5})
    topic = names("telemetry")
    topics({topic: 1})
    values = telemetry(range(windows * PER_WINDOW + 1), seed=5, drift=drift)
    half = 6 * PER_WINDOW + 2  # the kill comes with window 6 half full
    publish(bootstrap, topic, values[:half])

    pa, pb, app_b = names("a"), names("b"), names("appb")
    killed = Monitor(tmp_path, "b1", _config(bootstrap, redis_url, topic, app_b, pb))
    try:
        _wait_windows(killed, redis_url, pb, 6)
        wait_for(lambda: connect(redis_url).get(Keys(pb).heartbeat) is not None, 30, "heartbeat")
    finally:
        killed.kill()
        killed.stop()
    publish(bootstrap, topic, values[half:])
    straight = Monitor(tmp_path, "a", _config(bootstrap, redis_url, topic, names("appa"), pa))
    restarted = Monitor(tmp_path, "b2", _config(bootstrap, redis_url, topic, app_b, pb))
    try:
        _wait_windows(straight, redis_url, pa, windows, timeout=120)
        _wait_windows(restarted, redis_url, pb, windows, timeout=120)
    finally:
        straight.stop()
        restarted.stop()

    # (b) alerts for exactly the drifted features (and the score they move), within two windows of the drift
    alerts = _alerts(redis_url, pa)
    raised = {a["feature"]: int(a["window_start"]) for a in alerts if a["state"] == "raised"}
    assert set(raised) - {"__score__"} == {"f03", "f07"}, alerts
    first_drifted = drift.start_at * 10 + 1_700_000_000_000
    for feature in ("f03", "f07"):
        assert raised[feature] <= first_drifted + 2 * WINDOW_MS, (feature, raised)
    assert all(a["severity"] in ("warning", "critical") for a in alerts)

    # (d) the killed-and-restarted monitor ends with the same results
    got, want = _windows(redis_url, pb), _windows(redis_url, pa)
    assert got == want, (
        f"windows that differ: { {k: (got.get(k), want.get(k)) for k in set(got) | set(want) if got.get(k) != want.get(k)} }"
        f"\nkilled monitor's log:\n{killed.output()}\nrestarted monitor's log:\n{restarted.output()}")
    assert _comparable_drift(redis_url, pb) == _comparable_drift(redis_url, pa)
    strip = [{k: v for k, v in a.items() if k != "raised_at"} for a in alerts]
    assert [{k: v for k, v in a.items() if k != "raised_at"} for a in _alerts(redis_url, pb)] == strip


def test_redis_killed_and_restarted_mid_window_loses_and_doubles_nothing(
        tmp_path: Path, bootstrap: str, redis_url: str, names: Callable[[str], str],
        topics: Callable[..., None]) -> None:
    """The monitor's Redis is SIGKILLed with a window half full and drift alerts still to come, and
    restarted (append-only file on, same port) a few seconds later: the monitor holds its stream
    meanwhile, then catches up to the same windows, drift state and alerts as a monitor whose
    Redis never went away."""
    windows, drift_window = 14, 8
    drift = DriftSpec(start_at=drift_window * PER_WINDOW * BATCH, shift={"f03": 2.0, "f07": -1.5})
    topic = names("telemetry")
    topics({topic: 1})
    values = telemetry(range(windows * PER_WINDOW + 1), seed=6, drift=drift)
    half = 6 * PER_WINDOW + 2
    publish(bootstrap, topic, values[:half])
    own = start_redis(tmp_path / "redis", persistent=True)
    port = int(own.url.rsplit(":", 1)[1].split("/")[0])
    pa, pb = names("a"), names("b")
    straight = Monitor(tmp_path, "a", _config(bootstrap, redis_url, topic, names("appa"), pa))
    outage = Monitor(tmp_path, "b", _config(bootstrap, own.url, topic, names("appb"), pb))
    try:
        _wait_windows(outage, own.url, pb, 6)
        own.kill()
        publish(bootstrap, topic, values[half:])     # windows 6..13 close while Redis is down
        wait_for(lambda: "redis write failed" in outage.output(), 60, "the monitor meeting the outage")
        wait_for(lambda: outage.output().count("redis write failed") >= 3, 30, "a few retries")
        assert outage.proc.poll() is None, outage.output()
        own = start_redis(tmp_path / "redis", port=port, persistent=True)
        _wait_windows(straight, redis_url, pa, windows, timeout=120)
        _wait_windows(outage, own.url, pb, windows, timeout=120)
        assert outage.proc.poll() is None, outage.output()
        assert _windows(own.url, pb) == _windows(redis_url, pa)
        assert _comparable_drift(own.url, pb) == _comparable_drift(redis_url, pa)
        strip = [{k: v for k, v in a.items() if k != "raised_at"} for a in _alerts(redis_url, pa)]
        assert {a["feature"] for a in strip if a["state"] == "raised"} - {"__score__"} == {"f03", "f07"}
        assert [{k: v for k, v in a.items() if k != "raised_at"} for a in _alerts(own.url, pb)] == strip
    finally:
        straight.stop()
        outage.stop()
        own.stop()


def test_a_commit_ahead_of_the_state_is_read_again_from_the_state(tmp_path: Path, bootstrap: str, redis_url: str,
                                                                  names: Callable[[str], str],
                                                                  topics: Callable[..., None]) -> None:
    """The group's committed offset is moved 3 records past the last state the killed monitor
    wrote (what a commit that outran its changelog write leaves behind): the restarted monitor
    resumes after its restored state all the same, so its windows equal a straight run's."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    windows = 6
    topic = names("telemetry")
    topics({topic: 1})
    values = telemetry(range(windows * PER_WINDOW + 1), seed=9)
    first = 2 * PER_WINDOW + 1        # window 2 has one batch when the monitor is killed
    publish(bootstrap, topic, values[:first])
    pa, pb, app_b = names("a"), names("b"), names("appb")
    killed = Monitor(tmp_path, "b1", _config(bootstrap, redis_url, topic, app_b, pb))
    admin = Consumer({"bootstrap.servers": bootstrap, "group.id": app_b, "enable.auto.commit": False})
    tp = TopicPartition(topic, 0)
    try:
        _wait_windows(killed, redis_url, pb, 2)
        # everything read is committed (so the state holds offset first - 1)
        wait_for(lambda: admin.committed([tp], timeout=10)[0].offset == first, 60, "the killed monitor's commit")
    finally:
        killed.kill()
        killed.stop()
    publish(bootstrap, topic, values[first:])

    def commit_ahead() -> bool:   # accepted once the dead member has left the group (session timeout)
        try:
            admin.commit(offsets=[TopicPartition(topic, 0, first + 3)], asynchronous=False)
            return True
        except KafkaException:
            return False

    wait_for(commit_ahead, 60, "committing past the state")
    admin.close()
    straight = Monitor(tmp_path, "a", _config(bootstrap, redis_url, topic, names("appa"), pa))
    restarted = Monitor(tmp_path, "b2", _config(bootstrap, redis_url, topic, app_b, pb))
    try:
        _wait_windows(straight, redis_url, pa, windows, timeout=120)
        _wait_windows(restarted, redis_url, pb, windows, timeout=120)
    finally:
        straight.stop()
        restarted.stop()
    got, want = _windows(redis_url, pb), _windows(redis_url, pa)
    assert got == want, (f"windows that differ: { {k: (got.get(k), want.get(k)) for k in set(got) | set(want) if got.get(k) != want.get(k)} }"
                         f"\nrestarted monitor's log:\n{restarted.output()}")
    assert [w["batches"] for _, w in sorted(got.items())] == [PER_WINDOW] * windows
    assert f"first record at offset {first}, restored state at offset {first - 1}" in restarted.log.read_text(
        errors="replace")
