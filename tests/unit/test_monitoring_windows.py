"""Windows, hysteresis and the monitor state machine (no services)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from models import DEMO_REGISTRY
from models.demo_data import EPOCH_MS, DriftSpec, generate
from models.registry import ModelRegistry
from monitoring.alerts import Hysteresis, step
from monitoring.monitor_core import MonitorCore
from monitoring.telemetry import TelemetryBuilder, decode_telemetry
from monitoring.windows import WindowSpec, empty_accumulator, merge
from schemas.columns import StrColumn


def test_tumbling_and_sliding_assignment() -> None:
    assert WindowSpec(100).assign(250) == [200]
    assert WindowSpec(100, slide=50).assign(260) == [200, 250]
    w = WindowSpec(100, lateness=10)
    assert not w.closable(0, 105) and w.closable(0, 110)


def test_merge_adds_counts() -> None:
    s = {"n": 10, "n_sampled": 5, "feature_counts": {"a": [1, 4]}, "categorical_counts": {"c": [2, 3]},
         "score_counts": [6, 4], "shadow": {"model": "s", "version": "1", "n_pairs": 10, "agree": 9, "diff_counts": [9, 1]}}
    acc = merge(merge(empty_accumulator(), s), s)
    assert acc["n"] == 20 and acc["batches"] == 2 and acc["features"]["a"] == [2, 8]
    assert acc["score"] == [12, 8] and acc["shadow"]["s"]["agree"] == 18 and acc["shadow"]["s"]["diff"] == [18, 2]


@pytest.mark.parametrize("k,m", [(1, 1), (2, 3), (3, 2)])
def test_hysteresis(k: int, m: int) -> None:
    rule, st = Hysteresis(k, m), {"raised": False, "bad": 0, "good": 0}
    seq = [True] * (k - 1) + [False] + [True] * k + [False] * (m - 1) + [True] + [False] * m
    transitions = []
    for drifted in seq:
        st, t = step(st, drifted, rule)
        transitions.append(t)
    assert [i for i, t in enumerate(transitions) if t == "raised"] == [2 * k - 1]
    assert [i for i, t in enumerate(transitions) if t == "cleared"] == [len(seq) - 1]


def _builder(**kw: Any) -> tuple[TelemetryBuilder, Any]:
    entry = ModelRegistry(DEMO_REGISTRY).get("fraud-mlp")
    return TelemetryBuilder(pipeline="p", model=entry.name, version=entry.version,
                            reference_profile=entry.reference_profile, feature_names=list(entry.input_spec.names),
                            threshold=entry.decision_threshold, **kw), entry


def test_telemetry_roundtrip_and_string_columns() -> None:
    tb, entry = _builder(sample=None)
    cols = generate(3000, seed=2)
    scores = np.linspace(0, 1, 3000, dtype=np.float32)
    s = tb.summarize(cols, scores, event_time_ms=cols["event_time"], shadow_scores=scores[::-1].copy())
    as_str = {**cols, **{c: StrColumn.from_list(list(cols[c]) + []) for c in ("currency", "country", "merchant_category")}}
    as_str["country"] = StrColumn.from_list(["DE", "XX", None] + list(cols["country"][3:]))
    s2 = tb.summarize(as_str, scores, event_time_ms=cols["event_time"])
    assert s2["categorical_counts"]["currency"] == s["categorical_counts"]["currency"]
    assert s2["categorical_counts"]["country"][-1] == 2  # unknown and null -> __other__
    assert sum(s["feature_counts"]["f03"]) == 3000 and s["window_ts"] == int(cols["event_time"].max())
    assert s["shadow"]["n_pairs"] == 3000
    back = decode_telemetry(tb.encode(s))
    assert back["feature_counts"] == s["feature_counts"] and back["shadow"] == s["shadow"]


def test_core_replay_is_idempotent_and_drift_alerts() -> None:
    tb, entry = _builder()
    core = MonitorCore(windows=WindowSpec(50_000), hysteresis=Hysteresis(2, 2),
                       profiles=lambda m, v: entry.reference_profile)
    drift = DriftSpec(start_at=20_000, shift={"f03": 2.0})
    records = []
    for b in range(41):
        cols = generate(1000, seed=1, start=b * 1000, drift=drift)
        records.append(tb.summarize(cols, None, event_time_ms=cols["event_time"]))
    state, results = None, []
    for off, rec in enumerate(records):
        out = core.apply(state, off, rec)
        assert out is not None
        state, res = out
        results += res
        if off == 17:
            assert core.apply(state, 17, rec) is None  # a replay changes nothing
    assert [r["window_start"] - EPOCH_MS for r in results] == [i * 50_000 for i in range(8)]
    raised = [(a["feature"], a["window_start"] - EPOCH_MS) for r in results for a in r["alerts"]]
    assert raised == [("f03", 250_000)]  # drift from window 4 (event 20,000); k = 2
    assert results[0]["features"]["f01"]["status"] == "ok"


def _shared_buffer_columns(values: dict[str, list[str | None]]) -> dict[str, StrColumn]:
    """String columns over one buffer, as the decoder makes them (each row a segment of the batch's bytes)."""
    data, at, out = bytearray(), 0, {}
    for name, rows in values.items():
        start, length = [], []
        for v in rows:
            b = b"" if v is None else v.encode()
            start.append(at)
            length.append(-1 if v is None else len(b))
            data += b
            at += len(b)
        out[name] = (start, length)
    buf = np.frombuffer(bytes(data) + b"\0" * 8, np.uint8)
    return {n: StrColumn(buf, np.array(s, np.int64), np.array(ln, np.int64)) for n, (s, ln) in out.items()}


@pytest.mark.parametrize("step_rows", [1, 3])
def test_string_categoricals_counted_together_equal_each_column_counted_alone(step_rows: int) -> None:
    tb, _ = _builder(sample=None if step_rows == 1 else 700)
    cols = generate(2100, seed=5)
    rng = np.random.default_rng(5)
    strings: dict[str, list[str | None]] = {}
    for c in ("currency", "country", "merchant_category"):
        rows: list[str | None] = [str(v) for v in cols[c]]
        # nulls, unknowns, a value of another column's categories, an empty and a long string
        for i, odd in zip(rng.choice(len(rows), 40, replace=False).tolist(),
                          [None, "XX", "grocery-and-supermarkets-long", "", "DE", "EUR"] * 7):
            rows[i] = odd
        strings[c] = rows
    shared = {**cols, **_shared_buffer_columns(strings)}
    assert shared["currency"].buf is shared["country"].buf
    together = tb.summarize(shared, np.zeros(2100, np.float32))["categorical_counts"]
    step = 1 if step_rows == 1 else 3
    from monitoring.telemetry import _sampled

    alone = {c: cat.counts(_sampled(shared[c], step), None).tolist() for c, cat in tb._cats.items()}
    assert together == alone
    assert sum(together["country"]) == len(range(0, 2100, step))
    assert tb._strings.usable and tb._strings.counts({c: shared[c] for c in strings}) is not None


def test_string_categoricals_on_separate_buffers_are_counted_column_by_column() -> None:
    tb, _ = _builder(sample=None)
    cols = generate(500, seed=6)
    own = {c: StrColumn.from_list([str(v) for v in cols[c]]) for c in ("currency", "country", "merchant_category")}
    assert tb._strings.counts(own) is None
    got = tb.summarize({**cols, **own}, np.zeros(500, np.float32))["categorical_counts"]
    assert got == {c: cat.counts(own.get(c, cols[c]), None).tolist() for c, cat in tb._cats.items()}
