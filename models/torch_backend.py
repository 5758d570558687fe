"""PyTorch backend for TorchScript (``torch.jit.load``) and ``torch.export`` archives.

The one home of torch loading: ``TorchModel`` and the device workers (``models.device``)
both load through ``load_module`` and pick their device with ``resolve_device``.
torch is imported inside functions only, so ``models`` imports without torch installed.
Neither format is unpickled: TorchScript and torch.export archives are loaded by their
own deserializers, after the registry has checked the artifact's sha256.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np

from models.base import Device, InputSpec, check_features, check_scores
from schemas.errors import ConfigError, ModelLoadError, PredictError

TorchFormat = Literal["torchscript", "torch_export"]
TORCH_FORMATS: tuple[str, ...] = ("torchscript", "torch_export")
# The precision a torch module computes in (floating inputs are cast to it on the device).
TorchDtype = Literal["float32", "bfloat16", "float16"]
TORCH_DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")


def check_torch_dtype(dtype: str) -> None:
    if dtype not in TORCH_DTYPES:
        raise ConfigError(f"unknown torch dtype {dtype!r}; valid: {list(TORCH_DTYPES)}")


def resolve_device(torch: Any, device: str) -> Any:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when available) as a ``torch.device``;
    a bare ``cuda`` gets the current device's index."""
    if device not in ("cpu", "cuda", "auto") and not device.startswith("cuda:"):
        raise ConfigError(f"unknown device {device!r}; valid: ['cpu', 'cuda', 'cuda:N', 'auto']")
    cuda = bool(torch.cuda.is_available())
    if device.startswith("cuda") and not cuda:
        raise ModelLoadError(f"device {device!r} requested but torch sees no CUDA device")
    if device == "auto":
        device = "cuda" if cuda else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def load_module(path: Path, format: str, *, map_location: Any = "cpu", label: str) -> Any:
    """The module in a TorchScript or torch.export archive (the caller has verified its sha256)."""
    try:
        import torch
    except ImportError as exc:
        raise ModelLoadError(f"{label}: torch is not installed (pip install streamscore[torch])") from exc
    if format not in TORCH_FORMATS:
        raise ModelLoadError(f"{label}: format {format!r} is not a torch format; valid: {list(TORCH_FORMATS)}")
    try:
        if format == "torchscript":
            with warnings.catch_warnings():  # torch >= 2.10 marks TorchScript deprecated
                warnings.simplefilter("ignore", FutureWarning)
                return torch.jit.load(str(path), map_location=map_location)
        return torch.export.load(str(path)).module()
    except Exception as exc:  # torch raises RuntimeError, ValueError, zipfile errors, ...
        raise ModelLoadError(f"{label}: cannot load {path}: {exc}") from exc


class TorchModel:
    """A torch module taking ``(n, f)`` features and returning ``n`` scores (any shape with n elements)."""

    def __init__(self, path: Path, *, name: str, version: str, input_spec: InputSpec,
                 format: TorchFormat = "torchscript", device: Device = "cpu",
                 dtype: TorchDtype = "float32") -> None:
        if format not in TORCH_FORMATS:
            raise ConfigError(f"unknown torch format {format!r}; valid: {list(TORCH_FORMATS)}")
        check_torch_dtype(dtype)
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
        try:
            device = resolve_device(torch, self.device)
        except ModelLoadError as exc:
            raise ModelLoadError(f"{self.label}: {exc}") from exc
        dtype = getattr(torch, self.dtype)
        module = load_module(self.path, self.format, map_location=device, label=self.label)
        try:
            module = module.to(device=device, dtype=dtype)
            if hasattr(module, "eval") and self.format == "torchscript":
                module.eval()
        except Exception as exc:  # noqa: BLE001 - torch raises many types
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
