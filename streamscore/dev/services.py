"""Kafka + Redis (+ a schema registry on request) for development and tests.

Resolution order for each service (the same for ``streamscore dev up`` and the test
fixtures): an address in the environment (``KAFKA_BOOTSTRAP`` / ``REDIS_URL`` /
``SCHEMA_REGISTRY_URL``); else testcontainers when a Docker engine answers (Kafka, Redis);
else a local process we start ourselves (the Apache Kafka broker from Maven Central jars,
Debian's redis-server, Apicurio Registry from Maven Central).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamscore.dev.cluster import KafkaCluster, start_cluster
from streamscore.dev.kafka import KafkaBroker, brokers_answering, start_kafka, wait_stopped
from streamscore.dev.redis import RedisServer, redis_answers, start_redis
from streamscore.dev.registry import RegistryServer, registry_answers, start_registry
from streamscore.dev.util import cache_root


@dataclass
class Services:
    kafka_bootstrap: str
    redis_url: str
    source: dict[str, str]                 # service -> "env" | "testcontainers" | "local"
    home: Path | None = None
    schema_registry_url: str | None = None   # set when asked for (ensure_services(registry=True))
    _owned: list[Any] = field(default_factory=list)

    def stop(self) -> None:
        for thing in reversed(self._owned):
            thing.stop()
        self._owned.clear()

    @property
    def broker(self) -> KafkaBroker | None:
        return next((o for o in self._owned if isinstance(o, KafkaBroker)), None)

    @property
    def cluster(self) -> KafkaCluster | None:
        return next((o for o in self._owned if isinstance(o, KafkaCluster)), None)


def docker_engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class _Container:
    def __init__(self, container: Any) -> None:
        self.container = container

    def stop(self) -> None:
        self.container.stop()


def _testcontainers_kafka() -> tuple[str, _Container]:
    from testcontainers.kafka import KafkaContainer  # type: ignore[import-not-found]

    c = KafkaContainer(f"apache/kafka:{os.environ.get('STREAMSCORE_KAFKA_VERSION', '4.0.0')}").with_kraft()
    c.start()
    return c.get_bootstrap_server(), _Container(c)


def _testcontainers_redis() -> tuple[str, _Container]:
    from testcontainers.redis import RedisContainer  # type: ignore[import-not-found]

    c = RedisContainer("redis:7")
    c.start()
    return f"redis://{c.get_container_host_ip()}:{c.get_exposed_port(6379)}/0", _Container(c)


def ensure_services(home: Path, *, kafka_heap: str = "512m", kafka_extra: dict[str, str] | None = None,
                    registry: bool = False, brokers: int = 1) -> Services:
    """Start (or find) Kafka and Redis, and the schema registry when ``registry``.

    ``brokers`` > 1 starts a local KRaft cluster of that many nodes (``home/cluster``) where
    no ``KAFKA_BOOTSTRAP`` is set; testcontainers is used for single brokers only.
    The caller owns the result and must ``stop()`` it.
    """
    owned: list[Any] = []
    source: dict[str, str] = {}
    docker: bool | None = None
    try:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP")
        if bootstrap:
            source["kafka"] = "env"
        elif brokers > 1:
            cluster = start_cluster(home / "cluster", brokers=brokers, extra=kafka_extra)
            owned.append(cluster)
            bootstrap = cluster.bootstrap
            source["kafka"] = f"local cluster of {brokers}"
        else:
            docker = docker_engine_answers()
            if docker:
                bootstrap, c = _testcontainers_kafka()
                owned.append(c)
                source["kafka"] = "testcontainers"
            else:
                broker = start_kafka(home / "kafka", heap=kafka_heap, extra=kafka_extra)
                owned.append(broker)
                bootstrap = broker.bootstrap
                source["kafka"] = "local"
        redis_url = os.environ.get("REDIS_URL")
        if redis_url:
            source["redis"] = "env"
        else:
            if docker is None:
                docker = docker_engine_answers()
            if docker:
                redis_url, c = _testcontainers_redis()
                owned.append(c)
                source["redis"] = "testcontainers"
            else:
                server = start_redis(home / "redis")
                owned.append(server)
                redis_url = server.url
                source["redis"] = "local"
        registry_url = ensure_registry(home, owned, source) if registry else None
    except BaseException:
        for thing in reversed(owned):
            thing.stop()
        raise
    return Services(kafka_bootstrap=bootstrap, redis_url=redis_url, source=source, home=home,
                    schema_registry_url=registry_url, _owned=owned)


def ensure_registry(home: Path, owned: list[Any], source: dict[str, str]) -> str:
    """``$SCHEMA_REGISTRY_URL``, else a local Apicurio appended to ``owned``."""
    url = os.environ.get("SCHEMA_REGISTRY_URL")
    if url:
        source["schema_registry"] = "env"
        return url
    server = start_registry(home / "registry")
    owned.append(server)
    source["schema_registry"] = "local"
    return server.url


# --- `streamscore dev up|down|status`: services that outlive the command -----------------

def dev_home() -> Path:
    return cache_root() / "dev"


def _state_file() -> Path:
    return dev_home() / "state.json"


def services_up(*, brokers: int = 1) -> dict[str, Any]:
    """Start detached dev services (idempotent) and record them in the state file."""
    state = services_status()
    if state.get("running") and state.get("brokers", 1) == brokers:
        return state
    services_down()
    svc = ensure_services(dev_home(), registry=True, brokers=brokers)
    pids = {}
    names = {KafkaBroker: "kafka", RedisServer: "redis", RegistryServer: "schema_registry"}
    for thing in svc._owned:
        if isinstance(thing, KafkaCluster):
            pids.update({f"kafka-{n.node_id}": n.pid for n in thing.nodes if n.pid is not None})
        elif isinstance(thing, (KafkaBroker, RedisServer, RegistryServer)) and thing.process is not None:
            pids[names[type(thing)]] = thing.process.pid
    kafka_home = dev_home() / ("cluster" if brokers > 1 else "kafka")
    logs = sorted(str(p) for p in kafka_home.glob("node-*/kafka.log")) if brokers > 1 else [str(kafka_home / "kafka.log")]
    state = {
        "kafka_bootstrap": svc.kafka_bootstrap,
        "redis_url": svc.redis_url,
        "schema_registry_url": svc.schema_registry_url,
        "brokers": brokers,
        "source": svc.source,
        "pids": pids,
        "kafka_log": logs[0] if len(logs) == 1 else logs,
        "redis_log": str(dev_home() / "redis" / "redis.log"),
        "schema_registry_log": str(dev_home() / "registry" / "registry.log"),
    }
    _state_file().parent.mkdir(parents=True, exist_ok=True)
    _state_file().write_text(json.dumps(state, indent=2))
    # Processes were started in their own session, so they outlive this command.
    svc._owned.clear()
    return services_status()


def services_status() -> dict[str, Any]:
    if not _state_file().exists():
        return {"running": False}
    state: dict[str, Any] = json.loads(_state_file().read_text())
    state["brokers_up"] = brokers_answering(state["kafka_bootstrap"])
    state["kafka_ok"] = state["brokers_up"] >= state.get("brokers", 1)
    state["redis_ok"] = redis_answers(state["redis_url"])
    state["schema_registry_ok"] = bool(state.get("schema_registry_url")) and registry_answers(state["schema_registry_url"])
    state["running"] = state["kafka_ok"] and state["redis_ok"] and state["schema_registry_ok"]
    return state


def services_down(*, purge: bool = False) -> dict[str, Any]:
    """Stop the dev services; ``purge`` also deletes their data (topics, offsets, Redis keys)."""
    stopped = []
    if _state_file().exists():
        state = json.loads(_state_file().read_text())
        signalled = {}
        # every process at once: a cluster node stopped last would wait for a quorum that is gone
        for name, pid in state.get("pids", {}).items():
            try:
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            signalled[name] = pid
        for name, pid in signalled.items():
            if not wait_stopped(pid, 30):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            stopped.append(name)
        _state_file().unlink(missing_ok=True)
    out: dict[str, Any] = {"stopped": stopped}
    if purge:
        gone = [d for d in (dev_home() / "kafka", dev_home() / "cluster", dev_home() / "redis", dev_home() / "registry")
                if d.exists()]
        for d in gone:
            shutil.rmtree(d)
        out["purged"] = [str(d) for d in gone]
    return out
