"""The Open Inference Protocol (KServe V2) request and response bodies, as plain functions.

An infer request becomes one float32 ``(n, f)`` feature matrix, in one of three forms:

 - one tensor named after the model's input (``features``), shape ``[n, f]``;
 - one tensor per feature name, shape ``[n]`` or ``[n, 1]``, assembled by the model's InputSpec;
 - records: ``parameters.content_type: "avro-json"`` (on the request or its one input), a BYTES
   tensor of shape ``[n]`` whose elements are records (JSON objects, or strings holding one),
   decoded by the pipeline's decoder (its validation rules included) and assembled like the stream.

Anything else raises ``BadRequest`` naming the problem; nothing reaches the model.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import orjson

from schemas.errors import StreamscoreError

RECORD_CONTENT_TYPES = ("avro-json", "json", "records")
DTYPES: dict[str, Any] = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT8": np.int8,
                          "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "UINT8": np.uint8,
                          "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64, "BOOL": np.bool_}


class BadRequest(StreamscoreError):
    """A request the protocol or the model's inputs reject (answered 4xx, never scored)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def loads(body: bytes) -> Any:
    """JSON as the stdlib reads it, parsed by orjson when it can (several times faster)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        # what orjson refuses and the stdlib reads (NaN, integers past 64 bits, lone surrogates),
        # or malformed: the stdlib's error names the problem
        return json.loads(body)


def parse_body(body: bytes) -> dict[str, Any]:
    try:
        req = loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    if not isinstance(req, dict):
        raise BadRequest(f"the request body must be a JSON object, got {type(req).__name__}")
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("'inputs' must be a non-empty list of tensors")
    for i, t in enumerate(inputs):
        if not isinstance(t, dict):
            raise BadRequest(f"inputs[{i}] must be an object with name, shape, datatype, data")
        for k in ("name", "shape", "datatype", "data"):
            if k not in t:
                raise BadRequest(f"inputs[{i}] has no {k!r}")
        if not isinstance(t["name"], str):
            raise BadRequest(f"inputs[{i}].name must be a string")
        shape = t["shape"]
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise BadRequest(f"inputs[{i}] ({t['name']}).shape must be a list of non-negative integers, got {shape!r}")
    for key in ("parameters", "outputs"):
        if key in req and not isinstance(req[key], (dict, list) if key == "outputs" else dict):
            raise BadRequest(f"'{key}' has the wrong type")
    if "id" in req and not isinstance(req["id"], str):
        raise BadRequest("'id' must be a string")
    return req


def content_type(req: dict[str, Any]) -> str | None:
    for params in (req.get("parameters"), req["inputs"][0].get("parameters")):
        if isinstance(params, dict) and isinstance(params.get("content_type"), str):
            return str(params["content_type"])
    return None


def is_record_form(req: dict[str, Any]) -> bool:
    ct = content_type(req)
    if ct is None:
        return False
    if ct not in RECORD_CONTENT_TYPES:
        raise BadRequest(f"unsupported parameters.content_type {ct!r}; valid: {list(RECORD_CONTENT_TYPES)} "
                         f"(or none, for tensors)")
    return True


def tensor(t: dict[str, Any], i: int) -> np.ndarray:
    """One input tensor as a numeric array of its declared shape."""
    name, shape, dtype = t["name"], t["shape"], t["datatype"]
    if dtype not in DTYPES or dtype == "BOOL":
        raise BadRequest(f"inputs[{i}] ({name}): datatype {dtype!r} is not numeric; "
                         f"valid: {[d for d in DTYPES if d != 'BOOL']}")
    data = t["data"]
    try:
        arr = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"inputs[{i}] ({name}): data is not a (nested) list of numbers: {exc}") from None
    want = math.prod(shape)
    if arr.size != want:
        raise BadRequest(f"inputs[{i}] ({name}): shape {shape} needs {want} elements, data has {arr.size}")
    if dtype.startswith(("INT", "UINT")) and not np.all(np.isfinite(arr) & (arr == np.round(arr))):
        raise BadRequest(f"inputs[{i}] ({name}): datatype {dtype} but data has non-integer values")
    return arr.reshape(shape)


def tensor_features(req: dict[str, Any], input_name: str, names: tuple[str, ...], assembler: Any) -> np.ndarray:
    """The feature matrix from tensor inputs (one ``[n, f]`` tensor, or one per feature)."""
    inputs = req["inputs"]
    f = len(names)
    if len(inputs) == 1 and inputs[0]["name"] == input_name:
        x = tensor(inputs[0], 0)
        if x.ndim != 2 or x.shape[1] != f:
            raise BadRequest(f"input {input_name!r}: shape must be [n, {f}], got {list(x.shape)}")
        if x.shape[0] == 0:
            raise BadRequest(f"input {input_name!r}: no rows")
        with np.errstate(over="ignore"):          # too large for float32 -> inf -> rejected by finite()
            x32 = np.ascontiguousarray(x, dtype=np.float32)
        return finite(x32, names)
    given = {t["name"]: (i, t) for i, t in enumerate(inputs)}
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise BadRequest(f"unknown input(s) {unknown}; the model takes {input_name!r} of shape [n, {f}] "
                         f"or one tensor per feature: {list(names)}")
    missing = [n for n in names if n not in given]
    if missing:
        raise BadRequest(f"missing input(s) {missing}")
    cols: dict[str, np.ndarray] = {}
    rows = None
    for n in names:
        i, t = given[n]
        x = tensor(t, i)
        if x.ndim == 2 and x.shape[1] == 1:
            x = x[:, 0]
        if x.ndim != 1:
            raise BadRequest(f"input {n!r}: shape must be [n] or [n, 1], got {list(x.shape)}")
        if rows is not None and len(x) != rows:
            raise BadRequest(f"input {n!r} has {len(x)} rows, {names[0]!r} has {rows}")
        rows = len(x)
        cols[n] = x
    if not rows:
        raise BadRequest("inputs have no rows")
    out: np.ndarray = assembler.assemble(cols)
    return finite(out, names)


def finite(x: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    """``x`` unless a value is NaN, infinite, or too large for float32 (named by feature)."""
    ok = np.isfinite(x)
    if not ok.all():
        r, c = (int(v[0]) for v in np.nonzero(~ok))
        raise BadRequest(f"row {r}, feature {names[c]!r}: value is not finite in float32")
    return x


def record_values(req: dict[str, Any]) -> list[bytes]:
    """The records of the record form, each as the JSON bytes a JSON input topic would carry."""
    inputs = req["inputs"]
    if len(inputs) != 1:
        raise BadRequest(f"the record form takes one BYTES input of records, got {len(inputs)} inputs")
    t = inputs[0]
    if t["datatype"] != "BYTES":
        raise BadRequest(f"inputs[0] ({t['name']}): the record form needs datatype BYTES, got {t['datatype']!r}")
    data = t["data"]
    if not isinstance(data, list) or not data:
        raise BadRequest(f"inputs[0] ({t['name']}): data must be a non-empty list of records")
    if t["shape"] != [len(data)]:
        raise BadRequest(f"inputs[0] ({t['name']}): shape {t['shape']} does not match {len(data)} records")
    out = []
    for j, r in enumerate(data):
        if isinstance(r, dict):
            out.append(json.dumps(r).encode())
        elif isinstance(r, str):
            out.append(r.encode())
        else:
            raise BadRequest(f"inputs[0] ({t['name']}).data[{j}]: a record must be a JSON object or a string holding one")
    return out


def infer_response(*, model: str, version: str, request_id: str | None, scores: np.ndarray,
                   decisions: np.ndarray) -> bytes:
    """The V2 inference response body (scores written as the float64 value of each float32)."""
    n = len(scores)
    out: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": [
        {"name": "score", "datatype": "FP32", "shape": [n], "data": np.ascontiguousarray(scores, dtype=np.float64)},
        {"name": "decision", "datatype": "BOOL", "shape": [n], "data": np.ascontiguousarray(decisions, dtype=np.bool_)},
    ]}
    if request_id is not None:
        out["id"] = request_id
    return orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY)


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


def model_metadata(*, name: str, versions: list[str], platform: str, input_name: str,
                   names: tuple[str, ...]) -> dict[str, Any]:
    return {"name": name, "versions": versions, "platform": platform,
            "inputs": [{"name": input_name, "datatype": "FP32", "shape": [-1, len(names)],
                        "parameters": {"features": list(names)}}],
            "outputs": [{"name": "score", "datatype": "FP32", "shape": [-1]},
                        {"name": "decision", "datatype": "BOOL", "shape": [-1]}]}
