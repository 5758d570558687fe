"""Bring your own model: scikit-learn, XGBoost and LightGBM models trained here, converted with the
real converters, registered, and scored through a real broker by one scorer process (one pipeline
each), plus a two-head model and a pre hook that raises on one row."""

from __future__ import annotations

import collections
import io
from pathlib import Path
from typing import Any, Callable, Iterator

import fastavro
import numpy as np
import pytest
import yaml

from models.demo_data import generate, labels
from models.registry import ModelRegistry
from models.testing import write_two_head_onnx
from schemas.prediction import prediction_schema
from streamscore.cli import main as cli
from streamscore.produce import produce_events
from tests.integration.byo_hooks import POISON
from tests.integration.helpers import ScorerProcess, read_all, write_config

pytestmark = pytest.mark.integration

N_LIB = 10_000          # events per library model
N_SMALL = 3_000         # events for the two-head and the pre-hook pipelines
SEED = 11
NUM = ["f01", "f02", "f03", "f04", "f05"]
COUNTRIES = ["DE", "FR", "GB", "US", "NL"]     # the rest fall into one_hot's extra column
W2 = np.array([0.002, 0.8, -0.5], np.float32)  # two-head model: amount, f01, f02


def _x_trees(cols: dict[str, np.ndarray]) -> np.ndarray:
    """XGBoost's inputs: log1p(amount), f01..f05 (what the registered features build)."""
    return np.stack([np.log1p(cols["amount"])] + [cols[k] for k in NUM], axis=1).astype(np.float32)


def _x_lgb(cols: dict[str, np.ndarray]) -> np.ndarray:
    """LightGBM's inputs: one_hot(country) with an extra column, log1p(amount), standardised f01..f05."""
    country = cols["country"].astype(str)
    hot = np.stack([country == c for c in COUNTRIES] + [~np.isin(country, COUNTRIES)], axis=1)
    std = [(cols[k] - 0.5) / 2.0 for k in NUM]
    return np.column_stack([hot, np.log1p(cols["amount"]), *std]).astype(np.float32)


def _frame(cols: dict[str, np.ndarray]) -> Any:
    import pandas as pd

    return pd.DataFrame({"country": cols["country"].astype(str), "channel": cols["channel"].astype(str),
                         "amount": np.log1p(cols["amount"]), **{k: cols[k] for k in NUM}})


def _train(tmp: Path) -> dict[str, Any]:
    """Train, convert and register every model; returns the fitted estimators."""
    import lightgbm
    import xgboost
    from onnxmltools import convert_lightgbm, convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType as MlFloat
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    train = generate(3000, seed=100)
    y = labels(train)
    reg_dir = tmp / "registry"
    # scikit-learn: one-hot inside the pipeline (string inputs), log1p declared as a feature transform
    skl = Pipeline([("pre", ColumnTransformer([("cat", OneHotEncoder(handle_unknown="ignore"), ["country", "channel"])],
                                              remainder="passthrough")),
                    ("gb", GradientBoostingClassifier(n_estimators=30, max_depth=3, random_state=0))]).fit(_frame(train), y)
    types = [("country", StringTensorType([None, 1])), ("channel", StringTensorType([None, 1]))] + \
        [(k, FloatTensorType([None, 1])) for k in ["amount", *NUM]]
    (tmp / "skl.onnx").write_bytes(to_onnx(skl, initial_types=types, target_opset=17).SerializeToString())
    spec = {"features": [{"name": "country", "dtype": "string", "input": "country"},
                         {"name": "channel", "dtype": "string", "input": "channel"},
                         {"name": "amount", "input": "amount", "transforms": ["log1p"]},
                         *[{"name": k, "input": k} for k in NUM]]}
    (tmp / "skl.yaml").write_text(yaml.safe_dump(spec))
    # through the CLI, as a user would: the output spec (score = P(class 1)) is inferred from the graph
    assert cli(["models", "register", "skl-gb", "--registry", str(reg_dir), "--artifact", str(tmp / "skl.onnx"),
                "--input-spec", str(tmp / "skl.yaml"), "--stage", "production"]) == 0
    reg = ModelRegistry(reg_dir)
    tree_features = [{"name": "amount", "transforms": ["log1p"]}, *[{"name": k} for k in NUM]]

    xgb = xgboost.XGBClassifier(n_estimators=40, max_depth=4, random_state=0).fit(_x_trees(train), y)
    onx = convert_xgboost(xgb, initial_types=[("features", MlFloat([None, 1 + len(NUM)]))])
    (tmp / "xgb.onnx").write_bytes(onx.SerializeToString())
    from models.base import InputSpec
    from models.infer import infer_specs

    reg.register("xgb-clf", tmp / "xgb.onnx", format="onnx", input_spec=InputSpec.from_dict({"features": tree_features}),
                 output_spec=infer_specs(tmp / "xgb.onnx")[1], stage="production")

    y4 = np.digitize(train["f01"] + train["f02"], [-1.0, 0.0, 1.0])       # four classes
    lgb = lightgbm.LGBMClassifier(n_estimators=30, num_leaves=15, random_state=0, verbose=-1).fit(_x_lgb(train), y4)
    width = _x_lgb(train).shape[1]
    onx = convert_lightgbm(lgb, initial_types=[("features", MlFloat([None, width]))], zipmap=True)
    (tmp / "lgb.onnx").write_bytes(onx.SerializeToString())
    out_spec = infer_specs(tmp / "lgb.onnx")[1]
    assert out_spec["heads"][0]["kind"] == "classes" and out_spec["heads"][0]["labels"] == ["0", "1", "2", "3"]
    lgb_features = [{"name": "country", "default": "", "transforms": [{"one_hot": {"vocabulary": COUNTRIES}}]},
                    {"name": "amount", "transforms": ["log1p"]},
                    *[{"name": k, "transforms": [{"standardize": {"mean": 0.5, "std": 2.0}}]} for k in NUM]]
    reg.register("lgb-multi", tmp / "lgb.onnx", format="onnx", input_spec=InputSpec.from_dict({"features": lgb_features}),
                 output_spec=out_spec, stage="production")

    write_two_head_onnx(tmp / "two.onnx", W2)
    reg.register("risk", tmp / "two.onnx", format="onnx", input_spec=InputSpec.of(["amount", "f01", "f02"]),
                 output_spec={"heads": [{"name": "score", "kind": "score", "output": "score"},
                                        {"name": "expected_loss", "kind": "value", "output": "expected_loss"}]},
                 stage="production", decision_threshold=0.4)

    from models import DEMO_REGISTRY

    demo = ModelRegistry(DEMO_REGISTRY).get("fraud-mlp")
    reg.register("hooked", demo.artifact_path, format="onnx", input_spec=demo.input_spec, output_spec={},
                 stage="production", decision_threshold=demo.decision_threshold,
                 hooks={"pre": "tests.integration.byo_hooks:pre_demo"})
    return {"skl": skl, "xgb": xgb, "lgb": lgb, "registry": reg}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, bootstrap: str) -> Iterator[dict[str, Any]]:
    import uuid

    tmp = tmp_path_factory.mktemp("byo")
    models = _train(tmp)
    tag = uuid.uuid4().hex[:8]
    sizes = {"skl": N_LIB, "xgb": N_LIB, "lgb": N_LIB, "risk": N_SMALL, "hooked": N_SMALL}
    model_of = {"skl": "skl-gb", "xgb": "xgb-clf", "lgb": "lgb-multi", "risk": "risk", "hooked": "hooked"}
    topics = {k: (f"t-byo-{k}-{tag}", f"t-byo-{k}-out-{tag}") for k in sizes}
    from consumers.kafka_client import ensure_topics

    ensure_topics({"bootstrap.servers": bootstrap}, {t: 2 for pair in topics.values() for t in pair})
    for k, (t_in, _) in topics.items():
        produce_events({"bootstrap.servers": bootstrap}, t_in, sizes[k], seed=SEED)
    pipelines = [{"name": k, "input": {"topic": t_in}, "model": {"name": model_of[k]}, "output": {"topic": t_out},
                  "telemetry": {"enabled": False}} for k, (t_in, t_out) in topics.items()]
    cfg = write_config(tmp / "p.yaml", bootstrap, f"g-byo-{tag}", pipelines, registry=str(tmp / "registry"))
    scorer = ScorerProcess(cfg, tmp / "scorer.log")
    try:
        out = {k: read_all(bootstrap, t_out, expect=sizes[k] - (1 if k == "hooked" else 0), timeout=120, alive=scorer)
               for k, (_, t_out) in topics.items()}
        dlq = read_all(bootstrap, f"{topics['hooked'][0]}.dlq", expect=1, timeout=30, idle=2.0, alive=scorer)
        assert scorer.terminate() == 0, scorer.output()[-3000:]
    finally:
        scorer.close()
    yield {"out": out, "dlq": dlq, "models": models, "log": scorer.output()}


def _decode(reg: ModelRegistry, name: str, msgs: list[Any]) -> list[dict[str, Any]]:
    """A downstream reader: fastavro with the prediction schema derived from the registered spec."""
    schema = fastavro.parse_schema(prediction_schema(reg.get(name).outputs))
    recs = []
    for m in msgs:
        value = m.value()
        assert value[0] == 0
        recs.append(fastavro.schemaless_reader(io.BytesIO(value[5:]), schema))
    return recs


def _by_event(recs: list[dict[str, Any]], n: int) -> dict[str, dict[str, Any]]:
    counts = collections.Counter(r["event_id"] for r in recs)
    assert len(counts) == n and max(counts.values()) == 1, "every event scored exactly once"
    return {r["event_id"]: r for r in recs}


def _check_binary(run: dict[str, Any], key: str, name: str, proba: Callable[[dict[str, np.ndarray]], np.ndarray]) -> None:
    recs = _by_event(_decode(run["models"]["registry"], name, run["out"][key]), N_LIB)
    cols = generate(N_LIB, seed=SEED)
    want = proba(cols)
    got = np.array([recs[e]["score"] for e in cols["event_id"].tolist()])
    assert np.abs(got - want).max() <= 1e-4, f"max difference {np.abs(got - want).max()}"
    assert all(r["decision"] == (r["score"] >= 0.5) for r in recs.values())
    assert 0 < sum(r["decision"] for r in recs.values()) < N_LIB


def test_sklearn_pipeline_matches_predict_proba(run: dict[str, Any]) -> None:
    _check_binary(run, "skl", "skl-gb", lambda cols: run["models"]["skl"].predict_proba(_frame(cols))[:, 1])


def test_xgboost_matches_predict_proba(run: dict[str, Any]) -> None:
    _check_binary(run, "xgb", "xgb-clf", lambda cols: run["models"]["xgb"].predict_proba(_x_trees(cols))[:, 1])


def test_lightgbm_multiclass_records_carry_label_and_scores(run: dict[str, Any]) -> None:
    recs = _by_event(_decode(run["models"]["registry"], "lgb-multi", run["out"]["lgb"]), N_LIB)
    cols = generate(N_LIB, seed=SEED)
    want = run["models"]["lgb"].predict_proba(_x_lgb(cols))
    got = np.array([[recs[e]["scores"][str(c)] for c in range(4)] for e in cols["event_id"].tolist()])
    assert np.abs(got - want).max() <= 1e-4, f"max difference {np.abs(got - want).max()}"
    labels_ = [recs[e]["label"] for e in cols["event_id"].tolist()]
    assert labels_ == [str(c) for c in want.argmax(axis=1)]
    assert np.abs(np.array([recs[e]["probability"] for e in cols["event_id"].tolist()]) - want.max(axis=1)).max() <= 1e-4
    assert len(set(labels_)) == 4


def test_two_heads_both_fields_decoded_with_the_derived_schema(run: dict[str, Any]) -> None:
    reg = run["models"]["registry"]
    schema = prediction_schema(reg.get("risk").outputs)
    assert [f["name"] for f in schema["fields"]][5:8] == ["score", "decision", "expected_loss"]
    recs = _by_event(_decode(reg, "risk", run["out"]["risk"]), N_SMALL)
    cols = generate(N_SMALL, seed=SEED)
    x = np.stack([cols["amount"], cols["f01"], cols["f02"]], axis=1).astype(np.float32)
    p = 1 / (1 + np.exp(-(x.astype(np.float64) @ W2.astype(np.float64))))
    ids = cols["event_id"].tolist()
    score = np.array([recs[e]["score"] for e in ids])
    loss = np.array([recs[e]["expected_loss"] for e in ids])
    assert np.abs(score - p).max() <= 1e-5
    np.testing.assert_allclose(loss, p * x[:, 0].astype(np.float64), rtol=1e-5, atol=1e-6)
    assert all(recs[e]["decision"] == (recs[e]["score"] >= 0.4) for e in ids)


def test_a_raising_pre_hook_dead_letters_exactly_its_row(run: dict[str, Any]) -> None:
    dlq = run["dlq"]
    assert len(dlq) == 1
    from tests.integration.helpers import decode_transaction

    assert decode_transaction(dlq[0].value())["event_id"] == POISON
    headers = dict(dlq[0].headers())
    assert headers["error.class"] == b"features"
    assert b"pre hook tests.integration.byo_hooks:pre_demo raised ValueError" in headers["error.message"]
    recs = _decode(run["models"]["registry"], "hooked", run["out"]["hooked"])
    ids = {r["event_id"] for r in recs}
    assert len(recs) == len(ids) == N_SMALL - 1 and POISON not in ids
