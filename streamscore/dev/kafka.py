"""A single-node KRaft Apache Kafka broker on loopback, built from Maven Central jars.

The broker's jars (``org.apache.kafka:kafka_2.13`` and its runtime dependencies, the
same set the Kafka distribution ships in ``libs/``) are resolved once with ``mvn`` into a
cache outside the repository and reused by every later start.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from schemas.errors import ServiceError
from streamscore.dev.util import cache_root, free_port, java_and_kafka_libs, stop_process, wait_until

KAFKA_VERSION = os.environ.get("STREAMSCORE_KAFKA_VERSION", "4.4.0")
# log4j-slf4j-impl binds the broker's slf4j logging to log4j2, so its logs reach the file.
_EXTRA_ARTIFACTS = ("org.apache.logging.log4j:log4j-slf4j-impl:2.25.5",)

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>streamscore.dev</groupId><artifactId>kafka-broker-libs</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{version}</version></dependency>
  </dependencies>
</project>
"""

LOG4J2_CONFIG = """Configuration:
  Appenders:
    File:
      name: FILE
      fileName: "{log}"
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Logger:
      - name: kafka
        level: INFO
      - name: org.apache.kafka
        level: WARN
      - name: state.change.logger
        level: WARN
    Root:
      level: WARN
      AppenderRef:
        - ref: FILE
"""


def _libs_dir(version: str) -> Path:
    return cache_root() / f"kafka-{version}" / "libs"


def kafka_libs(version: str = KAFKA_VERSION) -> Path:
    """Return the directory holding the broker's jars, resolving them with mvn if needed."""
    libs = _libs_dir(version)
    marker = libs / ".complete"
    if marker.exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ServiceError("mvn not found: install Maven (the Makefile does: apt-get install maven)")
    work = libs.parent
    work.mkdir(parents=True, exist_ok=True)
    (work / "pom.xml").write_text(_POM.format(version=version))
    tmp = work / "libs.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    commands = [
        [mvn, "-q", "-B", "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={tmp}"],
        *[[mvn, "-q", "-B", "dependency:copy", f"-Dartifact={a}", f"-DoutputDirectory={tmp}"] for a in _EXTRA_ARTIFACTS],
    ]
    for cmd in commands:
        proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise ServiceError(f"resolving Kafka {version} jars with mvn failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    if not any(tmp.glob(f"kafka_2.13-{version}.jar")):
        raise ServiceError(f"mvn finished but kafka_2.13-{version}.jar is missing from {tmp}")
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    marker.write_text(version)
    return libs


@dataclass
class KafkaBroker:
    """A broker process owned by this run; ``bootstrap`` is host:port of its client listener."""

    home: Path
    bootstrap: str
    process: subprocess.Popen[bytes] | None
    log: Path

    def stop(self, timeout: float = 30.0) -> None:
        stop_process(self.process, timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def server_properties(data: Path, port: int, controller_port: int, extra: dict[str, str]) -> str:
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(data),
        "num.partitions": "4",
        # One broker: every internal topic has one replica. Few partitions keep startup fast.
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "8",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "8",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "true",
        "log.retention.hours": "6",
        "log.segment.bytes": str(64 * 1024 * 1024),
        "num.network.threads": "2",
        "num.io.threads": "4",
    }
    props.update(extra)
    return "".join(f"{k}={v}\n" for k, v in props.items())


def start_kafka(
    home: Path,
    *,
    port: int | None = None,
    heap: str = "512m",
    extra: dict[str, str] | None = None,
    timeout: float = 120.0,
) -> KafkaBroker:
    """Format storage under ``home`` (first time only) and start the broker; wait until it serves."""
    home.mkdir(parents=True, exist_ok=True)
    data = home / "data"
    props_file = home / "server.properties"
    port_file = home / "ports"
    if port_file.exists() and (data / "meta.properties").exists():
        port, controller_port = (int(x) for x in port_file.read_text().split())  # restart: same ports
    else:
        port = port or free_port()
        controller_port = free_port()
        port_file.write_text(f"{port} {controller_port}")
    props_file.write_text(server_properties(data, port, controller_port, extra or {}))
    if not (data / "meta.properties").exists():
        format_storage(props_file, new_cluster_id())
    proc, log = launch_broker(home, props_file, heap=heap)
    broker = KafkaBroker(home=home, bootstrap=f"127.0.0.1:{port}", process=proc, log=log)
    try:
        wait_until(lambda: _broker_ready(broker), timeout=timeout, what=f"Kafka broker on {broker.bootstrap}",
                   alive=lambda: proc.poll() is None, log=log)
    except ServiceError:
        broker.kill()
        raise
    return broker


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def format_storage(props_file: Path, cluster_id: str) -> None:
    """``kafka-storage format`` for the node described by ``props_file`` (its log.dirs must be empty)."""
    java, libs = java_and_kafka_libs()
    fmt = subprocess.run(
        [java, "-cp", f"{libs}/*", "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
         "-c", str(props_file)],
        capture_output=True, text=True, timeout=120,
    )
    if fmt.returncode != 0:
        raise ServiceError(f"formatting Kafka storage failed: {fmt.stdout}{fmt.stderr}")


def launch_broker(home: Path, props_file: Path, *, heap: str, initial_heap: str | None = None,
                  jvm_flags: tuple[str, ...] = ()) -> tuple["subprocess.Popen[bytes]", Path]:
    """Start ``kafka.Kafka`` on ``props_file`` in its own session (it outlives the caller); no wait.

    Logs go to ``home/kafka.log`` (log4j) and ``home/kafka.out`` (stdout); the pid to ``home/kafka.pid``.
    """
    java, libs = java_and_kafka_libs()
    log = home / "kafka.log"
    (home / "log4j2.yaml").write_text(LOG4J2_CONFIG.format(log=log))
    cmd = [
        java, f"-Xmx{heap}", f"-Xms{initial_heap or heap}", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
        *jvm_flags, "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={home / 'log4j2.yaml'}",
        "-cp", f"{libs}/*", "kafka.Kafka", str(props_file),
    ]
    with open(home / "kafka.out", "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ),
                                start_new_session=True)
    (home / "kafka.pid").write_text(str(proc.pid))
    return proc, log


def _broker_ready(broker: KafkaBroker) -> bool:
    return broker_answers(broker.bootstrap, timeout=2.0)


def broker_answers(bootstrap: str, timeout: float = 2.0) -> bool:
    return brokers_answering(bootstrap, timeout) > 0


def brokers_answering(bootstrap: str, timeout: float = 2.0) -> int:
    """How many brokers the cluster metadata lists (0 when none answers)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0, "logger": null_logger()})
    try:
        return len(admin.list_topics(timeout=timeout).brokers)
    except Exception:
        return 0


def null_logger() -> object:
    import logging

    logger = logging.getLogger("streamscore.dev.kafka.probe")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    return logger


def wait_stopped(pid: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False



def ensure_kafka_libs() -> str:
    """``make kafka-jars``: resolve the jars if needed; says whether they were cached."""
    cached = (_libs_dir(KAFKA_VERSION) / ".complete").exists()
    where = kafka_libs()
    return "cached" if cached else f"fetched into {where}"
