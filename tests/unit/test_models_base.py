"""InputSpec assembly, output checks, metrics and profiles, and the package's import hygiene."""

from __future__ import annotations

import json
import subprocess
import sys
from itertools import product

import numpy as np
import pytest

from models.base import InputError, InputSpec, check_scores
from models.metrics import auc, best_f1_threshold
from models.profile import bin_index, build_profile, categorical_profile, numeric_profile, score_profile
from schemas.errors import ModelError, PredictError


def test_assemble_order_dtype_layout() -> None:
    spec = InputSpec.of(["b", "a", "c"])
    cols = {"a": np.array([1.0, 2.0]), "b": np.array([3, 4]), "c": np.array([5.5, 6.5], dtype=np.float32),
            "extra": np.array(["x", "y"], dtype=object)}
    out = spec.assemble(cols)
    assert out.dtype == np.float32 and out.flags.c_contiguous and out.shape == (2, 3)
    np.testing.assert_array_equal(out, [[3, 1, 5.5], [4, 2, 6.5]])


def test_assemble_names_missing_columns() -> None:
    spec = InputSpec.of(["amount", "f01", "f02"])
    with pytest.raises(InputError, match=r"missing input column\(s\) \['f01', 'f02'\]"):
        spec.assemble({"amount": np.zeros(3)})


def test_assemble_rejects_ragged_and_non_numeric() -> None:
    spec = InputSpec.of(["a", "b"])
    with pytest.raises(InputError, match="'b' has 2 rows"):
        spec.assemble({"a": np.zeros(3), "b": np.zeros(2)})
    with pytest.raises(InputError, match="'b' cannot be converted") as info:
        spec.assemble({"a": np.zeros(2), "b": np.array(["x", "y"], dtype=object)})
    assert info.value.__cause__ is not None
    assert isinstance(info.value, ModelError)


def test_spec_validation_and_round_trip() -> None:
    spec = InputSpec.of(["a", "b"], input_name="x")
    assert InputSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ModelError, match="duplicate"):
        InputSpec.of(["a", "a"])
    with pytest.raises(ModelError, match="unsupported feature dtypes"):
        InputSpec.of(["a"], "complex64")
    with pytest.raises(ModelError, match="malformed input_spec"):
        InputSpec.from_dict({"nope": 1})


def test_check_scores_flattens_and_checks_length() -> None:
    out = check_scores("m", np.ones((4, 1), dtype=np.float64), 4)
    assert out.shape == (4,) and out.dtype == np.float32
    with pytest.raises(PredictError, match="returned 3 scores for 4 input rows"):
        check_scores("m", np.ones(3), 4)


def _auc_pairs(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y], s[~y]
    wins = sum((p > n) + 0.5 * (p == n) for p, n in product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_matches_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.3
    s = np.round(rng.random(300) + 0.3 * y, 1)  # coarse rounding makes many ties
    assert auc(y, s) == pytest.approx(_auc_pairs(y, s), abs=1e-12)
    assert auc(y, y.astype(float)) == 1.0
    assert auc(y, -y.astype(float)) == 0.0
    with pytest.raises(ModelError, match="both classes"):
        auc(np.zeros(5, bool), np.zeros(5))


def test_best_f1_threshold() -> None:
    y = np.array([0, 0, 1, 1, 0, 1], dtype=bool)
    s = np.array([0.1, 0.2, 0.7, 0.8, 0.3, 0.9])
    assert best_f1_threshold(y, s) == pytest.approx(0.7)


def test_bin_convention_and_profiles() -> None:
    edges = [None, 1.0, 2.0, None]
    np.testing.assert_array_equal(bin_index(edges, np.array([-5, 0.99, 1.0, 1.5, 2.0, 99])), [0, 0, 1, 1, 2, 2])
    values = np.random.default_rng(1).normal(size=10_000)
    prof = numeric_profile(values)
    assert len(prof["edges"]) == 11 and prof["edges"][0] is None and prof["edges"][-1] is None
    assert prof["freqs"] == pytest.approx([0.1] * 10, abs=0.002)
    assert categorical_profile(np.array(["a", "b", "a", "a"], dtype=object)) == {"a": 0.75, "b": 0.25}
    sp = score_profile(np.array([0.0, 0.04, 0.5, 1.0]))
    assert len(sp["edges"]) == 21 and sp["freqs"][0] == 0.5 and sp["freqs"][-1] == 0.25
    full = build_profile({"x": values, "c": np.array(["a"] * 10_000, dtype=object)}, numeric=["x"],
                         categorical=["c"], scores=np.full(10_000, 0.5), metrics={"auc": 0.9})
    assert json.loads(json.dumps(full, allow_nan=False))["auc"] == 0.9
    assert set(full) >= {"features", "categoricals", "score", "auc"}


def test_import_is_light_and_does_not_touch_composition_root() -> None:
    code = ("import sys, models, models.registry, models.demo_data, models.base;"
            "bad = [m for m in ('streamscore', 'torch', 'onnxruntime') if m in sys.modules];"
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
