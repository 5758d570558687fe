"""File registry: register / list / get / promote / rollback, integrity, atomic layout, load."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.base import InputSpec
from models.onnx_backend import OnnxModel
from models.registry import ModelEntry, ModelRegistry, UnknownModelError
from models.testing import write_linear_onnx
from schemas.errors import ArtifactIntegrityError, ConfigError, ModelError, ModelLoadError

SPEC = InputSpec.of([f"x{i}" for i in range(4)])
OUT = {"name": "score", "dtype": "float32", "shape": ["batch"]}
W = np.array([0.5, -1.0, 0.25, 2.0])


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    return write_linear_onnx(tmp_path / "src.onnx", W)


@pytest.fixture
def reg(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "registry")


def register(reg: ModelRegistry, artifact: Path, **kw: Any) -> ModelEntry:
    return reg.register("m", artifact, format="onnx", input_spec=SPEC, output_spec=OUT, **kw)


def stages(reg: ModelRegistry) -> dict[str, str]:
    return {e.version: e.stage for e in reg.list("m")}


def test_register_copies_hashes_and_writes_metadata(reg: ModelRegistry, artifact: Path) -> None:
    entry = reg.register("m", artifact, format="onnx", input_spec=SPEC, output_spec=OUT,
                         reference_profile={"auc": 0.9}, metrics={"auc": 0.9}, decision_threshold=0.3)
    assert entry.version == "1" and entry.stage == "staging" and entry.format == "onnx"
    assert entry.artifact_path == reg.root / "m" / "1" / "model.onnx"
    assert entry.artifact_path.read_bytes() == artifact.read_bytes()
    import hashlib
    assert entry.sha256 == hashlib.sha256(artifact.read_bytes()).hexdigest()
    assert entry.input_spec == SPEC and entry.output_spec == OUT
    assert entry.metrics == {"auc": 0.9} and entry.reference_profile == {"auc": 0.9}
    assert entry.decision_threshold == 0.3
    assert datetime.fromisoformat(entry.created_at.replace("Z", "+00:00")).tzinfo is not None
    meta = json.loads((reg.root / "m" / "1" / "model.json").read_text())
    assert meta["artifact"] == "model.onnx" and meta["sha256"] == entry.sha256 and "stage" not in meta
    assert not [p for p in (reg.root / "m").iterdir() if p.name.startswith(".tmp")]


def test_versions_list_get_latest(reg: ModelRegistry, artifact: Path) -> None:
    for _ in range(3):
        register(reg, artifact)
    register(reg, artifact, version="10")
    assert [e.version for e in reg.list("m")] == ["1", "2", "3", "10"]
    assert reg.get("m", "latest").version == "10"
    assert reg.get("m", stage=None).version == "10"
    assert reg.get("m", "2").version == "2"
    assert reg.get("m", stage="staging").version == "10"
    assert register(reg, artifact).version == "11"
    assert [e.name for e in reg.list()] == ["m"] * 5


def test_promote_and_rollback_round_trip(reg: ModelRegistry, artifact: Path) -> None:
    for _ in range(3):
        register(reg, artifact)
    with pytest.raises(UnknownModelError, match="no version in stage 'production'"):
        reg.get("m")
    assert reg.promote("m", "1").stage == "production"
    reg.promote("m", "2")
    assert stages(reg) == {"1": "archived", "2": "production", "3": "staging"}
    reg.promote("m", "3")
    assert stages(reg) == {"1": "archived", "2": "archived", "3": "production"}
    assert reg.get("m").version == "3"

    assert reg.rollback("m").version == "2"
    assert stages(reg) == {"1": "archived", "2": "production", "3": "archived"}
    # Like `kubectl rollout undo`: the most recently archived former production is 3 again.
    assert reg.rollback("m").version == "3"
    assert reg.get("m").version == "3"


def test_rollback_without_history_fails(reg: ModelRegistry, artifact: Path) -> None:
    register(reg, artifact, stage="production")
    register(reg, artifact)
    reg.promote("m", "2", "archived")  # archived, but never production
    with pytest.raises(UnknownModelError, match="no archived former production"):
        reg.rollback("m")


def test_register_as_production_archives_previous(reg: ModelRegistry, artifact: Path) -> None:
    register(reg, artifact, stage="production")
    register(reg, artifact, stage="production")
    assert stages(reg) == {"1": "archived", "2": "production"}
    assert reg.rollback("m").version == "1"


def test_clear_errors_name_valid_options(reg: ModelRegistry, artifact: Path) -> None:
    register(reg, artifact)
    with pytest.raises(UnknownModelError, match=r"no model named 'nope'.*known: \['m'\]"):
        reg.get("nope")
    with pytest.raises(UnknownModelError, match=r"no version '7'; versions: \['1'\]"):
        reg.get("m", "7")
    with pytest.raises(ConfigError, match=r"unknown model stage 'prod'; valid: \['staging', 'production', 'archived'\]"):
        reg.get("m", stage="prod")
    with pytest.raises(ConfigError, match="unknown model stage"):
        reg.promote("m", "1", "live")
    with pytest.raises(ConfigError, match=r"unknown model format 'pickle'; valid: \['onnx', 'torchscript'"):
        reg.register("m", artifact, format="pickle", input_spec=SPEC, output_spec=OUT)
    with pytest.raises(ModelError, match="already exists"):
        register(reg, artifact, version="1")
    with pytest.raises(ConfigError, match="directory name"):
        register(reg, artifact, version="../evil")
    with pytest.raises(ModelError, match="does not exist"):
        reg.register("m", artifact.parent / "missing.onnx", format="onnx", input_spec=SPEC, output_spec=OUT)
    assert [e.version for e in reg.list("m")] == ["1"]


def test_load_scores_match_weights(reg: ModelRegistry, artifact: Path) -> None:
    entry = register(reg, artifact, stage="production")
    model = reg.load(reg.get("m"))
    assert isinstance(model, OnnxModel) and model.name == "m" and model.version == "1"
    x = np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32)
    expected = 1 / (1 + np.exp(-(x.astype(np.float64) @ W)))
    np.testing.assert_allclose(model.predict(x), expected, atol=1e-6)
    model.close()
    assert entry is not None


def test_tampered_artifact_is_refused(reg: ModelRegistry, artifact: Path) -> None:
    entry = register(reg, artifact, stage="production")
    path = entry.artifact_path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError) as info:
        reg.load(reg.get("m"))
    msg = str(info.value)
    assert str(path) in msg and entry.sha256 in msg
    import hashlib
    assert hashlib.sha256(bytes(data)).hexdigest() in msg


def test_missing_artifact_is_refused(reg: ModelRegistry, artifact: Path) -> None:
    entry = register(reg, artifact, stage="production")
    entry.artifact_path.unlink()
    with pytest.raises(ArtifactIntegrityError, match="cannot be read"):
        reg.load(reg.get("m"))


def test_load_smoke_check_catches_wrong_output_length(reg: ModelRegistry, tmp_path: Path) -> None:
    bad = write_linear_onnx(tmp_path / "bad.onnx", W, output="scalar")
    reg.register("bad", bad, format="onnx", input_spec=SPEC, output_spec=OUT, stage="production")
    with pytest.raises(ModelLoadError, match="smoke check") as info:
        reg.load(reg.get("bad"))
    assert info.value.__cause__ is not None


def test_load_rejects_spec_graph_mismatch(reg: ModelRegistry, artifact: Path) -> None:
    reg.register("wide", artifact, format="onnx", input_spec=InputSpec.of(["a", "b"]), output_spec=OUT,
                 stage="production")
    with pytest.raises(ModelLoadError, match="does not match 2 features"):
        reg.load(reg.get("wide"))


def test_registry_files_are_shareable(reg: ModelRegistry, artifact: Path) -> None:
    register(reg, artifact, stage="production")
    for p in (reg.root / "m" / "1" / "model.json", reg.root / "m" / "stages.json"):
        assert p.stat().st_mode & 0o044 == 0o044, p
    assert (reg.root / "m" / "1").stat().st_mode & 0o055 == 0o055
