"""Bring your own data: a producer team's own nested schema through a real registry (Apicurio),
written with confluent-kafka's stock AvroSerializer, scored, and read back with the stock
AvroDeserializer."""

from __future__ import annotations

import collections
import datetime
import decimal
import json
import struct
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from onnx import TensorProto, helper

from models.base import InputSpec
from models.registry import ModelRegistry
from tests.integration.helpers import ScorerProcess, read_all, wait_for, write_config

pytestmark = pytest.mark.integration

ORDER_V1: dict[str, Any] = {"type": "record", "name": "Order", "namespace": "shop.events", "fields": [
    {"name": "order_id", "type": "string"},
    {"name": "placed_at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    {"name": "customer", "type": {"type": "record", "name": "Customer", "fields": [
        {"name": "id", "type": "string"},
        {"name": "tier", "type": {"type": "enum", "name": "Tier", "symbols": ["BRONZE", "SILVER", "GOLD"]}}]}},
    {"name": "payment", "type": {"type": "record", "name": "Payment", "fields": [
        {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2}},
        {"name": "items", "type": "int"},
        {"name": "coupon", "type": ["null", "string"], "default": None}]}},
]}
ORDER_V2 = json.loads(json.dumps(ORDER_V1))
ORDER_V2["fields"].append({"name": "channel", "type": ["null", "string"], "default": None})
FEATURES = ["payment.amount", "payment.items", "customer.tier"]
WEIGHTS = np.array([[0.004], [-0.3], [0.8]], np.float32)


def _model(tmp_path: Path) -> ModelRegistry:
    """A logistic model over the order's fields, built as an ONNX graph, in a fresh file registry."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "w"], ["z"]), helper.make_node("Add", ["z", "b"], ["zb"]),
         helper.make_node("Sigmoid", ["zb"], ["score"])],
        "orders", [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, len(FEATURES)])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor("w", TensorProto.FLOAT, WEIGHTS.shape, WEIGHTS.ravel().tolist()),
         helper.make_tensor("b", TensorProto.FLOAT, [1], [-1.0])])
    path = tmp_path / "orders.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    reg = ModelRegistry(tmp_path / "models")
    reg.register("orders", path, format="onnx", input_spec=InputSpec.of(FEATURES),
                 output_spec={"name": "score", "dtype": "float32", "shape": ["batch"]}, stage="production")
    return reg


def _orders(lo: int, hi: int, *, v2: bool = False) -> list[dict[str, Any]]:
    base = datetime.datetime(2026, 12, 1, tzinfo=datetime.timezone.utc)
    out = []
    for i in range(lo, hi):
        rec: dict[str, Any] = {
            "order_id": f"o-{i}", "placed_at": base + datetime.timedelta(microseconds=1000 * i + 7),
            "customer": {"id": f"c-{i % 97}", "tier": ["BRONZE", "SILVER", "GOLD"][i % 3]},
            "payment": {"amount": decimal.Decimal(i % 50000) / 100, "items": 1 + i % 7,
                        "coupon": None if i % 4 else f"SAVE{i % 10}"}}
        if v2:
            rec["channel"] = "web" if i % 2 else None
        out.append(rec)
    return out


def _expected(recs: list[dict[str, Any]], tmp_path: Path) -> dict[str, float]:
    feats = np.array([[float(r["payment"]["amount"]), r["payment"]["items"],
                       ["BRONZE", "SILVER", "GOLD"].index(r["customer"]["tier"])] for r in recs], np.float32)
    sess = ort.InferenceSession(str(tmp_path / "orders.onnx"), providers=["CPUExecutionProvider"])
    scores = np.asarray(sess.run(None, {"features": feats})[0]).reshape(-1)
    return dict(zip([r["order_id"] for r in recs], scores.tolist()))


class _Writer:
    """The producer team: stock AvroSerializer + SchemaRegistryClient (auto-registers its schema)."""

    def __init__(self, bootstrap: str, url: str, topic: str, schema: dict[str, Any]) -> None:
        self.topic = topic
        self.ser = AvroSerializer(SchemaRegistryClient({"url": url}), json.dumps(schema))
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})

    def send(self, recs: list[dict[str, Any]]) -> None:
        ctx = SerializationContext(self.topic, MessageField.VALUE)
        for r in recs:
            self.producer.produce(self.topic, self.ser(r, ctx), key=r["customer"]["id"].encode())
        assert self.producer.flush(30) == 0


def _read_predictions(msgs: list[Any], url: str, topic: str) -> list[dict[str, Any]]:
    de = AvroDeserializer(SchemaRegistryClient({"url": url}))
    ctx = SerializationContext(topic, MessageField.VALUE)
    return [de(m.value(), ctx) for m in msgs]


def _pipeline(t_in: str, t_out: str, **input_kw: Any) -> dict[str, Any]:
    return {"name": "orders", "input": {"topic": t_in, "schema": f"registry:{t_in}-value:1", **input_kw},
            "model": {"name": "orders", "hot_swap": False},
            "output": {"topic": t_out, "carry": ["customer.id", "customer.tier", "payment.amount", "payment.coupon"]},
            "telemetry": {"enabled": False}, "batching": {"max_wait_ms": 20}}


def test_stock_serializer_nested_schema_scored_and_read_with_stock_deserializer(
        tmp_path: Path, bootstrap: str, schema_registry: Any, names: Callable[[str], str],
        topics: Callable[..., None]) -> None:
    url = schema_registry.url
    t_in, t_out = names("orders"), names("scored")
    dlq = f"{t_in}.dlq"
    topics({t_in: 2, t_out: 2, dlq: 1})
    models = _model(tmp_path)
    v1, v2 = _orders(0, 1500), _orders(1500, 3000, v2=True)
    _Writer(bootstrap, url, t_in, ORDER_V1).send(v1[:500])          # registers v1 before the scorer starts
    cfg = write_config(tmp_path / "p.yaml", bootstrap, names("g"),
                       [_pipeline(t_in, t_out, id_field="order_id", time_field="placed_at")],
                       registry=str(models.root), schema_registry={"url": url})
    scorer = ScorerProcess(cfg, tmp_path / "scorer.log")
    try:
        _Writer(bootstrap, url, t_in, ORDER_V1).send(v1[500:])
        read_all(bootstrap, t_out, expect=1000, timeout=120, alive=scorer)
        _Writer(bootstrap, url, t_in, ORDER_V2).send(v2)             # v2 registered mid-stream (BACKWARD)
        unknown = b"\x00" + struct.pack(">I", 987654) + b"\x02x"
        p = Producer({"bootstrap.servers": bootstrap})
        p.produce(t_in, unknown)
        assert p.flush(10) == 0
        msgs = read_all(bootstrap, t_out, expect=3000, timeout=120, idle=1.0, alive=scorer)
        dead = read_all(bootstrap, dlq, expect=1, timeout=60)
        assert scorer.terminate() == 0
    finally:
        scorer.close()
    preds = _read_predictions(msgs, url, t_out)
    counts = collections.Counter(p["event_id"] for p in preds)
    assert len(preds) == 3000 and set(counts) == {r["order_id"] for r in v1 + v2}, "each event scored exactly once"
    want = _expected(v1 + v2, tmp_path)
    got = {p["event_id"]: p["score"] for p in preds}
    assert max(abs(got[k] - want[k]) for k in want) < 1e-5
    by_id = {r["order_id"]: r for r in v1 + v2}
    for p in preds:
        r = by_id[p["event_id"]]
        assert p["customer_id"] == r["customer"]["id"] and p["customer_tier"] == r["customer"]["tier"]
        assert p["payment_amount"] == pytest.approx(float(r["payment"]["amount"]))
        assert p["payment_coupon"] == r["payment"]["coupon"]
        assert p["key"] == r["customer"]["id"] and p["model"] == "orders"
        assert p["event_time"] == r["placed_at"].replace(microsecond=r["placed_at"].microsecond // 1000 * 1000)
    registered = SchemaRegistryClient({"url": url}).get_latest_version(f"{t_out}-value")
    assert {struct.unpack(">I", m.value()[1:5])[0] for m in msgs} == {registered.schema_id}
    assert len(dead) == 1 and dict(dead[0].headers())["error.class"] == b"unknown_schema"
    assert dead[0].value() == unknown


def test_registry_outage_pauses_and_never_dead_letters(
        tmp_path: Path, bootstrap: str, schema_registry: Any, names: Callable[[str], str],
        topics: Callable[..., None]) -> None:
    if not getattr(schema_registry, "local", False):
        pytest.skip("needs the registry the fixture started (it is killed and restarted)")
    url = schema_registry.url
    t_in, t_out = names("orders"), names("scored")
    dlq = f"{t_in}.dlq"
    topics({t_in: 2, t_out: 2, dlq: 1})
    models = _model(tmp_path)
    w1 = _Writer(bootstrap, url, t_in, ORDER_V1)
    w1.send(_orders(0, 500))
    cfg = write_config(tmp_path / "p.yaml", bootstrap, names("g"), [_pipeline(t_in, t_out, id_field=None, time_field=None)],
                       registry=str(models.root), schema_registry={"url": url})
    scorer = ScorerProcess(cfg, tmp_path / "scorer.log")
    try:
        read_all(bootstrap, t_out, expect=500, timeout=120, alive=scorer)
        w2 = _Writer(bootstrap, url, t_in, ORDER_V2)
        w2.ser(_orders(0, 1, v2=True)[0], SerializationContext(t_in, MessageField.VALUE))   # registers v2 now
        schema_registry.kill()
        w1.send(_orders(500, 1000))                 # a cached writer id: keeps flowing while the registry is down
        read_all(bootstrap, t_out, expect=1000, timeout=120, alive=scorer)
        w2.send(_orders(1000, 1500, v2=True))       # an id the scorer has not seen: waits, never dead-letters
        wait_for(lambda: "unreachable fetching schema id" in scorer.output(), 60, "the scorer waiting on the registry")
        schema_registry.restart()                   # same port, same storage
        msgs = read_all(bootstrap, t_out, expect=1500, timeout=120, idle=1.0, alive=scorer)
        unknown = b"\x00" + struct.pack(">I", 987654) + b"\x02x"      # unknown after the restart too
        p = Producer({"bootstrap.servers": bootstrap})
        p.produce(t_in, unknown, partition=0)
        assert p.flush(10) == 0
        dead = read_all(bootstrap, dlq, expect=1, timeout=60, idle=1.0, alive=scorer)
        assert scorer.terminate() == 0
    finally:
        scorer.close()
    assert [m.value() for m in dead] == [unknown], "nothing but the unknown id dead-lettered"
    preds = _read_predictions(msgs, url, t_out)
    assert len(preds) == 1500
    inputs = [m for m in read_all(bootstrap, t_in, expect=1501, timeout=30) if m.value() != unknown]
    coords = {f"{m.topic()}:{m.partition()}:{m.offset()}" for m in inputs}
    assert {p["event_id"] for p in preds} == coords, "id_field: null -> <topic>:<partition>:<offset>, each once"
    ts = {m.timestamp()[1] for m in inputs}
    assert {round(p["event_time"].timestamp() * 1000) for p in preds} <= ts, "time_field: null -> Kafka timestamp"


def test_startup_errors_name_the_registry_and_the_subject(
        tmp_path: Path, bootstrap: str, schema_registry: Any, names: Callable[[str], str],
        topics: Callable[..., None]) -> None:
    import socket
    import subprocess
    import sys

    from tests.integration.helpers import ROOT

    t_in, t_out = names("orders"), names("scored")
    topics({t_in: 1, t_out: 1, f"{t_in}.dlq": 1})
    models = _model(tmp_path)
    _Writer(bootstrap, schema_registry.url, t_in, ORDER_V1).send(_orders(0, 1))

    def serve(url: str) -> subprocess.CompletedProcess[str]:
        cfg = write_config(tmp_path / "p.yaml", bootstrap, names("g"), [_pipeline(t_in, t_out, id_field="order_id")],
                           registry=str(models.root), schema_registry={"url": url})
        env = {k: v for k, v in __import__("os").environ.items() if k not in ("KAFKA_BOOTSTRAP", "SCHEMA_REGISTRY_URL")}
        return subprocess.run([sys.executable, "-m", "streamscore", "serve", "-c", str(cfg)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)

    with socket.socket() as s:          # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{s.getsockname()[1]}"
    res = serve(dead_url)
    assert res.returncode == 2 and f"schema registry {dead_url} unreachable" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    # the output subject already holds a schema our output cannot evolve from (BACKWARD)
    clash = {"type": "record", "name": "Prediction", "namespace": "streamscore",
             "fields": [{"name": "other", "type": "string"}]}
    from confluent_kafka.schema_registry import Schema

    SchemaRegistryClient({"url": schema_registry.url}).register_schema(f"{t_out}-value",
                                                                       Schema(json.dumps(clash), "AVRO"))
    res = serve(schema_registry.url)
    assert res.returncode == 2, res.stderr
    assert f"refused the output schema for subject '{t_out}-value'" in res.stderr and "Traceback" not in res.stderr
