"""What every peer shares: the model, the schemas, and fastavro per-record serde.

Peers are written the way a user of each tool would write them; they share only the
model file and the record layout, never streamscore's own decoder or scorer.
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import time
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
REGISTRY = ROOT / "models" / "demo_registry" / "fraud-mlp"


def _latest_model_dir() -> Path:
    versions = sorted((p for p in REGISTRY.iterdir() if p.is_dir()), key=lambda p: int(p.name) if p.name.isdigit() else 0)
    return versions[-1]


def model_session() -> tuple[ort.InferenceSession, list[str]]:
    d = _latest_model_dir()
    meta = json.loads((d / "model.json").read_text())
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(d / meta["artifact"]), opts, providers=["CPUExecutionProvider"])
    names = [f["name"] for f in meta["input_spec"]["features"]]
    return sess, names


TX_SCHEMA = fastavro.parse_schema(json.loads((SCHEMAS / "transaction.avsc").read_text()))
PRED_SCHEMA = fastavro.parse_schema(json.loads((SCHEMAS / "prediction.avsc").read_text()))
PRED_ID = json.loads((SCHEMAS / "ids.json").read_text())["prediction"]
_HEADER = struct.pack(">bI", 0, PRED_ID)


def decode_tx(value: bytes) -> dict[str, Any]:
    return fastavro.schemaless_reader(io.BytesIO(value[5:]), TX_SCHEMA)  # type: ignore[return-value]


def encode_prediction(rec: dict[str, Any], score: float, key: str) -> bytes:
    buf = io.BytesIO()
    buf.write(_HEADER)
    fastavro.schemaless_writer(buf, PRED_SCHEMA, {
        "event_id": rec["event_id"], "key": key, "model": "fraud-mlp", "version": "1", "variant": "primary",
        "score": float(score), "decision": bool(score >= 0.5), "event_time": rec["event_time"],
        "scored_at": int(time.time() * 1000),
    })
    return buf.getvalue()


def args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--count", type=int, required=True, help="stop after producing this many outputs")
    ap.add_argument("--seconds", type=float, default=600.0, help="hard stop")
    ap.add_argument("--wait-ms", type=float, default=100.0,
                    help="longest a consume call waits for its batch to fill (passthrough only)")
    return ap.parse_args()


def features(recs: list[dict[str, Any]], names: list[str]) -> np.ndarray:
    return np.array([[r[n] for n in names] for r in recs], dtype=np.float32)
