"""docker-compose.yml, the Dockerfile and deploy/k8s: structure, and every command is a real CLI call.

No Docker engine or cluster here: the compose file is validated against the compose
specification's JSON schema (vendored by the check-jsonschema package) plus structural
checks; the k8s manifests are checked for the links between them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamscore.cli import build_parser
from streamscore.config import parse_config

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
# monitor, dashboard, alerts and drift are being added to the CLI; until then their names are checked only
SUBCOMMANDS = ["serve", "produce", "dev", "models", "demo", "monitor", "dashboard", "alerts", "drift"]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _has_subcommand(name: str) -> bool:
    """`streamscore NAME --help` exits 0 for a subcommand the parser has, 2 for an invalid choice."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            build_parser().parse_args([name, "--help"])
        except SystemExit as exc:
            return exc.code == 0
    return True


def check_cli(argv: list[str]) -> None:
    """``argv`` (after "streamscore") names a subcommand, and parses if the CLI already has it."""
    assert argv and argv[0] in SUBCOMMANDS, argv
    if _has_subcommand(argv[0]):
        try:
            build_parser().parse_args(argv)
        except SystemExit as exc:
            raise AssertionError(f"streamscore {' '.join(argv)}: rejected by the CLI parser") from exc


def _compose_schema() -> dict[str, Any] | None:
    spec = importlib.util.find_spec("check_jsonschema")     # located, not imported: only its data file is used
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "builtin_schemas" / "vendor" / "compose-spec.json"
    return json.loads(path.read_text()) if path.exists() else None


def test_compose_validates_against_the_compose_spec_schema(compose: dict[str, Any]) -> None:
    schema = _compose_schema()
    if schema is None:
        pytest.skip("check-jsonschema (which vendors compose-spec.json) is not installed")
    import jsonschema

    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, errors
    broken = {**compose, "services": {"x": {"image": 1, "not_a_key": True}}}
    assert list(validator.iter_errors(broken)), "the schema must reject a broken file"


def test_cli_probe_tells_known_from_unknown_subcommands() -> None:
    assert _has_subcommand("serve") and not _has_subcommand("no-such-command")


def test_compose_structure(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"kafka", "redis", "scorer", "monitor", "dashboard", "prometheus", "grafana"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    env = services["kafka"]["environment"]
    assert "controller" in env["KAFKA_PROCESS_ROLES"] and "zookeeper" not in json.dumps(services).lower()  # KRaft
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name
        for dep in svc.get("depends_on", []):
            assert dep in services, (name, dep)
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("./"):
                assert (ROOT / src).exists(), (name, src)
            else:
                assert src in compose.get("volumes", {}), (name, src)
    prom = services["prometheus"]
    assert any(v.endswith(":/etc/prometheus/alerts.yml:ro") for v in prom["volumes"])
    assert services["dashboard"]["ports"] == ["127.0.0.1:8050:8050"]


def test_compose_publishes_on_loopback_with_passwords(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    assert "--requirepass" in " ".join(services["redis"]["command"])
    example = (ROOT / "deploy" / "compose" / "secrets.env.example").read_text()
    for name in ("redis", "scorer", "monitor", "dashboard", "grafana"):
        assert services[name].get("env_file") == "deploy/compose/secrets.env", name
    for key in ("REDIS_PASSWORD=", "REDIS_URL=redis://:", "GF_SECURITY_ADMIN_PASSWORD="):
        assert key in example, key
    assert "deploy/compose/secrets.env" in (ROOT / ".gitignore").read_text().splitlines()


def test_streamscore_services_run_real_subcommands(compose: dict[str, Any]) -> None:
    ours = {n: s for n, s in compose["services"].items() if s.get("image", "").startswith("streamscore")}
    assert {"scorer", "monitor", "dashboard", "producer"} <= set(ours)
    for name, svc in ours.items():
        cmd = svc["command"]
        assert isinstance(cmd, list) and cmd[0] == "streamscore", name
        check_cli(cmd[1:])
    assert ours["scorer"]["command"][1] == "serve"
    assert ours["monitor"]["command"][1] == "monitor"
    assert ours["dashboard"]["command"][1] == "dashboard"


def test_compose_pipeline_is_a_valid_config() -> None:
    raw = yaml.safe_load((ROOT / "deploy" / "compose" / "pipeline.yaml").read_text())
    cfg = parse_config(raw, source="deploy/compose/pipeline.yaml", env={})
    assert cfg.kafka.bootstrap_servers == "kafka:9092" and cfg.metrics_port == 9300
    prom = yaml.safe_load((ROOT / "monitoring" / "prometheus" / "prometheus.yml").read_text())
    targets = next(j for j in prom["scrape_configs"] if j["job_name"] == "streamscore")["static_configs"][0]["targets"]
    assert targets == [f"scorer:{cfg.metrics_port}", f"scorer:{cfg.metrics_port + 1}"]   # serve --processes 2


def test_dockerfile() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    assert "pip install ." in text
    for pkg in ("streamscore", "consumers", "models", "schemas", "sinks", "monitoring"):
        assert f"COPY {pkg} ./{pkg}" in text, pkg
    assert re.search(r"^USER \d+", text, re.M), "run as non-root"


# ---------------------------------------------------------------- k8s
def _manifests() -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out[f"{doc['kind']}/{doc['metadata']['name']}" if "metadata" in doc else doc["kind"]] = doc
    return out


def test_k8s_manifests_are_well_formed() -> None:
    m = _manifests()
    api = {"ConfigMap": "v1", "Service": "v1", "Deployment": "apps/v1", "ScaledObject": "keda.sh/v1alpha1",
           "HorizontalPodAutoscaler": "autoscaling/v2", "Kustomization": "kustomize.config.k8s.io/v1beta1"}
    for key, doc in m.items():
        assert doc["apiVersion"] == api[doc["kind"]], key
    kust = m["Kustomization"]
    for res in kust["resources"]:
        assert (K8S / res).exists(), res
    assert "hpa-alternative.yaml" not in kust["resources"], "KEDA and an HPA must not both own the replicas"


def test_k8s_selectors_ports_and_config_link_up() -> None:
    m = _manifests()
    dep, svc, cm = m["Deployment/streamscore-scorer"], m["Service/streamscore-scorer-metrics"], m["ConfigMap/streamscore-pipeline"]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert svc["spec"]["ports"][0]["targetPort"] in ports
    cfg = parse_config(yaml.safe_load(cm["data"]["pipeline.yaml"]), source="configmap", env={})
    assert ports["metrics"] == cfg.metrics_port
    assert dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(cfg.metrics_port)
    check_cli([*container["command"][1:], *container["args"]])
    mount = next(v for v in container["volumeMounts"] if v["name"] == "pipeline")
    cfg_arg = container["args"][container["args"].index("-c") + 1]
    assert cfg_arg == f"{mount['mountPath']}/pipeline.yaml"
    vol = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "pipeline")
    assert vol["configMap"]["name"] == cm["metadata"]["name"]


@pytest.mark.parametrize("kind", ["ScaledObject", "HorizontalPodAutoscaler"])
def test_autoscaler_targets_the_deployment(kind: str) -> None:
    m = _manifests()
    scaler = next(d for d in m.values() if d["kind"] == kind)
    dep = m["Deployment/streamscore-scorer"]
    ref = scaler["spec"]["scaleTargetRef"]
    assert ref["name"] == dep["metadata"]["name"] and ref.get("kind", "Deployment") == "Deployment"


def test_keda_scales_on_the_pipelines_consumer_lag() -> None:
    m = _manifests()
    so = m["ScaledObject/streamscore-scorer"]
    cfg = parse_config(yaml.safe_load(m["ConfigMap/streamscore-pipeline"]["data"]["pipeline.yaml"]), env={})
    (trigger,) = so["spec"]["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka"
    assert all(isinstance(v, str) for v in meta.values()), "KEDA trigger metadata values are strings"
    assert meta["consumerGroup"] == cfg.group_id
    assert meta["topic"] in {p.input.topic for p in cfg.pipelines}
    assert meta["bootstrapServers"] == cfg.kafka.bootstrap_servers
    assert int(meta["lagThreshold"]) > 0
    assert 1 <= so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"]
