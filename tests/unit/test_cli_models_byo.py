"""``models register`` infers what it can, ``models check`` prints what the stream would emit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.demo_data import generate
from models.testing import write_two_head_onnx
from streamscore.cli import main
from streamscore.produce import encode_transactions

W = np.array([0.001, 0.5, -0.5], np.float32)


def _register(tmp_path: Path) -> Path:
    reg = tmp_path / "reg"
    write_two_head_onnx(tmp_path / "m.onnx", W)
    (tmp_path / "spec.yaml").write_text(
        "features: [{name: amount, default: 0}, {name: f01}, {name: f02}]\n"
        "output_spec: {heads: [{kind: score, output: score}, {name: expected_loss, kind: value, output: expected_loss}]}\n"
        "decision_threshold: 0.3\n")
    assert main(["models", "register", "risk", "--registry", str(reg), "--artifact", str(tmp_path / "m.onnx"),
                 "--input-spec", str(tmp_path / "spec.yaml")]) == 0
    return reg


def test_check_prints_each_record_or_its_dead_letter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reg = _register(tmp_path)
    cols = generate(4, seed=5)
    lines = encode_transactions(cols, 4, fmt="json")
    lines[2] = b'{"event_id": "broken"'
    (tmp_path / "s.jsonl").write_bytes(b"\n".join(lines))
    capsys.readouterr()
    assert main(["models", "check", "risk", "1", "--registry", str(reg), "--sample", str(tmp_path / "s.jsonl")]) == 0
    printed = capsys.readouterr()
    out = [json.loads(x) for x in printed.out.splitlines()]
    assert len(out) == 4 and out[2]["dead_letter"] == "decode"
    assert printed.err.strip().splitlines()[-1] == "4 rows: 3 scored, 1 dead-lettered (decode: 1)"
    x = np.stack([cols["amount"], cols["f01"], cols["f02"]], axis=1).astype(np.float32)
    p = 1 / (1 + np.exp(-(x.astype(np.float64) @ W)))
    for i in (0, 1, 3):
        assert out[i]["event_id"] == cols["event_id"][i] and out[i]["version"] == "1"
        assert out[i]["score"] == pytest.approx(p[i], abs=1e-6)
        assert out[i]["expected_loss"] == pytest.approx(p[i] * x[i, 0], rel=1e-5)
        assert out[i]["decision"] == (out[i]["score"] >= 0.3)


def test_check_of_an_empty_sample_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reg = _register(tmp_path)
    (tmp_path / "empty.jsonl").write_text("")
    capsys.readouterr()
    assert main(["models", "check", "risk", "1", "--registry", str(reg), "--sample", str(tmp_path / "empty.jsonl")]) == 2
    assert "holds no rows" in capsys.readouterr().err


def test_check_reads_csv_typed_by_the_schema(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reg = _register(tmp_path)
    cols = generate(2, seed=6)
    recs = [json.loads(v) for v in encode_transactions(cols, 2, fmt="json")]
    header = list(recs[0])
    rows = [",".join(str(r[k]) for k in header) for r in recs]
    (tmp_path / "s.csv").write_text("\n".join([",".join(header), *rows]) + "\n")
    capsys.readouterr()
    assert main(["models", "check", "risk", "--registry", str(reg), "--sample", str(tmp_path / "s.csv")]) == 2
    assert "has no version in stage 'production'" in capsys.readouterr().err
    assert main(["models", "check", "risk", "1", "--registry", str(reg), "--sample", str(tmp_path / "s.csv")]) == 0
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [o["event_id"] for o in out] == cols["event_id"].tolist() and "score" in out[0]


def test_register_infers_a_classes_head_from_a_converted_classifier(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 2)).astype(np.float32)
    y = np.array(["low", "mid", "high"])[np.digitize(x[:, 0], [-0.5, 0.5])]
    onx = to_onnx(LogisticRegression().fit(x, y), x[:1], target_opset=17)
    (tmp_path / "c.onnx").write_bytes(onx.SerializeToString())
    (tmp_path / "spec.yaml").write_text("features: [{name: f01, input: X}, {name: f02, input: X}]\n")
    capsys.readouterr()
    assert main(["models", "register", "router", "--registry", str(tmp_path / "reg"), "--artifact",
                 str(tmp_path / "c.onnx"), "--input-spec", str(tmp_path / "spec.yaml")]) == 0
    out = capsys.readouterr().out
    assert "prediction fields label, probability, scores" in out and '"labels": ["high", "low", "mid"]' in out
