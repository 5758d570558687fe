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


def test_register_takes_the_threshold_or_keeps_the_copied_one(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reg = ModelRegistry(root)
    v1 = reg.get("fraud-mlp")
    assert main(["models", "register", "fraud-mlp", "--artifact", str(v1.artifact_path), "--threshold", "0.397",
                 "--registry", str(root)]) == 0
    assert "threshold=0.397" in capsys.readouterr().out
    assert main(["models", "promote", "fraud-mlp", "2", "--registry", str(root)]) == 0
    assert reg.get("fraud-mlp").decision_threshold == pytest.approx(0.397)
    # without --threshold the threshold travels with the spec it is copied from
    assert main(["models", "register", "fraud-mlp", "--artifact", str(v1.artifact_path), "--registry", str(root)]) == 0
    assert reg.get("fraud-mlp", "3").decision_threshold == pytest.approx(0.397)


def test_a_new_model_registers_from_the_spec_file_the_help_describes(root: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from streamscore.cli import build_parser

    v1 = ModelRegistry(root).get("fraud-mlp")
    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["models"].format_help().split())  # type: ignore[union-attr]
    assert '{"input_spec": {"features": [{"name": "amount", "dtype": "float32"}' in help_text
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"input_spec": v1.input_spec.to_dict(), "output_spec": v1.output_spec,
                                "decision_threshold": 0.42}))
    assert main(["models", "register", "newmodel", "--artifact", str(v1.artifact_path), "--input-spec", str(spec),
                 "--stage", "production", "--registry", str(root)]) == 0
    new = ModelRegistry(root).get("newmodel")
    assert new.input_spec == v1.input_spec and new.decision_threshold == pytest.approx(0.42)
    # another version's model.json is a spec file too
    assert main(["models", "register", "other", "--artifact", str(v1.artifact_path), "--registry", str(root),
                 "--input-spec", str(v1.artifact_path.parent / "model.json")]) == 0
    assert ModelRegistry(root).get("other", "1").reference_profile == v1.reference_profile


def test_a_registry_directory_that_does_not_exist_is_an_error_not_an_empty_listing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-registry"
    for argv in (["models", "list"], ["models", "show", "fraud-mlp"], ["models", "promote", "fraud-mlp", "2"]):
        assert main([*argv, "--registry", str(missing)]) == 2
        assert f"registry: directory {missing} does not exist" in capsys.readouterr().err
    assert not missing.exists()


def test_an_mlflow_registry_is_refused_by_the_models_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "list", "--registry", "mlflow+http://127.0.0.1:1"]) == 2
    assert "--registry takes a registry directory" in capsys.readouterr().err


def test_an_empty_listing_says_so_on_stderr(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "list", "no-such-model", "--registry", str(root)]) == 0
    out = capsys.readouterr()
    assert out.out == "" and f"no versions of 'no-such-model' in {root}" in out.err
    (tmp_path / "empty").mkdir()
    assert main(["models", "list", "--registry", str(tmp_path / "empty")]) == 0
    assert "no models in" in capsys.readouterr().err
