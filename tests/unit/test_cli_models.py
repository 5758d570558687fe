"""`streamscore models ...` round-trips against a copy of the demo registry."""

import shutil
from pathlib import Path

import pytest

from models import DEMO_REGISTRY
from models.registry import ModelRegistry
from streamscore.cli import main


@pytest.fixture
def root(tmp_path: Path) -> Path:
    dst = tmp_path / "reg"
    shutil.copytree(DEMO_REGISTRY, dst)
    return dst


def test_register_promote_rollback_list_show(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    art = ModelRegistry(root).get("fraud-mlp").artifact_path
    assert main(["models", "register", "fraud-mlp", "--artifact", str(art), "--registry", str(root)]) == 0
    assert "registered fraud-mlp:2 (staging)" in capsys.readouterr().out
    assert main(["models", "promote", "fraud-mlp", "2", "--registry", str(root)]) == 0
    assert ModelRegistry(root).get("fraud-mlp").version == "2"
    assert main(["models", "list", "--registry", str(root)]) == 0
    listing = capsys.readouterr().out
    assert "fraud-mlp" in listing and "production" in listing and "archived" in listing
    assert main(["models", "rollback", "fraud-mlp", "--registry", str(root)]) == 0
    assert ModelRegistry(root).get("fraud-mlp").version == "1"
    assert main(["models", "show", "fraud-mlp", "--registry", str(root)]) == 0
    shown = capsys.readouterr().out
    assert '"version": "1"' in shown and '"sha256"' in shown


def test_tampered_artifact_is_refused_with_a_clear_error(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reg = ModelRegistry(root)
    entry = reg.get("fraud-mlp")
    entry.artifact_path.write_bytes(entry.artifact_path.read_bytes()[:-1] + b"\x00")
    from schemas.errors import ArtifactIntegrityError

    with pytest.raises(ArtifactIntegrityError, match="expected sha256"):
        reg.load(entry)


def test_unknown_model_is_a_clean_cli_error(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "show", "no-such-model", "--registry", str(root)]) == 2
    assert "no model named 'no-such-model'" in capsys.readouterr().err
