"""`streamscore dev down --purge`: the dev services' data goes, nothing else (no services needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _down(home: Path, *args: str) -> dict[str, object]:
    env = {**os.environ, "STREAMSCORE_HOME": str(home)}
    out = subprocess.run([sys.executable, "-m", "streamscore", "dev", "down", *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)   # type: ignore[no-any-return]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    dev = tmp_path / "dev"
    for d in ("kafka/data", "redis"):
        (dev / d).mkdir(parents=True)
    (dev / "kafka" / "data" / "segment.log").write_bytes(b"x" * 100)
    (dev / "redis" / "dump.rdb").write_bytes(b"x")
    (dev / "state.json").write_text(json.dumps({"pids": {}}))     # services already gone
    (tmp_path / "kafka-4.4.0").mkdir()                             # the cached jars: never touched
    return tmp_path


def test_down_keeps_data_by_default(home: Path) -> None:
    assert _down(home) == {"stopped": []}
    assert (home / "dev" / "kafka" / "data" / "segment.log").exists()
    assert not (home / "dev" / "state.json").exists()


def test_down_purge_deletes_only_the_service_data(home: Path) -> None:
    res = _down(home, "--purge")
    assert sorted(Path(p).name for p in res["purged"]) == ["kafka", "redis"]   # type: ignore[union-attr]
    assert not (home / "dev" / "kafka").exists() and not (home / "dev" / "redis").exists()
    assert (home / "kafka-4.4.0").is_dir()
    assert _down(home, "--purge") == {"stopped": [], "purged": []}     # nothing left: still fine


def test_up_refuses_a_cluster_too_small_for_replication_factor_3(tmp_path: Path) -> None:
    env = {**os.environ, "STREAMSCORE_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "streamscore", "dev", "up", "--brokers", "2"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip() == "streamscore: error: --brokers must be 1 or at least 3 (replication factor 3), not 2"
    assert not (tmp_path / "dev").exists()     # nothing started
