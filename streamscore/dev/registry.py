"""Apicurio Registry (Confluent-compatible API under ``/apis/ccompat/v7``) on loopback.

The runnable bundle comes from Maven Central once (``mvn dependency:get``) and is
unpacked into the cache beside the Kafka jars. Storage is Apicurio's embedded H2 database
in a file under the service's home (written through, so a SIGKILL loses nothing): a restart
keeps every subject and id. Compatibility is set to BACKWARD, Confluent's default (Apicurio's
is NONE).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from schemas.errors import ServiceError
from streamscore.dev.util import cache_root, free_port, stop_process, wait_until

APICURIO_VERSION = "2.6.13.Final"
_ARTIFACT = f"io.apicurio:apicurio-registry-app:{APICURIO_VERSION}:tar.gz:all"
_RUNNER = f"apicurio-registry-app-{APICURIO_VERSION}-runner.jar"
CCOMPAT = "/apis/ccompat/v7"


def apicurio_jar(version: str = APICURIO_VERSION) -> Path:
    """The runner jar, fetched with mvn and unpacked into the cache on first use."""
    home = cache_root() / f"apicurio-{version}"
    jar = home / _RUNNER
    if (home / ".complete").exists():
        return jar
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ServiceError("mvn not found: install Maven (the Makefile does: apt-get install maven)")
    proc = subprocess.run([mvn, "-q", "-B", "dependency:get", f"-Dartifact={_ARTIFACT}", "-Dtransitive=false"],
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise ServiceError(f"fetching {_ARTIFACT} with mvn failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    tgz = (Path.home() / ".m2" / "repository" / "io" / "apicurio" / "apicurio-registry-app" / version
           / f"apicurio-registry-app-{version}-all.tar.gz")
    if not tgz.exists():
        raise ServiceError(f"mvn finished but {tgz} is missing")
    tmp = home.with_name(home.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tarfile.open(tgz) as tar:
        tar.extractall(tmp, filter="data")
    shutil.rmtree(home, ignore_errors=True)
    tmp.rename(home)
    (home / ".complete").write_text(version)
    return jar


@dataclass
class RegistryServer:
    """An Apicurio process owned by this run; ``url`` is its Confluent-compatible base URL."""

    url: str
    process: subprocess.Popen[bytes] | None
    log: Path

    def stop(self, timeout: float = 20.0) -> None:
        stop_process(self.process, timeout)

    def kill(self) -> None:
        """SIGKILL (tests: an abrupt outage)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def registry_answers(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/subjects", timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (OSError, ValueError):
        return False


def set_compatibility(url: str, level: str = "BACKWARD") -> None:
    req = urllib.request.Request(f"{url.rstrip('/')}/config", method="PUT",
                                 data=json.dumps({"compatibility": level}).encode(),
                                 headers={"Content-Type": "application/vnd.schemaregistry.v1+json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()
    except (OSError, ValueError) as exc:
        raise ServiceError(f"setting compatibility {level} on {url} failed: {exc}") from exc


def start_registry(home: Path, *, port: int | None = None, timeout: float = 120.0) -> RegistryServer:
    """Start Apicurio on ``port`` (default: a free one) and wait until it serves, BACKWARD compatible."""
    java = shutil.which("java")
    if java is None:
        raise ServiceError("java not found: a JDK 17+ is needed to run the schema registry")
    jar = apicurio_jar()
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = home / "registry.log"
    db = f"jdbc:h2:file:{home / 'storage' / 'registry'};WRITE_DELAY=0"
    cmd = [java, "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", f"-Dquarkus.http.port={port}",
           "-Dquarkus.http.host=127.0.0.1", f"-Dquarkus.datasource.jdbc.url={db}", "-jar", str(jar)]
    out = open(log, "ab")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=home, start_new_session=True)
    out.close()
    (home / "registry.pid").write_text(str(proc.pid))
    server = RegistryServer(url=f"http://127.0.0.1:{port}{CCOMPAT}", process=proc, log=log)
    try:
        wait_until(lambda: registry_answers(server.url), timeout=timeout, what=f"schema registry on port {port}",
                   alive=lambda: proc.poll() is None, log=log)
        set_compatibility(server.url)
    except ServiceError:
        server.kill()
        raise
    return server


class LocalRegistry:
    """A local registry that can be killed and restarted on the same port and storage (tests: an outage)."""

    local = True

    def __init__(self, home: Path) -> None:
        self.home = home
        self.server = start_registry(home)
        self.url = self.server.url
        self.port = int(self.url.split(":")[2].split("/")[0])

    def kill(self) -> None:
        self.server.kill()

    def restart(self) -> None:
        self.server.kill()
        self.server = start_registry(self.home, port=self.port)

    def stop(self) -> None:
        self.server.stop()
