"""Debian's ``redis-server`` on a free loopback port."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from schemas.errors import ServiceError
from streamscore.dev.util import free_port, stop_process, wait_until


@dataclass
class RedisServer:
    url: str
    process: subprocess.Popen[bytes] | None
    log: Path

    def stop(self, timeout: float = 10.0) -> None:
        stop_process(self.process, timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1.0).ping())
    except Exception:
        return False


def start_redis(home: Path, *, port: int | None = None, persistent: bool = False, timeout: float = 30.0) -> RedisServer:
    """redis-server on ``port`` (default: a free one) with its files under ``home``.

    ``persistent`` turns the append-only file on: every acknowledged write is in the file before
    the reply, so a SIGKILLed server restarted on the same ``home`` comes back with all of it.
    """
    binary = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)
    if binary is None:
        raise ServiceError("redis-server not found: install it (the Makefile does: apt-get install redis-server)")
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = home / "redis.log"
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes" if persistent else "no",
           "--dir", str(home), "--logfile", str(log), "--daemonize", "no"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    (home / "redis.pid").write_text(str(proc.pid))
    server = RedisServer(url=f"redis://127.0.0.1:{port}/0", process=proc, log=log)
    try:
        wait_until(lambda: redis_answers(server.url), timeout=timeout, what=f"redis-server on port {port}",
                   alive=lambda: proc.poll() is None, log=log)
    except ServiceError:
        server.stop()
        raise
    return server
