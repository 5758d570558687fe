"""ONNX and torch backends agree with the reference computations they wrap."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models import demo_data
from models.base import InputSpec
from models.onnx_backend import OnnxModel
from models.testing import write_linear_onnx
from models.torch_backend import TorchModel
from models.train import INPUT_SPEC, _export, build_module
from schemas.errors import ConfigError, ModelLoadError, PredictError

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def mlp() -> Any:
    """The demo MLP with random weights and realistic standardisation (no training needed)."""
    torch.manual_seed(0)
    x = INPUT_SPEC.assemble(demo_data.generate(5000, seed=1)).astype(np.float64)
    x[:, 0] = np.log1p(x[:, 0])
    return build_module(x.mean(axis=0), x.std(axis=0)).eval()


@pytest.fixture(scope="module")
def exported(mlp: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _export(mlp, tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def features() -> np.ndarray:
    return INPUT_SPEC.assemble(demo_data.generate(3000, seed=2, start=10_000))


def reference(mlp: Any, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        out: np.ndarray = mlp(torch.from_numpy(x)).numpy()
    return out


def onnx_model(path: Path, spec: InputSpec = INPUT_SPEC, **kw: Any) -> OnnxModel:
    model = OnnxModel(path, name="m", version="1", input_spec=spec, **kw)
    model.load()
    return model


def test_onnx_matches_raw_onnxruntime_and_torch(mlp: Any, exported: tuple[Path, Path],
                                                features: np.ndarray) -> None:
    model = onnx_model(exported[0])
    scores = model.predict(features)
    assert scores.shape == (len(features),) and scores.dtype == np.float32
    session = ort.InferenceSession(str(exported[0]), providers=["CPUExecutionProvider"])
    (raw,) = session.run(["score"], {"features": features})
    np.testing.assert_allclose(scores, raw.reshape(-1), atol=1e-6)
    np.testing.assert_allclose(scores, reference(mlp, features), atol=1e-5)
    assert scores.std() > 1e-3  # the comparison is not between constants
    assert model.providers == ["CPUExecutionProvider"]
    model.close()


def test_onnx_dynamic_batch_sizes(exported: tuple[Path, Path], features: np.ndarray) -> None:
    model = onnx_model(exported[0])
    full = model.predict(features)
    for n in (1, 2, 17, 1024):
        np.testing.assert_allclose(model.predict(features[:n]), full[:n], atol=1e-6)
    assert model.predict(features[:0]).shape == (0,)


def test_onnx_flattens_batch_by_one_output(tmp_path: Path) -> None:
    w = np.array([1.0, -2.0, 0.5])
    model = onnx_model(write_linear_onnx(tmp_path / "m.onnx", w, output="batch_1"), InputSpec.of(["a", "b", "c"]))
    x = np.random.default_rng(3).normal(size=(5, 3)).astype(np.float32)
    out = model.predict(x)
    assert out.shape == (5,)
    np.testing.assert_allclose(out, 1 / (1 + np.exp(-(x.astype(np.float64) @ w))), atol=1e-6)


def test_onnx_output_length_check(tmp_path: Path) -> None:
    model = onnx_model(write_linear_onnx(tmp_path / "m.onnx", np.ones(3), output="scalar"),
                       InputSpec.of(["a", "b", "c"]))
    with pytest.raises(PredictError, match="returned 1 scores for 5 input rows"):
        model.predict(np.zeros((5, 3), dtype=np.float32))


def test_onnx_predict_errors(exported: tuple[Path, Path], tmp_path: Path) -> None:
    unloaded = OnnxModel(exported[0], name="m", version="1", input_spec=INPUT_SPEC)
    with pytest.raises(PredictError, match="before load"):
        unloaded.predict(np.zeros((1, 16), dtype=np.float32))
    model = onnx_model(exported[0])
    with pytest.raises(PredictError, match=r"shape \(n, 16\), got \(3, 15\)"):
        model.predict(np.zeros((3, 15), dtype=np.float32))
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="cannot load") as info:
        onnx_model(garbage)
    assert info.value.__cause__ is not None


def test_onnx_cuda_request_without_cuda_fails_clearly(exported: tuple[Path, Path]) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA provider present")
    with pytest.raises(ModelLoadError, match="device 'cuda' requested"):
        onnx_model(exported[0], device="cuda")
    assert onnx_model(exported[0], device="auto").providers == ["CPUExecutionProvider"]


def torch_model(path: Path, **kw: Any) -> TorchModel:
    model = TorchModel(path, name="m", version="1", input_spec=INPUT_SPEC, **kw)
    model.load()
    return model


def test_torchscript_matches_module(mlp: Any, exported: tuple[Path, Path], features: np.ndarray) -> None:
    model = torch_model(exported[1], format="torchscript")
    scores = model.predict(features)
    assert scores.shape == (len(features),) and scores.dtype == np.float32
    np.testing.assert_allclose(scores, reference(mlp, features), atol=1e-6)
    model.close()
    with pytest.raises(PredictError, match="before load"):
        model.predict(features)


def test_torchscript_reduced_precision(mlp: Any, exported: tuple[Path, Path], features: np.ndarray) -> None:
    model = torch_model(exported[1], format="torchscript", dtype="bfloat16")
    scores = model.predict(features)
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, reference(mlp, features), atol=0.05)


def test_torch_export_archive_matches_module(mlp: Any, features: np.ndarray, tmp_path: Path) -> None:
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(mlp, (torch.zeros(4, 16),), dynamic_shapes={"features": {0: batch}})
    path = tmp_path / "model.pt2"
    torch.export.save(program, str(path))
    model = torch_model(path, format="torch_export")
    np.testing.assert_allclose(model.predict(features), reference(mlp, features), atol=1e-6)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torch_output_length_check(tmp_path: Path) -> None:
    class Summer(torch.nn.Module):
        def forward(self, x: Any) -> Any:
            return x.sum()

    path = tmp_path / "sum.pt"
    torch.jit.save(torch.jit.trace(Summer(), torch.zeros(4, 16)), str(path))
    model = torch_model(path)
    with pytest.raises(PredictError, match="returned 1 scores for 4 input rows"):
        model.predict(np.zeros((4, 16), dtype=np.float32))


def test_torch_errors(exported: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown torch dtype"):
        TorchModel(exported[1], name="m", version="1", input_spec=INPUT_SPEC, dtype="int8")  # type: ignore[arg-type]
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="cannot load"):
        torch_model(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="no CUDA device"):
            torch_model(exported[1], device="cuda")
