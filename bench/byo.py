"""The bring-your-own-data throughput contender: the bench's events in a producer team's own
nested schema, registered in a real schema registry, scored by the demo model registered
for the nested field paths.

The nested schema holds the same fields as ``transaction`` (similar size) grouped into
records. A non-nullable nested record is encoded as its fields in order, so the events are
written with a flat encoder in leaf order and framed with the nested schema's registry id:
the bytes are exactly what a stock AvroSerializer would write.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

FEATURES = [f"f{i:02d}" for i in range(1, 16)]
BYO_SCHEMA: dict[str, Any] = {"type": "record", "name": "CardPayment", "namespace": "bench.user", "fields": [
    {"name": "event_id", "type": "string"},
    {"name": "event_time", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "account", "type": {"type": "record", "name": "Account", "fields": [
        {"name": "id", "type": "string"}, {"name": "country", "type": "string"}]}},
    {"name": "payment", "type": {"type": "record", "name": "Payment", "fields": [
        {"name": "amount", "type": "double"}, {"name": "currency", "type": "string"},
        {"name": "merchant_category", "type": "string"},
        {"name": "channel", "type": {"type": "enum", "name": "Channel", "symbols": ["POS", "ECOM", "ATM", "MOTO"]}}]}},
    {"name": "signals", "type": {"type": "record", "name": "Signals",
                                 "fields": [{"name": f, "type": "double"} for f in FEATURES]}},
]}
# demo column -> nested path, in the nested schema's leaf order
PATHS = {"event_id": "event_id", "event_time": "event_time", "account_id": "account.id", "country": "account.country",
         "amount": "payment.amount", "currency": "payment.currency", "merchant_category": "payment.merchant_category",
         "channel": "payment.channel", **{f: f"signals.{f}" for f in FEATURES}}
MODEL = "fraud-mlp-byo"


def _flat_schema() -> dict[str, Any]:
    from schemas.columnar import leaf_types

    leaves = leaf_types(BYO_SCHEMA)
    return {"type": "record", "name": "Flat", "fields": [
        {"name": col, "type": leaves[path]} for col, path in PATHS.items()]}


def produce(bootstrap: str, registry_url: str, topic: str, count: int, *, seed: int = 42, chunk: int = 50_000) -> int:
    """Register the nested schema under ``<topic>-value`` and write ``count`` events; returns its id."""
    from confluent_kafka import Producer
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

    from consumers.kafka_client import PRODUCER_DEFAULTS, merged
    from models.demo_data import generate
    from schemas.columnar import BatchEncoder

    schema_id = SchemaRegistryClient({"url": registry_url}).register_schema(
        f"{topic}-value", Schema(json.dumps(BYO_SCHEMA), "AVRO"))
    enc = BatchEncoder(_flat_schema(), schema_id)
    p = Producer(merged(PRODUCER_DEFAULTS, {"bootstrap.servers": bootstrap}, {}))   # as streamscore.produce
    for lo in range(0, count, chunk):
        n = min(chunk, count - lo)
        cols = generate(n, seed=seed, start=lo)
        values = enc.encode({c: cols[c] for c in PATHS}, n)
        for v, k in zip(values, cols["account_id"].tolist()):
            while True:
                try:
                    p.produce(topic, v, k.encode())
                    break
                except BufferError:
                    p.poll(0.05)
        p.poll(0)
    if p.flush(120):
        raise RuntimeError("byo produce: undelivered events")
    return schema_id


def model_registry(work: Path) -> Path:
    """A copy of the demo registry with the demo model registered for the nested paths."""
    from models import DEMO_REGISTRY
    from models.base import InputSpec
    from models.registry import ModelRegistry

    root = work / "byo-registry"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(DEMO_REGISTRY, root)
    reg = ModelRegistry(root)
    demo = reg.get("fraud-mlp")
    profile = json.loads(json.dumps(demo.reference_profile))
    profile["features"] = {PATHS[k]: v for k, v in profile["features"].items()}
    profile["categoricals"] = {PATHS[k]: v for k, v in profile["categoricals"].items()}
    spec = InputSpec.of([PATHS[n] for n in demo.input_spec.names], input_name=demo.input_spec.input_name)
    reg.register(MODEL, demo.artifact_path, format="onnx", input_spec=spec, output_spec=demo.output_spec,
                 reference_profile=profile, metrics=demo.metrics, stage="production",
                 decision_threshold=demo.decision_threshold)
    return root


def scorer_config(path: Path, bootstrap: str, registry_url: str, models: Path, t_in: str, t_out: str, group: str) -> Path:
    path.write_text(yaml.safe_dump({
        "kafka": {"bootstrap_servers": bootstrap}, "group_id": group, "registry": str(models),
        "schema_registry": {"url": registry_url},
        "pipelines": [{"name": "fraud", "input": {"topic": t_in, "schema": f"registry:{t_in}-value"},
                       "model": {"name": MODEL}, "output": {"topic": t_out}}],
    }))
    return path
