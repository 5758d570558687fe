"""Tiny hand-built ONNX models for tests (no torch needed): ``sigmoid(x @ w)``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

OutputShape = Literal["batch", "batch_1", "scalar"]


def write_linear_onnx(path: Path, weights: np.ndarray, *, output: OutputShape = "batch",
                      input_name: str = "features") -> Path:
    """Write an opset-17 graph ``score = sigmoid(features @ weights)``.

    ``output`` picks the score shape: ``[batch]``, ``[batch, 1]``, or a wrong ``scalar``
    (the sum over the batch) for testing output-length checks.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.asarray(weights, dtype=np.float32).reshape(-1, 1)
    nodes = [helper.make_node("MatMul", [input_name, "w"], ["logit"]),
             helper.make_node("Sigmoid", ["logit"], ["prob"])]
    inits = [numpy_helper.from_array(w, "w")]
    if output == "batch":
        inits.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat"))
        nodes.append(helper.make_node("Reshape", ["prob", "flat"], ["score"]))
        out_shape: list[str | int] = ["batch"]
    elif output == "batch_1":
        nodes.append(helper.make_node("Identity", ["prob"], ["score"]))
        out_shape = ["batch", 1]
    else:
        nodes.append(helper.make_node("ReduceSum", ["prob"], ["score"], keepdims=0))
        out_shape = []
    graph = helper.make_graph(
        nodes, "linear",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", w.shape[0]])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, out_shape)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by older onnxruntime builds too
    onnx.checker.check_model(model)
    Path(path).write_bytes(model.SerializeToString())
    return Path(path)


def write_two_head_onnx(path: Path, weights: np.ndarray, *, input_name: str = "features",
                        loss_column: int = 0) -> Path:
    """Write a graph with two outputs: ``score = sigmoid(x @ w)`` (shape ``[batch]``) and
    ``expected_loss = score * x[:, loss_column]`` (shape ``[batch, 1]``)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.asarray(weights, dtype=np.float32).reshape(-1, 1)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat"),
             numpy_helper.from_array(np.array([loss_column], dtype=np.int64), "col")]
    nodes = [helper.make_node("MatMul", [input_name, "w"], ["logit"]),
             helper.make_node("Sigmoid", ["logit"], ["prob"]),
             helper.make_node("Reshape", ["prob", "flat"], ["score"]),
             helper.make_node("Gather", [input_name, "col"], ["exposure"], axis=1),
             helper.make_node("Mul", ["prob", "exposure"], ["expected_loss"])]
    graph = helper.make_graph(
        nodes, "two_heads",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", w.shape[0]])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"]),
         helper.make_tensor_value_info("expected_loss", TensorProto.FLOAT, ["batch", 1])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    Path(path).write_bytes(model.SerializeToString())
    return Path(path)
