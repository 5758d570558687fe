"""Secured connections: SCRAM-SHA-256 over SASL_PLAINTEXT, TLS with a test CA, Redis with a password.

Each broker here is this module's own (``streamscore.dev.secure``), separate from the
session broker; its PLAINTEXT INTERNAL listener is used only to set topics up and to
read results back, never by the scorer.
"""

from __future__ import annotations

import collections
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

from consumers.kafka_client import ensure_topics
from streamscore.dev.secure import SCRAM, SecureBroker, Pki, make_test_pki, start_secure_kafka
from streamscore.dev.util import free_port, wait_until
from streamscore.produce import produce_events
from tests.integration.helpers import ROOT, decode_prediction, read_all

pytestmark = pytest.mark.integration

USER = "alice"
PASSWORD = "alice-" + secrets.token_hex(12)   # [A-Za-z0-9-]: safe inside the --add-scram argument
N = 2_000


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    broker = start_secure_kafka(tmp_path_factory.mktemp("sasl-kafka"), protocol="SASL_PLAINTEXT",
                                scram_users={USER: PASSWORD})
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def ssl_broker(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[SecureBroker]:
    broker = start_secure_kafka(tmp_path_factory.mktemp("ssl-kafka"), protocol="SSL", pki=pki)
    try:
        yield broker
    finally:
        broker.stop()


def _config(path: Path, broker: SecureBroker, group: str, t_in: str, t_out: str, **kafka: Any) -> Path:
    cfg = {"kafka": {"bootstrap_servers": broker.bootstrap, **kafka}, "group_id": group,
           "pipelines": [{"name": "fraud", "input": {"topic": t_in}, "model": {"name": "fraud-mlp"},
                          "output": {"topic": t_out}}]}
    path.write_text(yaml.safe_dump(cfg))
    return path


def _serve(config: Path, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``streamscore -vv serve``: debug logging, so anything that would print a secret does."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "STREAMSCORE_SECRETS"))}
    full.update({"PYTHONUNBUFFERED": "1", **env})
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "streamscore", "-vv", "serve", "-c", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=full)


def _stop(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(30)
        raise


def _scores_end_to_end(tmp_path: Path, broker: SecureBroker, names: Callable[[str], str],
                       client_conf: dict[str, Any], env: dict[str, str], **kafka: Any) -> str:
    """Produce N events through the secure listener, score them with a scorer on it; returns its log."""
    t_in, t_out = names("sec-in"), names("sec-out")
    ensure_topics({"bootstrap.servers": broker.internal_bootstrap}, {t_in: 2, t_out: 2, f"{t_in}.dlq": 2})
    produce_events({"bootstrap.servers": broker.bootstrap, **client_conf}, t_in, N, seed=41)
    cfg = _config(tmp_path / "p.yaml", broker, names("g"), t_in, t_out, **kafka)
    log = tmp_path / "scorer.log"
    proc = _serve(cfg, log, env)
    try:
        msgs = read_all(broker.internal_bootstrap, t_out, expect=N, timeout=120, idle=1.0)
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        assert _stop(proc) == 0, log.read_text(errors="replace")[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    ids = collections.Counter(decode_prediction(m.value())["event_id"] for m in msgs)
    assert len(ids) == N and max(ids.values()) == 1
    return log.read_text(errors="replace")


SASL_CLIENT = {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": SCRAM, "sasl.username": USER,
               "sasl.password": PASSWORD}


@pytest.mark.parametrize("source", ["env", "secrets_file"])
def test_scram_credentials_score_end_to_end_and_stay_secret(tmp_path: Path, sasl_broker: SecureBroker,
                                                            names: Callable[[str], str], source: str) -> None:
    if source == "env":
        env = {"KAFKA_SASL_USERNAME": USER, "KAFKA_SASL_PASSWORD": PASSWORD}
    else:
        secrets_file = tmp_path / "secrets.yaml"
        secrets_file.write_text(yaml.safe_dump({"sasl_username": USER, "sasl_password": PASSWORD}))
        secrets_file.chmod(0o600)
        env = {"STREAMSCORE_SECRETS_FILE": str(secrets_file)}
    # librdkafka's own debug output (configuration and SASL handshake) goes to the log under -vv too
    debug = {"debug": "security,conf"}
    log = _scores_end_to_end(tmp_path, sasl_broker, names, SASL_CLIENT, env,
                             security_protocol="SASL_PLAINTEXT", sasl_mechanism=SCRAM,
                             consumer=debug, producer=debug)
    assert "DEBUG" in log and "SASL" in log, "the scorer did not log at debug level"
    assert PASSWORD not in log, "the SASL password appears in the scorer's log"


def test_wrong_password_fails_once_clearly_without_leaking(tmp_path: Path, sasl_broker: SecureBroker,
                                                           names: Callable[[str], str]) -> None:
    wrong = "wrong-" + secrets.token_hex(12)
    t_in, t_out = names("sec-in"), names("sec-out")
    ensure_topics({"bootstrap.servers": sasl_broker.internal_bootstrap}, {t_in: 2, t_out: 2, f"{t_in}.dlq": 2})
    cfg = _config(tmp_path / "p.yaml", sasl_broker, names("g"), t_in, t_out,
                  security_protocol="SASL_PLAINTEXT", sasl_mechanism=SCRAM)
    log = tmp_path / "scorer.log"
    t0 = time.monotonic()
    proc = _serve(cfg, log, {"KAFKA_SASL_USERNAME": USER, "KAFKA_SASL_PASSWORD": wrong})
    try:
        rc = proc.wait(90)      # bounded: it must give up by itself
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    took = time.monotonic() - t0
    out = log.read_text(errors="replace")
    assert rc != 0, out[-3000:]
    assert took < 60, f"gave up only after {took:.0f}s"
    assert wrong not in out and PASSWORD not in out, "a password appears in the scorer's output"
    assert "Traceback" not in out, f"a traceback instead of one clear error:\n{out[-3000:]}"
    errors = [ln for ln in out.splitlines() if ln.startswith("streamscore: error:")]
    assert len(errors) == 1, f"expected one final error line, got {errors}\n{out[-3000:]}"
    assert "authentication" in errors[0].lower(), errors[0]
    auth_lines = [ln for ln in out.splitlines() if "authentication" in ln.lower()]
    assert len(auth_lines) <= 20, f"{len(auth_lines)} authentication lines: a retry loop\n{out[-3000:]}"


def test_tls_with_test_ca_scores_end_to_end(tmp_path: Path, ssl_broker: SecureBroker, pki: Pki,
                                            names: Callable[[str], str]) -> None:
    client = {"security.protocol": "SSL", "ssl.ca.location": str(pki.ca_cert)}
    log = _scores_end_to_end(tmp_path, ssl_broker, names, client, {},
                             security_protocol="SSL", ssl_ca_location=str(pki.ca_cert))
    assert pki.keystore_password not in log


def test_tls_without_the_ca_is_refused(ssl_broker: SecureBroker) -> None:
    """The TLS test above proves something only if an untrusted broker certificate is refused."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    quiet = logging.getLogger("test_security.quiet")
    quiet.propagate = False
    admin = AdminClient({"bootstrap.servers": ssl_broker.bootstrap, "security.protocol": "SSL", "logger": quiet})
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=5)


# ------------------------------------------------------------------------------------ Redis
@pytest.fixture
def redis_with_password(tmp_path: Path) -> Iterator[tuple[str, str]]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        pytest.skip("redis-server not installed")
    password = "redis-" + secrets.token_hex(12)
    port = free_port()
    conf = tmp_path / "redis.conf"     # the password in a file, not on the command line
    conf.write_text(f"port {port}\nbind 127.0.0.1\nrequirepass {password}\nsave \"\"\nappendonly no\n"
                    f"dir {tmp_path}\nlogfile {tmp_path / 'redis.log'}\n")
    conf.chmod(0o600)
    proc = subprocess.Popen([binary, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import redis

        def answers() -> bool:
            try:
                return bool(redis.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=1).ping())
            except redis.RedisError:
                return False

        wait_until(answers, timeout=20, what="redis-server with requirepass", alive=lambda: proc.poll() is None)
        yield f"redis://:{password}@127.0.0.1:{port}/0", password
    finally:
        proc.terminate()
        proc.wait(10)


def test_redis_password_url_connects_and_is_never_logged(redis_with_password: tuple[str, str],
                                                         caplog: pytest.LogCaptureFixture) -> None:
    import redis

    from monitoring.redis_state import connect, redact

    url, password = redis_with_password
    caplog.set_level(logging.DEBUG)
    client = connect(url)
    assert client.ping() is True
    client.set("streamscore:security-test", "ok")
    assert client.get("streamscore:security-test") == "ok"
    assert password not in redact(url) and "***" in redact(url)
    assert password not in repr(client)
    # without the password Redis refuses, and the error does not echo any password
    with pytest.raises(redis.AuthenticationError) as wrong:
        connect(url.replace(password, "not-" + password[:6])).ping()
    with pytest.raises(redis.AuthenticationError):
        connect(url.replace(f":{password}@", "")).set("k", "v")
    assert password not in str(wrong.value)
    assert password not in caplog.text
