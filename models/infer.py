"""What an ONNX file says about itself: its inputs and the output heads it most likely has.

Converted scikit-learn / XGBoost / LightGBM classifiers carry their class labels (in a
ZipMap node or on the classifier node) and a probability output, ``(n, k)`` or a ZipMap
sequence of maps: two classes become a ``score`` head on column 1, more a ``classes`` head.
Regressors (tree / linear / SVM regressor nodes) become a ``value`` head. Anything else
with one output is a ``score`` (the demo MLP, a torch export with a sigmoid).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from schemas.errors import ModelError

_CLASSIFIERS = ("TreeEnsembleClassifier", "LinearClassifier", "SVMClassifier", "ZipMap")
_REGRESSORS = ("TreeEnsembleRegressor", "LinearRegressor", "SVMRegressor", "TreeEnsemble")
_DTYPES = {1: "float32", 11: "float64", 6: "int32", 7: "int64", 8: "string"}


def _labels(graph: Any) -> tuple[str, ...]:
    for node in graph.node:
        if node.op_type not in _CLASSIFIERS:
            continue
        for a in node.attribute:
            if a.name == "classlabels_strings" and a.strings:
                return tuple(x.decode() for x in a.strings)
            if a.name == "classlabels_int64s" and a.ints:
                return tuple(str(x) for x in a.ints)
    return ()


def infer_specs(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(input_spec, output_spec) for ``path``: one feature per graph input column named like the
    input (inputs of width 1 read the field of that name; a wider input reads fields
    ``<input>_0 ..``, to be renamed by the user), and the heads as described above."""
    try:
        import onnx

        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError and friends
        raise ModelError(f"{path}: not a readable ONNX model: {exc}") from exc
    graph = model.graph
    init = {i.name for i in graph.initializer}
    features: list[dict[str, Any]] = []
    inputs = [i for i in graph.input if i.name not in init]
    for i in inputs:
        t = i.type.tensor_type
        dtype = _DTYPES.get(t.elem_type)
        if dtype is None:
            raise ModelError(f"{path}: input {i.name!r} has an element type streamscore cannot feed ({t.elem_type})")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        width = dims[1] if len(dims) == 2 and dims[1] else 1
        names = [i.name] if width == 1 else [f"{i.name}_{j}" for j in range(width)]
        for n in names:
            features.append({"name": n, "dtype": dtype, "input": i.name} if len(inputs) > 1 or n != i.name
                            else {"name": n, "dtype": dtype})
    input_spec: dict[str, Any] = {"input_name": inputs[0].name if inputs else "features", "features": features}
    return input_spec, {"heads": [_head(graph)]}


def _head(graph: Any) -> dict[str, Any]:
    ops = {n.op_type for n in graph.node}
    outputs = list(graph.output)
    labels = _labels(graph)
    probs = None
    for o in outputs:
        t = o.type
        if t.HasField("sequence_type"):
            probs = o.name
            break
        dims = t.tensor_type.shape.dim
        if labels and t.tensor_type.elem_type in (1, 11) and len(dims) == 2:
            probs = o.name
    if labels and probs is not None:
        if len(labels) == 2:
            return {"name": "score", "kind": "score", "output": probs, "index": 1}
        return {"name": "classes", "kind": "classes", "output": probs, "labels": list(labels)}
    if ops & set(_REGRESSORS):
        return {"name": "value", "kind": "value", "output": outputs[0].name}
    return {"name": "score", "kind": "score"}
