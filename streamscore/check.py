"""``streamscore models check``: score a sample file the way a pipeline would, and show the result.

The sample is JSON lines (one input record per line) or CSV (a header row of field names;
values typed by the input schema). Every row becomes what the stream would emit: the
prediction record (as the downstream reader decodes it with the derived schema), or the
dead letter's reason and message.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
import numpy as np

from schemas.errors import ConfigError

_NUMERIC = {"int": int, "long": int, "float": float, "double": float}


def _base_type(t: Any) -> Any:
    if isinstance(t, list):
        rest = [x for x in t if x != "null"]
        return _base_type(rest[0]) if len(rest) == 1 else t
    if isinstance(t, dict) and t.get("type") not in ("record", "enum", "array", "map", "fixed"):
        return t.get("type")
    return t


def _csv_records(text: str, reader: dict[str, Any]) -> list[dict[str, Any]]:
    types = {f["name"]: _base_type(f["type"]) for f in reader["fields"]}
    out = []
    for row in csv.DictReader(io.StringIO(text)):
        rec: dict[str, Any] = {}
        for k, v in row.items():
            t = types.get(k)
            if v is None or v == "":
                rec[k] = None
            elif isinstance(t, str) and t in _NUMERIC:
                rec[k] = _NUMERIC[t](float(v)) if t in ("int", "long") else float(v)
            elif t == "boolean":
                rec[k] = v.strip().lower() in ("1", "true", "yes")
            else:
                rec[k] = v
        out.append(rec)
    return out


def sample_values(path: Path, reader: dict[str, Any]) -> list[bytes]:
    """The sample's records as JSON values, the way a JSON input topic carries them."""
    if not path.is_file():
        raise ConfigError(f"sample file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".csv":
        return [json.dumps(r).encode() for r in _csv_records(text, reader)]
    return [line.encode() for line in text.splitlines() if line.strip()]


def check_sample(registry: Any, name: str, version: str | None, sample: Path, *, schema: str = "transaction",
                 hook_path: str | None = None, threshold: float | None = None) -> Iterator[dict[str, Any]]:
    """One dict per sample row: the prediction record, or ``{"dead_letter": reason, "error": ...}``."""
    from consumers.model_stage import score_isolating
    from models.runner import ModelRunner, load_hook
    from schemas.columnar import BatchDecoder, BatchEncoder, StrColumn
    from schemas.prediction import prediction_schema
    from schemas.registry import SchemaRegistry

    schemas = SchemaRegistry.default()
    try:
        reader = schemas.schema(schema)
    except Exception as exc:
        raise ConfigError(f"--schema: {exc}") from exc
    values = sample_values(sample, reader)
    entry = registry.get(name, version, stage=None if version else "production")
    model = registry.load(entry)
    thr = entry.decision_threshold if threshold is None else threshold
    pre, post = entry.hooks.get("pre"), entry.hooks.get("post")
    runner = ModelRunner(model, input_spec=entry.input_spec, output_spec=entry.outputs, threshold=thr,
                         pre=load_hook(pre, hook_path) if pre else None, post=load_hook(post, hook_path) if post else None,
                         pre_name=pre or "", post_name=post or "", labels=tuple(getattr(model, "labels", ())))
    decoded = BatchDecoder(reader, schemas, fmt="json").decode(values)
    result: dict[int, dict[str, Any]] = {i: {"dead_letter": err.reason, "error": str(err)} for i, err in decoded.errors}
    feats = runner.features(decoded)
    rows = np.array([r for r in range(len(decoded)) if r not in feats.bad], np.int64)
    for r, msg in feats.bad.items():
        result[int(decoded.ok_index[r])] = {"dead_letter": "features", "error": msg}
    if len(rows):
        _, fields, bad = score_isolating(runner, feats, rows, decoded)
        failed = {int(rows[j]) for j, _, _ in bad}
        for j, reason, msg in bad:
            result[int(decoded.ok_index[rows[j]])] = {"dead_letter": reason, "error": msg}
        keep = np.array([k for k, r in enumerate(rows.tolist()) if r not in failed], np.int64)
        out_schema = prediction_schema(entry.outputs)
        parsed = fastavro.parse_schema(out_schema)
        encoder = BatchEncoder(out_schema, 0)
        cols = decoded.columns
        n = len(keep)
        id_col = cols.get("event_id")
        ids: list[Any] = id_col.take(rows[keep]).to_list() if isinstance(id_col, StrColumn) else [""] * n
        times = np.asarray(cols["event_time"])[rows[keep]] if "event_time" in cols else np.zeros(n, np.int64)
        record_cols = {"event_id": ids, "key": [""] * n, "model": [entry.name] * n, "version": [entry.version] * n,
                       "variant": ["primary"] * n, "event_time": times, "scored_at": times,
                       **{k: v[keep] for k, v in fields.items()}}
        for j, value in enumerate(encoder.encode(record_cols, n)):
            rec = fastavro.schemaless_reader(io.BytesIO(value[5:]), parsed)
            assert isinstance(rec, dict)
            rec.pop("key", None)
            rec.pop("scored_at", None)
            rec["event_time"] = str(rec["event_time"])
            result[int(decoded.ok_index[rows[keep[j]]])] = rec
    model.close()
    for i in range(len(values)):
        yield result[i]
