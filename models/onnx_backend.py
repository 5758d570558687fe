"""onnxruntime backend: one InferenceSession per model, CPU or CUDA."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from models.base import Device, InputSpec, check_features, check_scores
from schemas.errors import ModelLoadError, PredictError


class OnnxModel:
    """An ONNX model: ``predict`` feeds one float input ``(n, f)`` and flattens the first output
    to ``(n,)`` scores; ``run`` feeds every named input and returns every output.

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
        self.output_names: list[str] = []
        self.labels: tuple[str, ...] = ()      # class labels of a ZipMap output, if the graph had one

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
            if any(o.type.startswith("seq(map") for o in session.get_outputs()):
                # ZipMap (a list of dicts per batch) becomes its input tensor: same numbers, no dict per row
                graph, self.labels = without_zipmap(self.path)
                session = ort.InferenceSession(graph, sess_options=opts, providers=providers)
        except ModelLoadError:
            raise
        except Exception as exc:  # onnxruntime raises its own, unexported exception types
            raise ModelLoadError(f"{self.label}: cannot load {self.path}: {exc}") from exc
        inputs, outputs = session.get_inputs(), session.get_outputs()
        want = self.input_spec.inputs
        names = [i.name for i in inputs]
        if sorted(names) != sorted(want):
            raise ModelLoadError(f"{self.label}: the input spec feeds inputs {list(want)}, graph has {names}")
        for i in inputs:
            width = want[i.name][1]
            if len(i.shape) != 2 or (isinstance(i.shape[1], int) and i.shape[1] != width):
                raise ModelLoadError(f"{self.label}: graph input {i.name!r} shape {i.shape} does not match "
                                     f"{width} features (columns) the input spec builds for it")
        self._input_name = names[0]
        self._output_name = outputs[0].name
        self.output_names = [o.name for o in outputs]
        self._session = session

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every graph output for the named inputs (each ``(n, width)``), in graph order."""
        if self._session is None:
            raise PredictError(f"{self.label}: run() called before load()")
        feed = {k: (v if v.dtype == object else np.ascontiguousarray(v)) for k, v in inputs.items()}
        try:
            outs = self._session.run(self.output_names, feed)
        except Exception as exc:
            n = len(next(iter(feed.values()))) if feed else 0
            raise PredictError(f"{self.label}: onnxruntime failed on a batch of {n}: {exc}") from exc
        return dict(zip(self.output_names, outs))

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


def without_zipmap(path: Path) -> tuple[bytes, tuple[str, ...]]:
    """The graph with each ZipMap node turned into an Identity of its ``(n, k)`` probability
    tensor (the output keeps its name), and the class labels the ZipMap carried."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    labels: tuple[str, ...] = ()
    zipped: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type != "ZipMap":
            continue
        for a in node.attribute:
            if a.name == "classlabels_strings":
                labels = tuple(x.decode() for x in a.strings)
            elif a.name == "classlabels_int64s":
                labels = tuple(str(x) for x in a.ints)
        node.op_type, node.domain = "Identity", ""
        del node.attribute[:]
        zipped[node.output[0]] = node.input[0]
    for out in model.graph.output:
        if out.name in zipped:
            k = len(labels) or None
            out.CopyFrom(helper.make_tensor_value_info(out.name, TensorProto.FLOAT, [None, k]))
    return model.SerializeToString(), labels
