from pathlib import Path

import pytest

from schemas.errors import ConfigError
from streamscore.config import load_config, parse_config

MINIMAL = {"pipelines": [{"name": "fraud", "input": {"topic": "tx"}, "model": {"name": "fraud-mlp"},
                          "output": {"topic": "pred"}}]}


def test_minimal_config_gets_working_defaults() -> None:
    cfg = parse_config(MINIMAL, env={})
    p = cfg.pipelines[0]
    assert cfg.delivery == "at_least_once"
    assert p.input.format == "avro" and p.input.schema_name == "transaction"
    assert p.input.dlq_topic == "tx.dlq"
    assert p.batching.max_size >= 1 and p.batching.latency_target_ms == 20.0


def test_max_batch_default_depends_on_the_pipeline_kind() -> None:
    text = {"name": "docs", "kind": "embed", "input": {"topic": "t", "schema_name": "text_event"},
            "output": {"topic": "emb"}}
    cfg = parse_config({"pipelines": [MINIMAL["pipelines"][0], text]}, env={})
    assert [p.batching.max_size for p in cfg.pipelines] == [8192, 2048]
    mine = {**MINIMAL["pipelines"][0], "batching": {"max_size": 300}}
    assert parse_config({"pipelines": [mine]}, env={}).pipelines[0].batching.max_size == 300


def test_gil_slice_defaults_short_and_serve_applies_it() -> None:
    import sys

    from streamscore.cli import short_gil_slices

    assert parse_config(MINIMAL, env={}).gil_switch_ms == 1.0
    with pytest.raises(ConfigError, match="gil_switch_ms"):
        parse_config({**MINIMAL, "gil_switch_ms": 0}, env={})
    before = sys.getswitchinterval()
    try:
        short_gil_slices(parse_config({**MINIMAL, "gil_switch_ms": 2.5}, env={}).gil_switch_ms)
        assert sys.getswitchinterval() == pytest.approx(0.0025)
    finally:
        sys.setswitchinterval(before)


def test_unknown_key_is_named_with_the_valid_ones() -> None:
    bad = {**MINIMAL, "pipelines": [{**MINIMAL["pipelines"][0], "batching": {"max_sise": 10}}]}
    with pytest.raises(ConfigError) as e:
        parse_config(bad, env={})
    msg = str(e.value)
    assert "pipelines[0].batching.max_sise" in msg
    assert "max_size" in msg and "max_wait_ms" in msg


def test_bad_values_name_their_key() -> None:
    with pytest.raises(ConfigError, match=r"delivery"):
        parse_config({**MINIMAL, "delivery": "sometimes"}, env={})
    with pytest.raises(ConfigError, match=r"pipelines"):
        parse_config({"pipelines": []}, env={})
    with pytest.raises(ConfigError, match="unique"):
        parse_config({"pipelines": MINIMAL["pipelines"] * 2}, env={})


def test_librdkafka_settings_pass_through_and_env_overrides_bootstrap() -> None:
    raw = {**MINIMAL, "kafka": {"bootstrap_servers": "a:1", "consumer": {"fetch.wait.max.ms": 3}}}
    cfg = parse_config(raw, env={"KAFKA_BOOTSTRAP": "b:2"})
    assert cfg.kafka.bootstrap_servers == "b:2"
    assert cfg.kafka.consumer == {"fetch.wait.max.ms": 3}


def test_secret_is_not_printed(tmp_path: Path) -> None:
    raw = {**MINIMAL, "kafka": {"sasl_username": "u", "sasl_password": "hunter2", "sasl_mechanism": "PLAIN",
                                "security_protocol": "SASL_PLAINTEXT"}}
    cfg = parse_config(raw, env={})
    assert "hunter2" not in repr(cfg) and "hunter2" not in str(cfg)
    assert cfg.kafka.client_settings()["sasl.password"] == "hunter2"


def test_load_config_reports_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("pipelines: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(top)


def test_client_settings_per_mode_and_instance() -> None:
    from streamscore.app import client_settings

    alo = parse_config({**MINIMAL, "group_id": "g"}, env={})
    c, p = client_settings(alo, "slot-1")
    assert c["enable.auto.offset.store"] is False and c["group.id"] == "g" and "group.instance.id" not in c
    assert p["enable.idempotence"] is True and "transactional.id" not in p
    eos = parse_config({**MINIMAL, "group_id": "g", "delivery": "exactly_once", "static_membership": True,
                        "kafka": {"consumer": {"fetch.wait.max.ms": 1}}}, env={})
    c, p = client_settings(eos, "slot-1")
    assert c["isolation.level"] == "read_committed" and c["enable.auto.commit"] is False
    assert c["group.instance.id"] == "g-slot-1" and c["fetch.wait.max.ms"] == 1
    assert p["transactional.id"] == "streamscore-g-slot-1"
    assert p["message.timeout.ms"] <= p["transaction.timeout.ms"]


def test_batch_produce_and_output_headers_default_and_switch() -> None:
    cfg = parse_config(MINIMAL, env={})
    assert cfg.kafka.batch_produce is True and cfg.pipelines[0].output.headers is False
    on = {**MINIMAL, "kafka": {"batch_produce": False},
          "pipelines": [{**MINIMAL["pipelines"][0], "output": {"topic": "pred", "headers": True}}]}
    cfg = parse_config(on, env={})
    assert cfg.kafka.batch_produce is False and cfg.pipelines[0].output.headers is True
    with pytest.raises(ConfigError, match="output.headers"):
        parse_config({**MINIMAL, "pipelines": [{**MINIMAL["pipelines"][0],
                                                "output": {"topic": "pred", "headers": "sometimes"}}]}, env={})


def test_the_environment_overrides_the_monitor_files_broker_redis_and_schema_registry() -> None:
    """`dev up` prints KAFKA_BOOTSTRAP, REDIS_URL and SCHEMA_REGISTRY_URL: serve and monitor both follow them, so a
    monitor reads the Avro predictions a scorer wrote with that registry."""
    from streamscore.config import monitor_env_overrides

    out = monitor_env_overrides({"KAFKA_BOOTSTRAP": "b:1", "REDIS_URL": "redis://r:2/0",
                                 "SCHEMA_REGISTRY_URL": "http://sr:3/apis/ccompat/v7"}, file_registry="http://sr:9")
    assert out["broker"] == "b:1" and out["redis_url"].get_secret_value() == "redis://r:2/0"
    assert out["schema_registry_url"] == "http://sr:3/apis/ccompat/v7"
    assert monitor_env_overrides({}) == {}
