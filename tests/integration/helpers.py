"""Helpers for integration tests: run the scorer as a real process, read topics back."""

from __future__ import annotations

import datetime
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import fastavro
import yaml
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

ROOT = Path(__file__).resolve().parents[2]


def write_config(path: Path, bootstrap: str, group: str, pipelines: list[dict[str, Any]], **extra: Any) -> Path:
    cfg = {"kafka": {"bootstrap_servers": bootstrap}, "group_id": group, "pipelines": pipelines, **extra}
    path.write_text(yaml.safe_dump(cfg))
    return path


class ScorerProcess:
    """``streamscore serve`` in a child process, its output captured to a file."""

    def __init__(self, config: Path, log: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.log = log
        self._out = open(log, "ab")
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        full_env.pop("KAFKA_BOOTSTRAP", None)   # the config file names the broker
        self.proc = subprocess.Popen([sys.executable, "-m", "streamscore", "-v", "serve", "-c", str(config), *args],
                                     stdout=self._out, stderr=subprocess.STDOUT, cwd=ROOT, env=full_env)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def terminate(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def close(self) -> None:
        self.kill()
        self._out.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def read_all(bootstrap: str, topic: str, *, expect: int | Callable[[list[Any]], bool], timeout: float = 120.0,
             isolation: str = "read_uncommitted", idle: float = 0.0,
             alive: "ScorerProcess | None" = None) -> list[Any]:
    """Read ``topic`` from the beginning until ``expect`` messages (or predicate) or the deadline.

    With ``idle`` > 0, keep reading until no message arrived for that long (to catch extras).
    """
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{time.monotonic_ns()}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "isolation.level": isolation})
    c.subscribe([topic])
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    done = (lambda xs: len(xs) >= expect) if isinstance(expect, int) else expect
    try:
        while time.monotonic() < deadline:
            if alive is not None and alive.proc.poll() is not None:
                raise AssertionError(f"the scorer exited ({alive.proc.returncode}):\n{alive.output()[-3000:]}")
            msgs = c.consume(10000, 0.5)
            for m in msgs:
                if m.error() is None:
                    out.append(m)
                    last = time.monotonic()
            if done(out) and (idle <= 0 or time.monotonic() - last >= idle):
                break
    finally:
        c.close()
    return out


_SCHEMAS: dict[str, Any] = {}


def _decode_with(name: str, value: bytes) -> dict[str, Any]:
    """Independent of our codec: fastavro on the body after the 5-byte wire header."""
    if name not in _SCHEMAS:
        import json

        _SCHEMAS[name] = fastavro.parse_schema(json.loads((ROOT / "schemas" / f"{name}.avsc").read_text()))
    assert value[0] == 0, "magic byte"
    return fastavro.schemaless_reader(io.BytesIO(value[5:]), _SCHEMAS[name])  # type: ignore[return-value]


def decode_transaction(value: bytes) -> dict[str, Any]:
    return _decode_with("transaction", value)


def decode_prediction(value: bytes) -> dict[str, Any]:
    rec = _decode_with("prediction", value)
    for k in ("event_time", "scored_at"):   # fastavro turns timestamp-millis into datetimes
        v = rec.get(k)
        if isinstance(v, datetime.datetime):
            rec[k] = round(v.timestamp() * 1000)
    return rec


def committed(bootstrap: str, group: str, topic: str, partitions: int, *, timeout: float = 30.0) -> dict[int, int]:
    """The group's committed offsets; retried while the coordinator moves or loads (a busy broker)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
                return {tp.partition: tp.offset for tp in tps}
            except KafkaException as exc:
                if not exc.args[0].retriable() and exc.args[0].code() not in _COORDINATOR_MOVING \
                        or time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)
    finally:
        c.close()


_COORDINATOR_MOVING = {KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                       KafkaError.COORDINATOR_NOT_AVAILABLE}


def wait_for(cond: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
