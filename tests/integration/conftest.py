"""A session-scoped real broker and Redis; a fresh topic set and group per test.

Set KAFKA_BOOTSTRAP / REDIS_URL to use existing services; otherwise they are started by
streamscore.dev (testcontainers when a Docker engine answers, else local processes).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from streamscore.dev.cluster import KafkaCluster, start_cluster
from streamscore.dev.services import Services, ensure_services


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    home = Path(tempfile.mkdtemp(prefix="streamscore-test-"))
    svc = ensure_services(home)
    os.environ.setdefault("STREAMSCORE_TEST_HOME", str(home))
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """A local 3-node KRaft cluster (replication factor 3, min.insync.replicas=2), started on first use.

    Tests may kill, freeze and restart its nodes; each test leaves every node running and thawed.
    """
    cluster = start_cluster(tmp_path_factory.mktemp("cluster"), brokers=3)
    try:
        yield cluster
    finally:
        cluster.stop(timeout=20)


@pytest.fixture(scope="session")
def bootstrap(services: Services) -> str:
    return services.kafka_bootstrap


@pytest.fixture(scope="session")
def redis_url(services: Services) -> str:
    return services.redis_url


@pytest.fixture(scope="session")
def schema_registry(services: Services) -> Iterator[Any]:
    """A Confluent-API schema registry: ``$SCHEMA_REGISTRY_URL``, else Apicurio started for the session.

    Yields an object with ``url``; a local one also has ``kill()`` and ``restart()`` (same port).
    """
    from streamscore.dev.registry import LocalRegistry

    url = os.environ.get("SCHEMA_REGISTRY_URL")
    if url:
        yield type("External", (), {"url": url, "local": False})()
        return
    assert services.home is not None
    reg = LocalRegistry(services.home / "registry")
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture
def names() -> Callable[[str], str]:
    """Unique topic / group names for this test."""
    run = uuid.uuid4().hex[:10]
    return lambda base: f"t-{base}-{run}"


@pytest.fixture
def topics(bootstrap: str) -> Callable[..., None]:
    from consumers.kafka_client import ensure_topics

    def make(spec: dict[str, int]) -> None:
        ensure_topics({"bootstrap.servers": bootstrap}, spec)

    return make


@pytest.fixture
def kafka_conf(bootstrap: str) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap}
