"""Every streamscore service in docker-compose.yml and deploy/k8s passes its own ``--check``.

Each service's command runs in-process with ``--check`` added, its mounted files mapped to
their paths in this repository, and the environment it would get (``environment`` plus
``deploy/compose/secrets.env.example``, the template of its env file). ``--check`` touches no
broker, so nothing runs but the CLI; a broken mount must fail with one error and exit 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from streamscore.cli import main

ROOT = Path(__file__).resolve().parents[2]
CHECKED = ("serve", "monitor", "dashboard")


def _env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def compose_checks() -> list[tuple[str, list[str], dict[str, str]]]:
    """(service, argv with repo paths and --check, environment) for every checkable service."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    out = []
    for name, svc in compose["services"].items():
        cmd = svc.get("command")
        if not (isinstance(cmd, list) and cmd[0] == "streamscore" and cmd[1] in CHECKED):
            continue
        mounts = {}
        for vol in svc.get("volumes", []):
            src, dst = vol.split(":")[:2]
            if src.startswith("./"):
                mounts[dst] = str(ROOT / src)
        env = {k: str(v) for k, v in (svc.get("environment") or {}).items()}
        env_file = svc.get("env_file")
        if env_file:
            assert env_file == "deploy/compose/secrets.env", env_file
            env.update(_env_file(ROOT / "deploy" / "compose" / "secrets.env.example"))
        out.append((name, [mounts.get(a, a) for a in cmd[1:]] + ["--check"], env))
    return out


def k8s_checks(tmp: Path) -> list[tuple[str, list[str], dict[str, str]]]:
    """The same for every container of deploy/k8s, its ConfigMap volumes written under ``tmp``."""
    docs = [d for p in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    maps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    out = []
    for dep in (d for d in docs if d["kind"] == "Deployment"):
        spec = dep["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            argv = [*c.get("command", [])[1:], *c.get("args", [])]
            if not argv or argv[0] not in CHECKED:
                continue
            for m in c.get("volumeMounts", []):
                data = maps[volumes[m["name"]]["configMap"]["name"]]
                for fname, text in data.items():
                    local = tmp / m["mountPath"].strip("/") / fname
                    local.parent.mkdir(parents=True, exist_ok=True)
                    local.write_text(text)
                    argv = [str(local) if a == f"{m['mountPath']}/{fname}" else a for a in argv]
            env = {e["name"]: e.get("value", "pod-0") for e in c.get("env", [])}
            out.append((f"{dep['metadata']['name']}/{c['name']}", [a.replace("$(POD_NAME)", "pod-0") for a in argv]
                        + ["--check"], env))
    return out


def run_check(argv: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
              capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    for key in ("KAFKA_BOOTSTRAP", "REDIS_URL", "STREAMSCORE_SECRETS_FILE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_every_compose_and_k8s_service_passes_its_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    checks = compose_checks() + k8s_checks(tmp_path)
    assert {name for name, _, _ in checks} >= {"scorer", "monitor", "dashboard", "streamscore-scorer/scorer"}
    for name, argv, env in checks:
        code, out, err = run_check(argv, env, monkeypatch, capsys)
        assert code == 0, (name, argv, err)
        assert len(out.strip().splitlines()) == 1 and "OK" in out, (name, out)
        assert "change-me" not in out, "a password reached the output"


def _with(argv: list[str], old: str, new: str) -> list[str]:
    assert old in argv, argv
    return [new if a == old else a for a in argv]


@pytest.mark.parametrize("breakage", ["monitor reads the pipeline file", "unknown model", "bad redis url"])
def test_a_broken_service_config_fails_its_check(breakage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    checks = {name: (argv, env) for name, argv, env in compose_checks()}
    if breakage == "monitor reads the pipeline file":       # what the compose file did before --check existed
        argv, env = checks["monitor"]
        argv = _with(argv, str(ROOT / "deploy/compose/monitor.yaml"), str(ROOT / "deploy/compose/pipeline.yaml"))
    elif breakage == "unknown model":
        argv, env = checks["scorer"]
        broken = tmp_path / "pipeline.yaml"
        broken.write_text((ROOT / "deploy/compose/pipeline.yaml").read_text().replace("fraud-mlp", "no-such-model"))
        argv = _with(argv, str(ROOT / "deploy/compose/pipeline.yaml"), str(broken))
    else:
        argv, env = checks["dashboard"]
        env = {**env, "REDIS_URL": "http://redis:6379/0"}
    code, out, err = run_check(argv, env, monkeypatch, capsys)
    assert code == 2 and out == ""
    # one error: a config's problems are listed under one line, like the pipeline loader's
    assert err.count("streamscore: error: ") == 1 and err.startswith("streamscore: error: "), err
    assert "Traceback" not in err
