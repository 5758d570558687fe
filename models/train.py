"""Train the demo fraud MLP on ``demo_data`` and register it (ONNX + TorchScript).

Run: ``python -m models.train [REGISTRY_DIR]`` (defaults to ``models/demo_registry``).

The exported graphs take RAW features: ``log1p(amount)`` and standardisation are part
of the module, so a scorer only assembles columns in ``FEATURES`` order.
Output ``score`` is float32 of shape ``[batch]`` (sigmoid probability of fraud).
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models import demo_data
from models.base import InputSpec
from models.metrics import auc, best_f1_threshold
from models.profile import build_profile
from models.registry import ModelEntry, ModelRegistry

ONNX_NAME = "fraud-mlp"
TORCH_NAME = "fraud-mlp-torch"
INPUT_SPEC = InputSpec.of(demo_data.FEATURES, "float32", input_name="features")
OUTPUT_SPEC: dict[str, Any] = {"name": "score", "dtype": "float32", "shape": ["batch"]}
CATEGORICAL = ("currency", "merchant_category", "country", "channel")
OPSET = 17


@dataclass(frozen=True)
class TrainResult:
    onnx: ModelEntry
    torchscript: ModelEntry
    auc: float
    decision_threshold: float
    train_seconds: float
    n_train: int
    n_test: int


def build_module(mean: np.ndarray, std: np.ndarray) -> Any:
    """The MLP 16 -> 64 -> 32 -> 1 with log1p(amount) and standardisation baked in."""
    import torch
    from torch import nn

    class FraudMLP(nn.Module):
        mean: torch.Tensor
        inv_std: torch.Tensor
        log_mask: torch.Tensor

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
            self.register_buffer("inv_std", torch.as_tensor(1.0 / std, dtype=torch.float32))
            log_mask = torch.zeros(len(mean), dtype=torch.bool)
            log_mask[0] = True  # column 0 is the raw amount
            self.register_buffer("log_mask", log_mask)
            self.net = nn.Sequential(nn.Linear(len(mean), 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
                                     nn.Linear(32, 1))

        def logits(self, features: torch.Tensor) -> torch.Tensor:
            x = torch.where(self.log_mask, torch.log1p(torch.clamp(features, min=0.0)), features)
            return self.net((x - self.mean) * self.inv_std).reshape(-1)

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.logits(features))

    return FraudMLP()


def _fit(x: np.ndarray, y: np.ndarray, *, seed: int, epochs: int, batch_size: int) -> Any:
    import torch

    torch.manual_seed(seed)
    t = np.where(np.arange(x.shape[1]) == 0, np.log1p(np.maximum(x, 0.0)), x)
    model = build_module(t.mean(axis=0), np.maximum(t.std(axis=0), 1e-6))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.float32))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * (len(x) // batch_size + 1))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=gen).split(batch_size):
            opt.zero_grad(set_to_none=True)
            loss_fn(model.logits(xt[idx]), yt[idx]).backward()
            opt.step()
            sched.step()
    return model.eval()


def _export(model: Any, out_dir: Path) -> tuple[Path, Path]:
    import torch

    example = torch.zeros(4, len(INPUT_SPEC), dtype=torch.float32)
    onnx_path, ts_path = out_dir / "model.onnx", out_dir / "model.pt"
    with warnings.catch_warnings():  # the legacy exporter and jit.trace warn they are deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        _export_files(model, example, onnx_path, ts_path)
    return onnx_path, ts_path


def _export_files(model: Any, example: Any, onnx_path: Path, ts_path: Path) -> None:
    import torch

    torch.onnx.export(
        model, (example,), str(onnx_path), input_names=["features"], output_names=["score"],
        dynamic_axes={"features": {0: "batch"}, "score": {0: "batch"}}, opset_version=OPSET, dynamo=False,
    )
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(model, example), str(ts_path))


def train_demo(registry_dir: Path, *, seed: int = 7, n_train: int = 200_000, n_test: int = 50_000,
               epochs: int = 4, batch_size: int = 512, threads: int = 1,
               stage: str = "production") -> TrainResult:
    """Train on ``generate(n_train, seed)``, evaluate on the next ``n_test`` events, register both
    exports under ``registry_dir``. Deterministic for a given seed and thread count.

    ``threads`` caps torch's intra-op threads for the call (restored afterwards). One is the
    default: layers this narrow gain nothing from a second thread, and on a busy 2-core box
    two spinning threads made training ~30x slower.
    """
    import torch

    started = time.perf_counter()
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        train_cols = demo_data.generate(n_train, seed=seed)
        test_cols = demo_data.generate(n_test, seed=seed, start=n_train)
        x_train = INPUT_SPEC.assemble(train_cols)
        x_test = INPUT_SPEC.assemble(test_cols)
        y_test = demo_data.labels(test_cols)
        model = _fit(x_train, demo_data.labels(train_cols), seed=seed, epochs=epochs, batch_size=batch_size)
        with torch.inference_mode():
            test_scores = model(torch.from_numpy(x_test)).numpy()
            train_scores = model(torch.from_numpy(x_train)).numpy()
        result_auc = auc(y_test, test_scores)
        threshold = best_f1_threshold(y_test, test_scores)
        metrics = {"auc": result_auc, "positive_rate": float(y_test.mean())}
        profile = build_profile(train_cols, numeric=demo_data.FEATURES, categorical=CATEGORICAL,
                                scores=train_scores, metrics=metrics)
        registry = ModelRegistry(Path(registry_dir))
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path, ts_path = _export(model, Path(tmp))
            common: dict[str, Any] = {
                "input_spec": INPUT_SPEC, "output_spec": OUTPUT_SPEC, "reference_profile": profile,
                "metrics": metrics, "stage": stage, "version": _next_version(registry),
                "decision_threshold": round(threshold, 6),
            }
            onnx_entry = registry.register(ONNX_NAME, onnx_path, format="onnx", **common)
            ts_entry = registry.register(TORCH_NAME, ts_path, format="torchscript", **common)
    finally:
        torch.set_num_threads(prev_threads)
    return TrainResult(onnx_entry, ts_entry, result_auc, threshold, time.perf_counter() - started,
                       n_train, n_test)


def _next_version(registry: ModelRegistry) -> str:
    """One version number for both exports, so fraud-mlp:N and fraud-mlp-torch:N share weights."""
    versions = [int(e.version) for n in (ONNX_NAME, TORCH_NAME) for e in registry.list(n) if e.version.isdigit()]
    return str(max(versions, default=0) + 1)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    from models import DEMO_REGISTRY

    target = Path(args[0]) if args else DEMO_REGISTRY
    result = train_demo(target)
    print(f"registered {result.onnx.name}:{result.onnx.version} and {result.torchscript.name}:"
          f"{result.torchscript.version} in {target}: auc={result.auc:.4f} "
          f"threshold={result.decision_threshold:.4f} time={result.train_seconds:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
