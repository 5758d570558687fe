"""The second reference pipeline: TextEvent -> all-MiniLM-L6-v2 embeddings -> Embedding (Avro)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Callable

import fastavro
import numpy as np
import pytest
from confluent_kafka import Producer

from models.text import MiniLMEmbedder
from schemas.columnar import BatchEncoder
from schemas.registry import SchemaRegistry
from tests.integration.helpers import ROOT, ScorerProcess, read_all, write_config

pytestmark = pytest.mark.integration

TEXTS = [
    "card declined at the fuel station", "refund for a cancelled flight", "new phone bought online",
    "ATM withdrawal abroad at 3am", "", "grocery shopping, weekly", "Überweisung an Vermieter",
    "subscription renewal: streaming service", "suspicious login from a new device", "coffee",
] * 6


def test_text_events_become_embeddings_matching_the_model(tmp_path: Path, bootstrap: str,
                                                          names: Callable[[str], str],
                                                          topics: Callable[..., None]) -> None:
    t_in, t_out = names("text"), names("emb")
    topics({t_in: 2, t_out: 2})
    reg = SchemaRegistry.default()
    enc = BatchEncoder(reg.schema("text_event"), reg.id_for("text_event"))
    n = len(TEXTS)
    ids = [f"txt-{i}" for i in range(n)]
    keys = [f"user-{i % 7}" for i in range(n)]
    values = enc.encode({"event_id": ids, "key": keys, "text": TEXTS}, n)
    p = Producer({"bootstrap.servers": bootstrap})
    for v, k in zip(values, keys):
        p.produce(t_in, v, k.encode())
    assert p.flush(30) == 0
    cfg = write_config(tmp_path / "p.yaml", bootstrap, names("g"),
                       [{"name": "text", "kind": "embed", "input": {"topic": t_in, "schema": "text_event"},
                         "embedder": {"batch_size": 32}, "output": {"topic": t_out},
                         "telemetry": {"enabled": False}}])
    scorer = ScorerProcess(cfg, tmp_path / "scorer.log")
    try:
        msgs = read_all(bootstrap, t_out, expect=n, timeout=180, idle=1.0, alive=scorer)
        assert scorer.terminate() == 0
    finally:
        scorer.close()
    schema = fastavro.parse_schema(json.loads((ROOT / "schemas" / "embedding.avsc").read_text()))
    recs = {r["event_id"]: r for r in (fastavro.schemaless_reader(io.BytesIO(m.value()[5:]), schema) for m in msgs)}
    assert sorted(recs) == sorted(ids) and len(msgs) == n
    direct = MiniLMEmbedder()
    direct.load()
    try:
        want = direct.embed(TEXTS)
    finally:
        direct.close()
    got = np.array([recs[i]["embedding"] for i in ids], dtype=np.float32)
    assert got.shape == (n, 384)
    cos = (got * want).sum(axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert cos.min() >= 1 - 1e-4
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)
    assert all(recs[i]["key"] == k and recs[i]["model"] == "all-MiniLM-L6-v2" for i, k in zip(ids, keys))


def test_score_and_embed_pipelines_in_one_process_batch_by_their_own_settings(
        tmp_path: Path, bootstrap: str, names: Callable[[str], str], topics: Callable[..., None]) -> None:
    import re
    import urllib.request

    from streamscore.produce import produce_events
    from tests.integration.helpers import wait_for

    t_tx, t_pred, t_text, t_emb = names("tx"), names("pred"), names("text"), names("emb")
    topics({t_tx: 1, t_pred: 1, t_text: 1, t_emb: 1})
    n_tx = 2_000
    produce_events({"bootstrap.servers": bootstrap}, t_tx, n_tx, seed=3)
    reg = SchemaRegistry.default()
    enc = BatchEncoder(reg.schema("text_event"), reg.id_for("text_event"))
    n = len(TEXTS)
    p = Producer({"bootstrap.servers": bootstrap})
    for v in enc.encode({"event_id": [f"t{i}" for i in range(n)], "key": ["k"] * n, "text": TEXTS}, n):
        p.produce(t_text, v)
    assert p.flush(30) == 0
    # both backlogs are there before the scorer starts, so every batch but the last fills to its max_size
    cfg = write_config(tmp_path / "p.yaml", bootstrap, names("g"), [
        {"name": "fraud", "input": {"topic": t_tx}, "model": {"name": "fraud-mlp"}, "output": {"topic": t_pred},
         "batching": {"max_size": 50, "max_wait_ms": 50}, "telemetry": {"enabled": False}},
        {"name": "text", "kind": "embed", "input": {"topic": t_text, "schema": "text_event"},
         "batching": {"max_size": 7, "max_wait_ms": 50}, "output": {"topic": t_emb}},
    ], metrics_port=0)
    scorer = ScorerProcess(cfg, tmp_path / "scorer.log")
    try:
        read_all(bootstrap, t_pred, expect=n_tx, timeout=120, alive=scorer)
        read_all(bootstrap, t_emb, expect=n, timeout=180, alive=scorer)
        wait_for(lambda: re.search(r"metrics on http://[\d.]+:(\d+)/", scorer.output()) is not None, 30, "metrics port")
        port = re.search(r"metrics on http://[\d.]+:(\d+)/", scorer.output()).group(1)  # type: ignore[union-attr]
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert scorer.terminate() == 0
    finally:
        scorer.close()

    def sample(name: str, pipeline: str) -> float:
        m = re.search(rf'^{name}{{[^}}]*pipeline="{pipeline}"[^}}]*}} ([0-9.e+]+)$', text, re.M)
        assert m is not None, f"no {name} for pipeline {pipeline!r}"
        return float(m.group(1))

    assert 'pipeline="all"' not in text, "batch metrics must be labelled by pipeline"
    assert sample("streamscore_batch_size_sum", "fraud") == n_tx
    assert sample("streamscore_batch_size_count", "fraud") >= n_tx / 50, "the score pipeline batches by 50"
    assert sample("streamscore_batch_size_sum", "text") == n
    assert sample("streamscore_batch_size_count", "text") >= n / 7, "the embed pipeline batches by 7"
