"""The schema_registry section, the field-mapping keys, and the registry client's failure modes
that need no registry (a closed port)."""

from __future__ import annotations

import socket
import threading

import pytest

from schemas.errors import ConfigError, RegistryUnavailableError
from schemas.registry_client import RegistryClient, RegistrySettings
from streamscore.config import parse_config


def _raw(**top: object) -> dict[str, object]:
    return {"pipelines": [{"name": "p", "input": {"topic": "in", "schema": "registry:orders-value", "id_field": None,
                                                  "time_field": None},
                           "model": {"name": "m"}, "output": {"topic": "out", "carry": ["customer.id"],
                                                              "subject_strategy": "record"}}], **top}


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_schema_registry_section_and_mapping_keys() -> None:
    cfg = parse_config(_raw(schema_registry={"url": "http://r:8081", "basic_auth": "u:p", "cache_ttl_s": 60}), env={})
    assert cfg.schema_registry is not None and "u:p" not in repr(cfg.schema_registry)
    s = cfg.schema_registry.settings()
    assert s.basic_auth == ("u", "p") and s.cache_ttl_s == 60
    p = cfg.pipelines[0]
    assert p.input.id_field is None and p.input.time_field is None and p.output.carry == ["customer.id"]
    env = parse_config(_raw(schema_registry={}), env={"SCHEMA_REGISTRY_URL": "http://env:1"})
    assert env.schema_registry is not None and env.schema_registry.url == "http://env:1"
    assert parse_config(_raw(), env={"SCHEMA_REGISTRY_URL": "http://env:1"}).schema_registry is None


def test_bad_registry_settings_are_one_clear_error() -> None:
    with pytest.raises(ConfigError, match="schema_registry.url"):
        parse_config(_raw(schema_registry={}), env={})
    with pytest.raises(ConfigError, match="subject_strategy"):
        bad = _raw()
        bad["pipelines"][0]["output"]["subject_strategy"] = "topic-record"  # type: ignore[index]
        parse_config(bad, env={})
    cfg = parse_config(_raw(schema_registry={"url": "http://r", "basic_auth": "nocolon"}), env={})
    assert cfg.schema_registry is not None
    with pytest.raises(ConfigError, match="user:password"):
        cfg.schema_registry.settings()


def test_unreachable_registry_at_startup_names_the_url() -> None:
    url = _closed_port_url()
    with pytest.raises(ConfigError, match=f"schema registry {url} unreachable"):
        RegistryClient(RegistrySettings(url)).check()


def test_uncached_id_waits_through_an_outage_until_stopped() -> None:
    stop = threading.Event()
    waits: list[float] = []

    def on_wait(delay: float) -> None:
        waits.append(delay)
        if len(waits) == 4:
            stop.set()

    client = RegistryClient(RegistrySettings(_closed_port_url(), timeout_s=1), stop=stop, on_wait=on_wait)
    with pytest.raises(RegistryUnavailableError, match="stopped while waiting"):
        client.by_id(7)
    assert waits == [0.05, 0.1, 0.2, 0.4]          # backoff, one metric call per retry
