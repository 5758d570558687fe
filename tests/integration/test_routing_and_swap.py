"""Models in the stream: hot swap mid-stream, canary, shadow, a failing shadow, two pipelines."""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import pytest

from models import DEMO_REGISTRY
from models.demo_data import generate
from models.registry import ModelRegistry
from streamscore.produce import produce_events
from tests.integration.helpers import ROOT, ScorerProcess, decode_prediction, read_all, wait_for, write_config

pytestmark = pytest.mark.integration


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    """A private copy of the demo registry with fraud-mlp:2 (same artifact) staged."""
    root = tmp_path / "registry"
    shutil.copytree(DEMO_REGISTRY, root)
    reg = ModelRegistry(root)
    v1 = reg.get("fraud-mlp")
    reg.register("fraud-mlp", v1.artifact_path, format="onnx", input_spec=v1.input_spec,
                 output_spec=v1.output_spec, reference_profile=v1.reference_profile, metrics=v1.metrics,
                 stage="staging", version="2", decision_threshold=v1.decision_threshold)
    return reg


def _pipe(t_in: str, t_out: str, **kw: Any) -> dict[str, Any]:
    return {"name": "fraud", "input": {"topic": t_in}, "model": {"name": "fraud-mlp", "watch_interval_ms": 100},
            "output": {"topic": t_out}, "telemetry": {"enabled": False}, **kw}


def test_promotion_mid_stream_switches_at_a_batch_boundary(tmp_path: Path, bootstrap: str, registry: ModelRegistry,
                                                           names: Callable[[str], str],
                                                           topics: Callable[..., None]) -> None:
    """Events keep flowing while the new version is loaded and swapped in: the producer
    goes on, 5,000 at a time, until the scorer has swapped and 10,000 more have followed
    (so the test holds however long the load takes on a busy machine)."""
    first, chunk, after = 50_000, 5_000, 10_000
    t_in, t_out = names("tx"), names("pred")
    topics({t_in: 4, t_out: 4})
    cfg = write_config(tmp_path / "p.yaml", bootstrap, names("g"), [_pipe(t_in, t_out)], registry=str(registry.root))
    conf = {"bootstrap.servers": bootstrap}
    scorer = ScorerProcess(cfg, tmp_path / "scorer.log")
    n = first
    try:
        produce_events(conf, t_in, first, seed=41, rate=8_000)
        wait_for(lambda: len(read_all(bootstrap, t_out, expect=first // 2, timeout=3)) >= first // 2, 120,
                 "half scored")
        promote = subprocess.run([sys.executable, "-m", "streamscore", "models", "promote", "fraud-mlp", "2",
                                  "--registry", str(registry.root)], capture_output=True, text=True, cwd=ROOT)
        assert promote.returncode == 0, promote.stderr
        extra = 0
        while extra < after and n < 400_000:
            produce_events(conf, t_in, chunk, seed=41, start=n, rate=8_000)
            n += chunk
            if "swapped 1 -> 2" in scorer.output():
                extra += chunk
        msgs = read_all(bootstrap, t_out, expect=n, timeout=120, idle=2.0, alive=scorer)
        assert scorer.terminate() == 0
    finally:
        scorer.close()
    preds = [(m.partition(), decode_prediction(m.value())) for m in msgs]
    ids = collections.Counter(p["event_id"] for _, p in preds)
    assert set(ids) == set(generate(n, seed=41)["event_id"].tolist())
    assert max(ids.values()) == 1, "an event was scored twice"
    for part in range(4):
        versions = [p["version"] for q, p in preds if q == part]
        switch = versions.index("2") if "2" in versions else len(versions)
        assert versions[:switch] == ["1"] * switch and set(versions[switch:]) <= {"2"}, \
            f"partition {part}: versions interleave"
    assert {p["version"] for _, p in preds} == {"1", "2"}, "the promotion never took effect"
    assert "swapped 1 -> 2" in scorer.output()


def test_failed_swap_keeps_serving_the_old_version(tmp_path: Path, bootstrap: str, registry: ModelRegistry,
                                                   names: Callable[[str], str], topics: Callable[..., None]) -> None:
    t_in, t_out = names("tx"), names("pred")
    topics({t_in: 1, t_out: 1})
    cfg = write_config(tmp_path / "p.yaml", bootstrap, names("g"), [_pipe(t_in, t_out)], registry=str(registry.root))
    v2 = registry.get("fraud-mlp", "2")
    v2.artifact_path.write_bytes(v2.artifact_path.read_bytes() + b"tampered")
    scorer = ScorerProcess(cfg, tmp_path / "scorer.log")
    try:
        produce_events({"bootstrap.servers": bootstrap}, t_in, 1_000, seed=42)
        read_all(bootstrap, t_out, expect=1_000, timeout=60, alive=scorer)
        registry.promote("fraud-mlp", "2")
        wait_for(lambda: "not swapped in" in scorer.output(), 30, "the swap failure to be logged")
        produce_events({"bootstrap.servers": bootstrap}, t_in, 1_000, seed=42, start=1_000)
        msgs = read_all(bootstrap, t_out, expect=2_000, timeout=60, alive=scorer)
        assert scorer.terminate() == 0
    finally:
        scorer.close()
    assert {decode_prediction(m.value())["version"] for m in msgs} == {"1"}
    assert "integrity" in scorer.output()


def test_canary_shadow_and_failing_shadow(tmp_path: Path, bootstrap: str, registry: ModelRegistry,
                                          names: Callable[[str], str], topics: Callable[..., None]) -> None:
    import torch

    class Boom(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[0] > 2:        # passes the 2-row smoke check, fails on real batches
                raise RuntimeError("shadow exploded")
            return x[:, 0] * 0.0

    boom = tmp_path / "boom.pt"
    torch.jit.save(torch.jit.script(Boom()), str(boom))
    v1 = registry.get("fraud-mlp")
    registry.register("boom", boom, format="torchscript", input_spec=v1.input_spec, output_spec=v1.output_spec,
                      stage="production", version="1")
    n = 20_000
    t_in, t_out, t_a, t_b = names("tx"), names("pred"), names("tx2"), names("pred2")
    topics({t_in: 2, t_out: 2, t_a: 2, t_b: 2})
    route = {"mode": "canary", "fraction": 0.1,
             "arms": [{"name": "fraud-mlp", "version": "1"}, {"name": "fraud-mlp", "version": "2", "variant": "canary"}],
             "shadow": [{"name": "fraud-mlp-torch"}, {"name": "boom"}]}
    second = {"name": "second", "input": {"topic": t_a}, "model": {"name": "fraud-mlp-torch"},
              "output": {"topic": t_b}, "telemetry": {"enabled": False}}
    cfg = write_config(tmp_path / "p.yaml", bootstrap, names("g"), [_pipe(t_in, t_out, route=route), second],
                       registry=str(registry.root))
    produce_events({"bootstrap.servers": bootstrap}, t_in, n, seed=43)
    produce_events({"bootstrap.servers": bootstrap}, t_a, 3_000, seed=44)
    scorer = ScorerProcess(cfg, tmp_path / "scorer.log")
    try:
        primary = read_all(bootstrap, t_out, expect=n, timeout=120, idle=1.0, alive=scorer)
        shadow = read_all(bootstrap, f"{t_out}.shadow", expect=n, timeout=60, idle=1.0)
        other = read_all(bootstrap, t_b, expect=3_000, timeout=60, idle=1.0)
        assert scorer.terminate() == 0
    finally:
        scorer.close()
    preds = [decode_prediction(m.value()) for m in primary]
    assert len(preds) == n and len({p["event_id"] for p in preds}) == n, "a failing shadow disturbed primary output"
    assert {p["variant"] for p in preds} == {"primary", "canary"}
    by_key: dict[str, set[str]] = collections.defaultdict(set)
    for p in preds:
        by_key[p["key"]].add(p["variant"])
    assert all(len(v) == 1 for v in by_key.values()), "a key was routed to both variants"
    canary_keys = sum(1 for v in by_key.values() if v == {"canary"})
    assert abs(canary_keys / len(by_key) - 0.10) <= 0.01 + 3 * (0.09 / len(by_key)) ** 0.5
    assert all(p["version"] == ("2" if p["variant"] == "canary" else "1") for p in preds)
    # the shadow topic holds only the working shadow's predictions; the main topic none of them
    sh = [decode_prediction(m.value()) for m in shadow]
    assert len(sh) == n and {p["variant"] for p in sh} == {"shadow"} and {p["model"] for p in sh} == {"fraud-mlp-torch"}
    assert all(p["model"] == "fraud-mlp" for p in preds)
    assert "shadow boom:1 failed on a batch" in scorer.output()
    # the second pipeline of the same process scored its own topic with its own model
    assert {decode_prediction(m.value())["model"] for m in other} == {"fraud-mlp-torch"} and len(other) == 3_000
