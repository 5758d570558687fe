"""Small helpers shared by the dev-service launchers."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable

from schemas.errors import ServiceError


def cache_root() -> Path:
    """Where resolved jars and local service state live (outside the repository)."""
    root = Path(os.environ.get("STREAMSCORE_HOME", Path.home() / ".cache" / "streamscore"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def stop_process(proc: "subprocess.Popen[bytes] | None", timeout: float = 30.0) -> None:
    """SIGTERM, wait up to ``timeout``, then SIGKILL; a process already gone is fine."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def java_and_kafka_libs() -> tuple[str, Path]:
    """The java binary and the cached broker jars (resolved with mvn on first use)."""
    import shutil

    from streamscore.dev.kafka import kafka_libs

    java = shutil.which("java")
    if java is None:
        raise ServiceError("java not found: a JDK 17+ is needed to run the Kafka broker")
    return java, kafka_libs()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    ready: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    alive: Callable[[], bool] = lambda: True,
    log: Path | None = None,
    interval: float = 0.25,
) -> None:
    """Poll ``ready`` until true; fail early with the log's tail if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if not alive():
            raise ServiceError(f"{what} exited during startup{_tail(log)}")
        time.sleep(interval)
    raise ServiceError(f"{what} not ready after {timeout:.0f}s{_tail(log)}")


def _tail(log: Path | None, lines: int = 30) -> str:
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace").splitlines()[-lines:]
    return f"; last lines of {log}:\n" + "\n".join(text)
