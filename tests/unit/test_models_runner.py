"""The model runner: heads from outputs, hooks and their contracts, per-row isolation."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pytest

from consumers.model_stage import score_isolating
from models.base import InputSpec
from models.onnx_backend import OnnxModel
from models.runner import ModelRunner
from models.testing import write_linear_onnx, write_two_head_onnx
from schemas.columns import DecodedBatch, StrColumn
from schemas.errors import HookContractError
from schemas.prediction import OutputSpec

W = np.array([0.5, -0.25, 1.0], np.float32)
SPEC = InputSpec.of(["a", "b", "c"])


def _batch(n: int) -> DecodedBatch:
    rng = np.random.default_rng(3)
    cols: dict[str, Any] = {k: rng.normal(size=n) for k in "abc"}
    cols["event_id"] = StrColumn.from_list([f"e{i}" for i in range(n)])
    return DecodedBatch(cols, np.arange(n), [], np.zeros(n, np.int64))


def _model(tmp_path: Path, two: bool = False) -> OnnxModel:
    path = tmp_path / "m.onnx"
    (write_two_head_onnx if two else write_linear_onnx)(path, W)
    m = OnnxModel(path, name="m", version="1", input_spec=SPEC)
    m.load()
    return m


def _expected(batch: DecodedBatch) -> np.ndarray:
    x = np.stack([batch.columns[k] for k in "abc"], axis=1).astype(np.float32)
    return 1 / (1 + np.exp(-(x @ W)))


def test_two_heads_score_and_value(tmp_path: Path) -> None:
    spec = OutputSpec.from_dict({"heads": [{"name": "score", "kind": "score", "output": "score"},
                                           {"name": "expected_loss", "kind": "value", "output": "expected_loss"}]})
    runner = ModelRunner(_model(tmp_path, two=True), input_spec=SPEC, output_spec=spec, threshold=0.5)
    batch = _batch(50)
    out = runner.score(runner.features(batch), np.arange(50), batch)
    p = _expected(batch)
    np.testing.assert_allclose(out.fields["score"], p, atol=1e-6)
    np.testing.assert_array_equal(out.fields["decision"], out.fields["score"] >= 0.5)
    np.testing.assert_allclose(out.fields["expected_loss"], p * batch.columns["a"], atol=1e-5)
    assert out.fields["expected_loss"].dtype == np.float64 and set(out.fields) == {"score", "decision", "expected_loss"}


def test_classes_head_gives_label_probability_and_top_k(tmp_path: Path) -> None:
    def post(outputs: Mapping[str, np.ndarray], cols: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        p = np.asarray(outputs["score"]).reshape(n)
        return {"probs": np.stack([p * 0.5, 1 - p, p * 0.5], axis=1)}

    spec = OutputSpec.from_dict({"heads": [{"kind": "classes", "output": "probs", "labels": ["x", "y", "z"], "top_k": 2}]})
    runner = ModelRunner(_model(tmp_path), input_spec=SPEC, output_spec=spec, threshold=0.5, post=post, post_name="t:post")
    batch = _batch(20)
    out = runner.score(runner.features(batch), np.arange(20), batch)
    p = _expected(batch)
    probs = np.stack([p * 0.5, 1 - p, p * 0.5], axis=1)
    labels = np.array(["x", "y", "z"])[probs.argmax(axis=1)]
    assert out.fields["label"].tolist() == labels.tolist()
    np.testing.assert_allclose(out.fields["probability"], probs.max(axis=1), atol=1e-6)
    for row, m in zip(probs, out.fields["scores"]):
        assert len(m) == 2 and max(m.values()) == pytest.approx(row.max(), abs=1e-6)


def test_a_raising_pre_hook_loses_only_its_row(tmp_path: Path) -> None:
    def pre(cols: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        if "e13" in cols["event_id"].tolist():
            raise ValueError("bad row e13")
        return {"features": np.stack([cols[k] for k in "abc"], axis=1)}

    runner = ModelRunner(_model(tmp_path), input_spec=SPEC, output_spec=OutputSpec(), threshold=0.5, pre=pre,
                         pre_name="t:pre")
    batch = _batch(40)
    scores, fields, bad = score_isolating(runner, runner.features(batch), np.arange(40), batch)
    assert [(r, reason) for r, reason, _ in bad] == [(13, "features")]
    assert "pre hook t:pre raised ValueError: bad row e13" in bad[0][2]
    keep = np.arange(40) != 13
    np.testing.assert_allclose(scores[keep], _expected(batch)[keep], atol=1e-6)


def test_a_hook_returning_the_wrong_shape_fails_naming_the_hook(tmp_path: Path) -> None:
    runner = ModelRunner(_model(tmp_path), input_spec=SPEC, output_spec=OutputSpec(), threshold=0.5,
                         pre=lambda cols, n: {"features": np.zeros((n, 2))}, pre_name="my.hooks:pre")
    batch = _batch(8)
    with pytest.raises(HookContractError, match=r"pre hook my.hooks:pre: input 'features' must have shape \(8, 3\)"):
        score_isolating(runner, runner.features(batch), np.arange(8), batch)


def test_model_stage_joins_lookups_and_writes_features_for_primary_and_shadow(tmp_path: Path) -> None:
    from consumers.model_stage import ModelStage
    from consumers.runtime import ActiveModel, ModelSlot, PipelineRuntime
    from consumers.work import Work

    spec = InputSpec.from_dict({"features": [{"name": "a"}, {"name": "b"}, {"name": "c", "field": "acct.c"}]})
    model = _model(tmp_path)
    runner = ModelRunner(model, input_spec=spec, output_spec=OutputSpec(), threshold=0.5)

    class Enricher:
        def enrich(self, batch: Any) -> dict[int, str]:
            batch.columns["acct.c"] = np.array([1.0, 2.0, 3.0, 4.0])
            return {1: "no entry"}

    class Metrics:
        def model_latency(self, *a: Any) -> None: ...

    def active(variant: Any) -> ActiveModel:
        return ActiveModel(model=model, assembler=spec, threshold=0.5, variant=variant, runner=runner)

    from consumers.batcher import AdaptiveBatcher

    rt = PipelineRuntime(name="p", input_topic="t", output_topic="o", dlq_topic="d", decoder=None,  # type: ignore[arg-type]
                         encoder=None, slot=ModelSlot(active("primary")),  # type: ignore[arg-type]
                         shadows=[ModelSlot(active("shadow"))], lookups=Enricher(), include_features=True)
    batch = _batch(4)
    work = Work(batch_id=1, rt=rt, ranges={}, msgs=[], decoded=batch, keys=StrColumn.from_bytes([b""] * 4))
    ModelStage(batchers={"p": AdaptiveBatcher(max_size=8, max_wait_s=0.01)}, metrics=Metrics()).score(work)
    assert work.dead == [(1, "lookup_missing", "no entry")]
    assert work.ok_rows is not None and work.ok_rows.tolist() == [0, 2, 3]
    x = np.stack([batch.columns["a"], batch.columns["b"], [1.0, 2.0, 3.0, 4.0]], axis=1).astype(np.float32)
    want = 1 / (1 + np.exp(-(x @ W)))
    assert work.scores is not None
    np.testing.assert_allclose(work.scores[[0, 2, 3]], want[[0, 2, 3]], rtol=1e-5)
    assert work.fields["features"][2] == {"a": float(x[2, 0]), "b": float(x[2, 1]), "c": 3.0}
    (_, _, shadow_fields), = work.shadow_out
    assert [m["c"] for m in shadow_fields["features"]] == [1.0, 3.0, 4.0]
