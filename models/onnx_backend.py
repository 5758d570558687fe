"""onnxruntime backend: one InferenceSession per model, CPU or CUDA."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from models.base import Device, InputSpec, check_features, check_scores
from schemas.errors import ModelLoadError, PredictError


class OnnxModel:
    """An ONNX model with one float input ``(n, f)`` and one score output (flattened to ``(n,)``).

    ``device="cuda"`` requires the CUDA provider; ``"auto"`` uses it when available.
    Sessions run sequentially with ``intra_op_threads`` threads (default 1: the pipeline
    scales by processes, not by threads inside one call).
    """

    def __init__(self, path: Path, *, name: str, version: str, input_spec: InputSpec,
                 device: Device = "cpu", intra_op_threads: int = 1) -> None:
        self.path = Path(path)
        self.name = name
        self.version = version
        self.input_spec = input_spec
        self.device = device
        self.intra_op_threads = intra_op_threads
        self._session: Any = None
        self._input_name = input_spec.input_name
        self._output_name = ""

    @property
    def label(self) -> str:
        return f"{self.name}:{self.version} (onnx)"

    @property
    def providers(self) -> list[str]:
        return list(self._session.get_providers()) if self._session is not None else []

    def _choose_providers(self, available: list[str]) -> list[str]:
        if self.device == "cpu":
            return ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" in available:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        if self.device == "cuda":
            raise ModelLoadError(f"{self.label}: device 'cuda' requested but onnxruntime has only {available}")
        return ["CPUExecutionProvider"]

    def load(self) -> None:
        try:
            import onnxruntime as ort  # type: ignore[import-untyped]
        except ImportError as exc:
            raise ModelLoadError(f"{self.label}: onnxruntime is not installed") from exc
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.intra_op_threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = self._choose_providers(ort.get_available_providers())
        try:
            session = ort.InferenceSession(str(self.path), sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own, unexported exception types
            raise ModelLoadError(f"{self.label}: cannot load {self.path}: {exc}") from exc
        inputs, outputs = session.get_inputs(), session.get_outputs()
        names = [i.name for i in inputs]
        if len(inputs) != 1 or (self._input_name not in names):
            raise ModelLoadError(f"{self.label}: expected one input named {self._input_name!r}, graph has {names}")
        shape = inputs[0].shape
        if len(shape) != 2 or shape[1] != len(self.input_spec):
            raise ModelLoadError(f"{self.label}: graph input shape {shape} does not match "
                                 f"{len(self.input_spec)} features in the input spec")
        self._output_name = outputs[0].name
        self._session = session

    def predict(self, features: np.ndarray) -> np.ndarray:
        if self._session is None:
            raise PredictError(f"{self.label}: predict() called before load()")
        check_features(self.label, features, len(self.input_spec))
        batch = np.ascontiguousarray(features, dtype=np.float32)
        try:
            (out,) = self._session.run([self._output_name], {self._input_name: batch})
        except Exception as exc:
            raise PredictError(f"{self.label}: onnxruntime failed on a batch of {len(batch)}: {exc}") from exc
        return check_scores(self.label, out, len(batch))

    def close(self) -> None:
        self._session = None
