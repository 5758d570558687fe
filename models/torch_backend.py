"""PyTorch backend for TorchScript (``torch.jit.load``) and ``torch.export`` archives.

torch is imported in ``load()`` only, so ``models`` imports without torch installed.
Neither format is unpickled: TorchScript and torch.export archives are loaded by their
own deserializers, after the registry has checked the artifact's sha256.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np

from models.base import InputSpec, check_features, check_scores
from schemas.errors import ConfigError, ModelLoadError, PredictError

TorchFormat = Literal["torchscript", "torch_export"]
Device = Literal["cpu", "cuda", "auto"]
TorchDtype = Literal["float32", "bfloat16", "float16"]
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")


class TorchModel:
    """A torch module taking ``(n, f)`` features and returning ``n`` scores (any shape with n elements)."""

    def __init__(self, path: Path, *, name: str, version: str, input_spec: InputSpec,
                 format: TorchFormat = "torchscript", device: Device = "cpu",
                 dtype: TorchDtype = "float32") -> None:
        if format not in ("torchscript", "torch_export"):
            raise ConfigError(f"unknown torch format {format!r}; valid: ['torchscript', 'torch_export']")
        if dtype not in DTYPES:
            raise ConfigError(f"unknown torch dtype {dtype!r}; valid: {list(DTYPES)}")
        self.path = Path(path)
        self.name = name
        self.version = version
        self.input_spec = input_spec
        self.format = format
        self.device = device
        self.dtype = dtype
        self._module: Any = None
        self._torch: Any = None
        self._device: Any = None
        self._dtype: Any = None

    @property
    def label(self) -> str:
        return f"{self.name}:{self.version} ({self.format})"

    def load(self) -> None:
        try:
            import torch
        except ImportError as exc:
            raise ModelLoadError(f"{self.label}: torch is not installed (pip install streamscore[torch])") from exc
        cuda = torch.cuda.is_available()
        if self.device == "cuda" and not cuda:
            raise ModelLoadError(f"{self.label}: device 'cuda' requested but torch sees no CUDA device")
        device = torch.device("cuda" if self.device == "cuda" or (self.device == "auto" and cuda) else "cpu")
        dtype = getattr(torch, self.dtype)
        try:
            if self.format == "torchscript":
                with warnings.catch_warnings():  # torch >= 2.10 marks TorchScript deprecated
                    warnings.simplefilter("ignore", FutureWarning)
                    module = torch.jit.load(str(self.path), map_location=device)
            else:
                module = torch.export.load(str(self.path)).module()
            module = module.to(device=device, dtype=dtype)
            if hasattr(module, "eval") and self.format == "torchscript":
                module.eval()
        except Exception as exc:  # torch raises RuntimeError, ValueError, zipfile errors, ...
            raise ModelLoadError(f"{self.label}: cannot load {self.path}: {exc}") from exc
        self._torch, self._device, self._dtype, self._module = torch, device, dtype, module

    def predict(self, features: np.ndarray) -> np.ndarray:
        if self._module is None:
            raise PredictError(f"{self.label}: predict() called before load()")
        check_features(self.label, features, len(self.input_spec))
        torch = self._torch
        batch = np.ascontiguousarray(features, dtype=np.float32)
        try:
            with torch.inference_mode():
                x = torch.from_numpy(batch).to(device=self._device, dtype=self._dtype, non_blocking=True)
                out = self._module(x)
                scores = out.reshape(-1).float().cpu().numpy()
        except Exception as exc:
            raise PredictError(f"{self.label}: torch failed on a batch of {len(batch)}: {exc}") from exc
        return check_scores(self.label, scores, len(batch))

    def close(self) -> None:
        self._module = None
