"""A local broker with an authenticated or encrypted client listener, for security tests.

``start_secure_kafka`` runs the same single-node KRaft broker as ``streamscore.dev.kafka``
with three listeners:

    CLIENT      127.0.0.1:<port>   SASL_PLAINTEXT (SCRAM-SHA-256) or SSL: what clients use
    INTERNAL    127.0.0.1:<port>   PLAINTEXT, inter-broker traffic and the readiness probe
    CONTROLLER  127.0.0.1:<port>   PLAINTEXT, the KRaft quorum

SCRAM users are created when the storage is formatted (``format --add-scram``), so no
admin call is needed before the first client connects. ``make_test_pki`` writes a test CA,
a broker certificate for ``IP:127.0.0.1`` / ``DNS:localhost`` signed by it, and the
broker's PKCS12 keystore.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import secrets
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from schemas.errors import ServiceError
from streamscore.dev.kafka import LOG4J2_CONFIG, KafkaBroker, broker_answers, server_properties
from streamscore.dev.util import free_port, java_and_kafka_libs, wait_until

Protocol = Literal["SASL_PLAINTEXT", "SSL"]
SCRAM = "SCRAM-SHA-256"


@dataclass(frozen=True)
class Pki:
    """Files of a throwaway PKI: what a client trusts, and the broker's keystore."""

    ca_cert: Path            # PEM, for ssl.ca.location
    keystore: Path           # PKCS12: the broker's key, certificate and the CA
    keystore_password: str


@dataclass
class SecureBroker:
    broker: KafkaBroker
    bootstrap: str           # the CLIENT listener
    internal_bootstrap: str  # PLAINTEXT, for fixtures that must not depend on the secure path
    protocol: Protocol

    def stop(self) -> None:
        self.broker.stop()


def make_test_pki(directory: Path, *, days: int = 2) -> Pki:
    """A CA and a broker certificate valid for 127.0.0.1 / localhost, as PEM and PKCS12."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import pkcs12
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "streamscore test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))

    password = secrets.token_urlsafe(16)
    ca_pem = directory / "ca.pem"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    keystore = directory / "broker.p12"
    keystore.write_bytes(pkcs12.serialize_key_and_certificates(
        b"broker", key, cert, [ca], serialization.BestAvailableEncryption(password.encode())))
    keystore.chmod(0o600)
    return Pki(ca_cert=ca_pem, keystore=keystore, keystore_password=password)


def _listener_props(protocol: Protocol, client: int, internal: int, controller: int,
                    pki: Pki | None) -> dict[str, str]:
    props = {
        "listeners": f"CLIENT://127.0.0.1:{client},INTERNAL://127.0.0.1:{internal},"
                     f"CONTROLLER://127.0.0.1:{controller}",
        "advertised.listeners": f"CLIENT://127.0.0.1:{client},INTERNAL://127.0.0.1:{internal}",
        "listener.security.protocol.map": f"CLIENT:{protocol},INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "INTERNAL",
    }
    if protocol == "SASL_PLAINTEXT":
        props.update({
            "sasl.enabled.mechanisms": SCRAM,
            "listener.name.client.sasl.enabled.mechanisms": SCRAM,
            "listener.name.client.scram-sha-256.sasl.jaas.config":
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        })
    else:
        if pki is None:
            raise ValueError("an SSL listener needs a Pki (make_test_pki)")
        props.update({
            "listener.name.client.ssl.keystore.type": "PKCS12",
            "listener.name.client.ssl.keystore.location": str(pki.keystore),
            "listener.name.client.ssl.keystore.password": pki.keystore_password,
            "listener.name.client.ssl.key.password": pki.keystore_password,
            "listener.name.client.ssl.client.auth": "none",
        })
    return props


def start_secure_kafka(
    home: Path,
    *,
    protocol: Protocol,
    scram_users: dict[str, str] | None = None,
    pki: Pki | None = None,
    heap: str = "384m",
    timeout: float = 120.0,
) -> SecureBroker:
    """Format (first time only, with the SCRAM users) and start a broker whose CLIENT listener is secured."""
    java, libs = java_and_kafka_libs()
    home.mkdir(parents=True, exist_ok=True)
    data = home / "data"
    port_file = home / "ports"
    if port_file.exists() and (data / "meta.properties").exists():
        client, internal, controller = (int(x) for x in port_file.read_text().split())
    else:
        client, internal, controller = free_port(), free_port(), free_port()
        port_file.write_text(f"{client} {internal} {controller}")
    props_file = home / "server.properties"
    props_file.write_text(server_properties(data, internal, controller,
                                             _listener_props(protocol, client, internal, controller, pki)))
    props_file.chmod(0o600)     # it may hold the keystore password
    log = home / "kafka.log"
    (home / "log4j2.yaml").write_text(LOG4J2_CONFIG.format(log=log))
    classpath = f"{libs}/*"
    if not (data / "meta.properties").exists():
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        cmd = [java, "-cp", classpath, "kafka.tools.StorageTool", "format", f"--cluster-id={cid}", "-c", str(props_file)]
        for user, password in (scram_users or {}).items():
            cmd += ["--add-scram", f"{SCRAM}=[name={user},password={password}]"]
        fmt = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if fmt.returncode != 0:
            raise ServiceError(f"formatting Kafka storage failed: {fmt.stdout}{fmt.stderr}")
    cmd = [java, f"-Xmx{heap}", f"-Xms{heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
           f"-Dlog4j2.configurationFile={home / 'log4j2.yaml'}", "-cp", classpath, "kafka.Kafka", str(props_file)]
    with open(home / "kafka.out", "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    (home / "kafka.pid").write_text(str(proc.pid))
    internal_bootstrap = f"127.0.0.1:{internal}"
    broker = KafkaBroker(home=home, bootstrap=internal_bootstrap, process=proc, log=log)
    try:
        wait_until(lambda: broker_answers(internal_bootstrap), timeout=timeout,
                   what=f"secure Kafka broker ({protocol} on 127.0.0.1:{client})",
                   alive=lambda: proc.poll() is None, log=log)
    except ServiceError:
        broker.kill()
        raise
    return SecureBroker(broker=broker, bootstrap=f"127.0.0.1:{client}", internal_bootstrap=internal_bootstrap,
                        protocol=protocol)
