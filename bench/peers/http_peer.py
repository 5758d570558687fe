"""The HTTP peer: a plain per-request FastAPI endpoint with the same ONNX session (no batching).

Written the way a FastAPI user would: a pydantic model for the V2 request body, one
``session.run`` per request, the V2 response shape. Run: ``python -m bench.peers.http_peer --port N``.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from bench.peers.common import model_session


class Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class InferRequest(BaseModel):
    id: str | None = None
    inputs: list[Tensor]


def make_app() -> FastAPI:
    sess, names = model_session()
    input_name = sess.get_inputs()[0].name
    app = FastAPI()

    @app.get("/v2/health/ready")
    def ready() -> dict[str, bool]:
        return {"ready": True}

    @app.post("/v2/models/{name}/infer")
    def infer(name: str, req: InferRequest) -> dict[str, Any]:
        t = req.inputs[0]
        try:
            x = np.asarray(t.data, dtype=np.float32).reshape(t.shape)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        if x.ndim != 2 or x.shape[1] != len(names):
            raise HTTPException(400, f"shape must be [n, {len(names)}]")
        scores = np.asarray(sess.run(None, {input_name: x})[0]).reshape(-1)
        n = len(scores)
        return {"model_name": name, "model_version": "1", "id": req.id, "outputs": [
            {"name": "score", "datatype": "FP32", "shape": [n], "data": scores.astype(float).tolist()},
            {"name": "decision", "datatype": "BOOL", "shape": [n], "data": (scores >= 0.5).tolist()}]}

    return app


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    a = ap.parse_args()
    uvicorn.run(make_app(), host="127.0.0.1", port=a.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
