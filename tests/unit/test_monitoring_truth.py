"""The ground-truth join (pure): label before prediction, duplicates, orphans, replays, closing."""

from __future__ import annotations

from typing import Any

import numpy as np

from monitoring import quality
from monitoring.truth_core import JoinCore, Label, Prediction, QualityCore
from monitoring.windows import WindowSpec

W = 1000


def _core() -> JoinCore:
    return JoinCore(windows=WindowSpec(size=W), horizon_ms=10 * W)


def _pred(eid: str, score: float, variant: str = "primary") -> Prediction:
    return Prediction(event_id=eid, model="m", version="1", variant=variant, score=score, decision=score >= 0.5,
                      event_time=0)


class Feed:
    def __init__(self) -> None:
        self.core, self.state, self.off = _core(), None, 0
        self.quality = QualityCore(windows=WindowSpec(size=W), sources=1)
        self.qstate: dict[str, Any] | None = None
        self.results: list[dict[str, Any]] = []

    def _ops(self, ops: list[dict[str, Any]]) -> None:
        for op in ops + ops:            # every operation twice: they are idempotent
            self.qstate, res = self.quality.apply(self.qstate, 0, op)
            self.results += res

    def pred(self, p: Prediction) -> None:
        self.off += 1
        out = self.core.apply_prediction(self.state, "p", self.off, p)
        assert out is not None
        self.state, ops = out
        self._ops(ops)

    def label(self, eid: str, y: bool, t: int) -> None:
        self.off += 1
        out = self.core.apply_label(self.state, "l", self.off, Label(eid, y, t))
        assert out is not None
        self.state, ops = out
        self._ops(ops)


def test_join_label_first_duplicates_last_win_and_orphans() -> None:
    f = Feed()
    f.label("a", True, 10)                  # before its prediction: waits
    f.pred(_pred("a", 0.9))
    f.pred(_pred("a", 0.8, "shadow"))
    f.pred(_pred("b", 0.3))
    f.label("b", True, 20)
    f.label("b", False, 30)                 # duplicate, window open: last wins
    f.pred(_pred("c", 0.6))
    f.label("c", False, 40)
    f.label("zz", True, 50)                 # never predicted
    f.label("x", False, 3 * W)              # closes window 0
    assert f.state is not None
    assert f.state["counts"]["duplicates"] == 1 and f.state["counts"]["orphans"] == 0
    by_variant = {r["variant"]: r for r in f.results}
    m = by_variant["primary"]["metrics"]
    want = quality.binary_quality(np.array([True, False, False]), np.array([0.9, 0.3, 0.6]),
                                  np.array([True, False, True]))
    assert m == want
    assert by_variant["shadow"]["metrics"]["count"] == 1
    f.label("a", False, 3 * W + 1)          # duplicate of a closed window: counted, dropped
    assert f.state["counts"]["duplicates"] == 2 and f.qstate is not None and f.qstate["windows"] == {}
    f.label("y", False, 12 * W)             # the horizon passes "zz": orphaned
    assert f.state["counts"]["orphans"] == 1


def test_replay_changes_nothing() -> None:
    core = _core()
    first = core.apply_prediction(None, "p", 5, _pred("a", 0.9))
    assert first is not None
    st = first[0]
    assert core.apply_prediction(st, "p", 5, _pred("a", 0.1)) is None
    out = core.apply_label(st, "l", 0, Label("a", True, 1))
    assert out is not None and core.apply_label(out[0], "l", 0, Label("a", True, 1)) is None


def test_prediction_after_its_window_closed_is_late() -> None:
    f = Feed()
    f.label("a", True, 10)
    f.label("b", True, 3 * W)
    f.pred(_pred("a", 0.9))
    assert f.state is not None and f.state["counts"]["late"] == 1


def test_quality_waits_for_every_source_watermark() -> None:
    q = QualityCore(windows=WindowSpec(size=W), sources=2)
    st, _ = q.apply(None, 0, {"op": "set", "key": "m|1|primary", "start": 0, "eid": "a", "row": [0.9, True, True]})
    st, res = q.apply(st, 0, {"op": "wm", "wm": 5 * W})
    assert res == []
    st, res = q.apply(st, 1, {"op": "wm", "wm": W})
    assert [r["metrics"]["count"] for r in res] == [1]


def test_demo_labels_follow_the_hidden_rule_with_dups_and_gaps() -> None:
    import json as _json

    from models.demo_data import generate, labels
    from streamscore.produce import label_records

    n = 4000
    recs = [_json.loads(v) for _k, v in label_records(n, seed=3, now_ms=1_000, max_delay_ms=50_000)]
    truth = dict(zip(generate(n, seed=3)["event_id"].tolist(), labels(generate(n, seed=3)).tolist()))
    ids = [r["event_id"] for r in recs]
    assert all(r["label"] == truth[r["event_id"]] for r in recs)
    assert 0.08 < 1 - len(set(ids)) / n < 0.12            # ~10% missing
    assert 0.04 < (len(ids) - len(set(ids))) / len(set(ids)) < 0.06   # ~5% twice
    assert ids != sorted(ids, key=lambda e: int(e.rsplit("-", 1)[1]))  # out of event order
    assert [r["label_time"] for r in recs] == sorted(r["label_time"] for r in recs)


def test_quality_drop_alert_after_k_bad_windows_then_clears() -> None:
    from monitoring.alerts import Hysteresis
    from monitoring.truth_core import QualityDrop

    q = QualityCore(windows=WindowSpec(size=W), sources=1,
                    drop=QualityDrop(lambda m, v: 0.95, 0.05, Hysteresis(2, 1)), clock=lambda: 1.0)
    st: dict[str, Any] | None = None
    fired = []
    for w, good in enumerate([True, False, False, False, True]):
        rows = [(0.9, True), (0.1, False)] if good else [(0.1, True), (0.9, False)]
        for i, (s, y) in enumerate(rows):
            st, _ = q.apply(st, 0, {"op": "set", "key": "m|1|canary", "start": w * W, "eid": f"{w}-{i}",
                                    "row": [s, y, s >= 0.5]})
        st, res = q.apply(st, 0, {"op": "wm", "wm": (w + 1) * W})
        fired += [(w, a["state"], a["feature"]) for r in res for a in r["alerts"]]
    assert fired == [(2, "raised", "quality:canary:auc"), (4, "cleared", "quality:canary:auc")]
