"""train_demo end to end (small), and the committed demo registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models import DEMO_REGISTRY, demo_data
from models.metrics import auc
from models.registry import ModelRegistry
from models.train import CATEGORICAL, INPUT_SPEC, train_demo

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("reg")
    return root, train_demo(root, seed=3, n_train=60_000, n_test=20_000, epochs=3, batch_size=256)


def test_train_demo_registers_both_exports_with_good_auc(trained: tuple[Path, object]) -> None:
    root, result = trained
    assert result.auc >= 0.85  # type: ignore[attr-defined]
    reg = ModelRegistry(root)
    onnx, ts = reg.get("fraud-mlp"), reg.get("fraud-mlp-torch")
    assert (onnx.version, onnx.stage, onnx.format) == ("1", "production", "onnx")
    assert (ts.version, ts.stage, ts.format) == ("1", "production", "torchscript")
    assert onnx.input_spec.names == demo_data.FEATURES
    assert onnx.output_spec == {"name": "score", "dtype": "float32", "shape": ["batch"]}
    assert onnx.metrics["auc"] == pytest.approx(result.auc)  # type: ignore[attr-defined]
    assert 0.0 < onnx.decision_threshold < 1.0


def test_registered_models_reproduce_auc_and_agree(trained: tuple[Path, object]) -> None:
    root, result = trained
    reg = ModelRegistry(root)
    cols = demo_data.generate(20_000, seed=3, start=60_000)  # the held-out range
    x = INPUT_SPEC.assemble(cols)
    onnx_scores = reg.load(reg.get("fraud-mlp")).predict(x)
    torch_scores = reg.load(reg.get("fraud-mlp-torch")).predict(x)
    np.testing.assert_allclose(onnx_scores, torch_scores, atol=1e-5)
    assert auc(demo_data.labels(cols), onnx_scores) == pytest.approx(result.auc, abs=1e-4)  # type: ignore[attr-defined]


def test_reference_profile_shape(trained: tuple[Path, object]) -> None:
    root, _ = trained
    prof = ModelRegistry(root).get("fraud-mlp").reference_profile
    assert set(prof["features"]) == set(demo_data.FEATURES)
    for name, feat in prof["features"].items():
        assert len(feat["edges"]) == 11 and feat["edges"][0] is None and feat["edges"][-1] is None, name
        assert sum(feat["freqs"]) == pytest.approx(1.0) and max(feat["freqs"]) < 0.2, name
    assert set(prof["categoricals"]) == set(CATEGORICAL)
    assert set(prof["categoricals"]["channel"]) == set(demo_data.CHANNELS)
    assert len(prof["score"]["edges"]) == 21 and sum(prof["score"]["freqs"]) == pytest.approx(1.0)
    assert prof["auc"] >= 0.85


def test_training_is_deterministic(trained: tuple[Path, object], tmp_path: Path) -> None:
    root, result = trained
    again = train_demo(tmp_path, seed=3, n_train=60_000, n_test=20_000, epochs=3, batch_size=256)
    assert again.auc == result.auc  # type: ignore[attr-defined]
    first = ModelRegistry(root).get("fraud-mlp")
    assert again.onnx.sha256 == first.sha256


def test_retraining_adds_version_and_archives_previous(tmp_path: Path) -> None:
    train_demo(tmp_path, seed=1, n_train=5000, n_test=5000, epochs=1)
    train_demo(tmp_path, seed=2, n_train=5000, n_test=5000, epochs=1)
    reg = ModelRegistry(tmp_path)
    assert {e.version: e.stage for e in reg.list("fraud-mlp")} == {"1": "archived", "2": "production"}
    assert reg.get("fraud-mlp-torch").version == "2"


def test_committed_demo_registry_loads_and_scores() -> None:
    reg = ModelRegistry(DEMO_REGISTRY)
    entry = reg.get("fraud-mlp")
    assert entry.version == "1" and entry.format == "onnx"
    assert entry.metrics["auc"] >= 0.9
    assert sum(f.stat().st_size for f in DEMO_REGISTRY.rglob("*") if f.is_file()) < 1_000_000
    cols = demo_data.generate(20_000, seed=99, start=10_000_000)
    x = INPUT_SPEC.assemble(cols)
    scores = reg.load(entry).predict(x)
    assert auc(demo_data.labels(cols), scores) >= 0.9
    np.testing.assert_allclose(reg.load(reg.get("fraud-mlp-torch")).predict(x), scores, atol=1e-5)
