"""The ground-truth join (pure): label before prediction, duplicates, orphans, replays, closing."""

from __future__ import annotations

import json
from collections.abc import Awaitable
from typing import Any

import numpy as np
import pytest

from monitoring import quality
from monitoring.truth_core import JoinCore, Label, Prediction, QualityCore, write
from monitoring.windows import WindowSpec

W = 1000


def _core() -> JoinCore:
    return JoinCore(windows=WindowSpec(size=W), horizon_ms=10 * W)


def _pred(eid: str, score: float, variant: str = "primary") -> Prediction:
    return Prediction(event_id=eid, model="m", version="1", variant=variant, score=score, decision=score >= 0.5,
                      event_time=0)


class Feed:
    """The join and the quality stage over dict stores (a Faust table is a changelog-backed dict)."""

    def __init__(self) -> None:
        self.core, self.store, self.off = _core(), {}, 0
        self.quality = QualityCore(windows=WindowSpec(size=W), sources=1)
        self.qstore: dict[str, Any] = {}
        self.results: list[dict[str, Any]] = []

    def quality_windows(self) -> list[str]:
        """Open windows and the row keys left in the quality store."""
        return [*self.qstore["q|0"]["windows"], *(k for k in self.qstore if k.startswith("r|"))]

    @property
    def counts(self) -> dict[str, int]:
        return dict(JoinCore.meta(self.store, 0)["counts"])

    def _ops(self, ops: list[dict[str, Any]]) -> None:
        for op in ops + ops:            # every operation twice: they are idempotent
            update, res = self.quality.apply(self.qstore, 0, 0, op)
            write(self.qstore, update)
            self.results += res

    def pred(self, p: Prediction) -> None:
        self.off += 1
        out = self.core.apply_prediction(self.store, 0, "p", self.off, p)
        assert out is not None
        self._ops(out.ops)
        write(self.store, out)

    def label(self, eid: str, y: bool, t: int) -> None:
        self.off += 1
        out = self.core.apply_label(self.store, 0, "l", self.off, Label(eid, y, t))
        assert out is not None
        self._ops(out.ops)
        write(self.store, out)


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
    assert f.counts["duplicates"] == 1 and f.counts["orphans"] == 0
    by_variant = {r["variant"]: r for r in f.results}
    m = by_variant["primary"]["metrics"]
    want = quality.binary_quality(np.array([True, False, False]), np.array([0.9, 0.3, 0.6]),
                                  np.array([True, False, True]))
    assert {k: v for k, v in m.items() if not k.startswith("est_")} == want
    assert all(np.isnan(m[k]) for k in ("est_precision", "est_recall", "est_accuracy"))   # no earlier window
    assert by_variant["shadow"]["metrics"]["count"] == 1
    f.label("a", False, 3 * W + 1)          # duplicate of a closed window: counted, dropped
    assert f.counts["duplicates"] == 2 and f.quality_windows() == []
    f.label("y", False, 12 * W)             # the horizon passes "zz": orphaned
    assert f.counts["orphans"] == 1


def test_replay_changes_nothing() -> None:
    core, store = _core(), {}
    first = core.apply_prediction(store, 0, "p", 5, _pred("a", 0.9))
    assert first is not None
    write(store, first)
    assert core.apply_prediction(store, 0, "p", 5, _pred("a", 0.1)) is None
    out = core.apply_label(store, 0, "l", 0, Label("a", True, 1))
    assert out is not None
    write(store, out)
    assert core.apply_label(store, 0, "l", 0, Label("a", True, 1)) is None


def test_prediction_after_its_window_closed_is_late() -> None:
    f = Feed()
    f.label("a", True, 10)
    f.label("b", True, 3 * W)
    f.pred(_pred("a", 0.9))
    assert f.counts["late"] == 1


def test_quality_waits_for_every_source_watermark() -> None:
    q, store = QualityCore(windows=WindowSpec(size=W), sources=2), {}
    res = []
    for src, op in [(0, {"op": "set", "key": "m|1|primary", "start": 0, "eid": "a", "row": [0.9, True, True]}),
                    (0, {"op": "wm", "wm": 5 * W}), (1, {"op": "wm", "wm": W})]:
        assert res == []
        update, res = q.apply(store, 0, src, op)
        write(store, update)
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
    store: dict[str, Any] = {}
    fired = []
    for w, good in enumerate([True, False, False, False, True]):
        rows = [(0.9, True), (0.1, False)] if good else [(0.1, True), (0.9, False)]
        for i, (s, y) in enumerate(rows):
            update, _ = q.apply(store, 0, 0, {"op": "set", "key": "m|1|canary", "start": w * W,
                                              "eid": f"{w}-{i}", "row": [s, y, s >= 0.5]})
            write(store, update)
        update, res = q.apply(store, 0, 0, {"op": "wm", "wm": (w + 1) * W})
        write(store, update)
        fired += [(w, a["state"], a["feature"]) for r in res for a in r["alerts"]]
    assert fired == [(2, "raised", "quality:canary:auc"), (4, "cleared", "quality:canary:auc")]


class Changelog(dict[str, Any]):
    """A dict store logging every write in order, JSON-encoded, as a Faust table's changelog does."""

    def __init__(self, log: list[tuple[str, str | None]] | None = None) -> None:
        super().__init__()
        self.log: list[tuple[str, str | None]] = []
        for key, value in log or []:
            if value is None:
                self.pop(key, None)
            else:
                self[key] = json.loads(value)

    def __setitem__(self, key: str, value: Any) -> None:
        self.log.append((key, json.dumps(value)))
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self.log.append((key, None))
        super().__delitem__(key)

    def take_writes(self) -> list[Awaitable[object]]:
        """Every write is on the log at once (a delivered changelog)."""
        return []


def _records(seed: int) -> list[tuple[str, int, Prediction | Label]]:
    """Predictions and labels interleaved: labels first or after, 20% twice, some never, orphans."""
    rng = np.random.default_rng(seed)
    recs: list[tuple[str, int, Prediction | Label]] = []
    for i in range(40):
        score = float(rng.random())
        recs.append(("p", int(rng.integers(0, 10_000)), _pred(f"e{i}", score)))
        recs.append(("p", int(rng.integers(0, 10_000)), _pred(f"e{i}", 1 - score, "shadow")))
        for _ in range(int(rng.random() < 0.9) + int(rng.random() < 0.2)):
            recs.append(("l", int(rng.integers(0, 10_000)), Label(f"e{i}", bool(rng.random() < 0.4),
                                                                   int(rng.integers(0, 6 * W)))))
    recs += [("l", int(rng.integers(0, 10_000)), Label(f"orphan{j}", True, j * W)) for j in range(3)]
    recs.sort(key=lambda r: r[1])
    return [*recs, ("l", 10_000, Label("end", False, 40 * W))]


def test_a_crash_after_any_changelog_prefix_ends_with_the_same_windows() -> None:
    """Restore the join store from every prefix of its changelog, replay from a committed offset at or
    before the last fully written record: the windows and the counts equal an uninterrupted run's."""
    spec = WindowSpec(size=W, lateness=6 * W)
    core, quality = JoinCore(windows=spec, horizon_ms=10 * W), QualityCore(windows=spec, sources=1)
    recs = _records(seed=11)

    def run(store: Changelog, start: int, stop: int | None = None) -> tuple[list[list[dict[str, Any]]], list[int]]:
        ops, ends = [], []
        for off, (kind, _t, rec) in list(enumerate(recs))[start:stop]:
            out = (core.apply_prediction(store, 0, "p", off, rec) if isinstance(rec, Prediction)
                   else core.apply_label(store, 0, "l", off, rec))
            ops.append(out.ops if out is not None else [])
            if out is not None:
                write(store, out)
            ends.append(len(store.log))
        return ops, ends

    def windows(ops: list[list[dict[str, Any]]]) -> dict[tuple[str, int], str]:
        qstore: dict[str, Any] = {}
        out = {}
        for op in [o for batch in ops for o in batch]:
            update, res = quality.apply(qstore, 0, 0, op)
            write(qstore, update)
            out |= {(("est:" if r.get("estimate") else "") + r["variant"], r["window_start"]):
                    json.dumps(r.get("metrics", r), sort_keys=True) for r in res}   # live estimates: the whole result
        return out

    full = Changelog()
    ops, ends = run(full, 0)
    want, want_counts = windows(ops), JoinCore.meta(full, 0)["counts"]
    assert len(want) == 12 and want_counts["duplicates"] > 0 and want_counts["orphans"] == 3
    assert want_counts["unlabelled"] > 0 and want_counts["late"] == 0
    for cut in range(len(full.log) + 1):
        done = sum(1 for e in ends if e <= cut)              # records whose writes all reached the changelog
        crashed = min(done, len(recs) - 1)                  # the record being written (its ops were sent)
        for committed in {max(done - 3, 0), done}:
            store = Changelog(full.log[:cut])
            again, _ = run(store, committed)
            assert windows(ops[:crashed + 1] + again) == want, (cut, committed)
            assert JoinCore.meta(store, 0)["counts"] == want_counts, (cut, committed)


def test_the_quality_stage_restored_from_any_changelog_prefix_ends_with_the_same_results() -> None:
    """Row operations re-read from a committed offset onto the quality store restored from every prefix
    of its changelog: the results (latest per window, as in Redis) equal an uninterrupted run's."""
    spec = WindowSpec(size=W, lateness=6 * W)
    join, quality = JoinCore(windows=spec, horizon_ms=10 * W), QualityCore(windows=spec, sources=1)
    jstore: dict[str, Any] = {}
    ops: list[dict[str, Any]] = []
    for off, (_kind, _t, rec) in enumerate(_records(seed=5)):
        out = (join.apply_prediction(jstore, 0, "p", off, rec) if isinstance(rec, Prediction)
               else join.apply_label(jstore, 0, "l", off, rec))
        assert out is not None
        ops += out.ops
        write(jstore, out)

    def run(store: Changelog, todo: list[dict[str, Any]]) -> tuple[list[dict[str, str]], list[int]]:
        results, ends = [], []
        for op in todo:
            update, res = quality.apply(store, 0, 0, op)
            results.append({f"{r['variant']}|{r['window_start']}": json.dumps(r, sort_keys=True) for r in res})
            write(store, update)
            ends.append(len(store.log))
        return results, ends

    full = Changelog()
    results, ends = run(full, ops)
    want = {k: v for r in results for k, v in r.items()}
    assert len(want) == 12 and not [k for k in full if k.startswith("r|")]
    for cut in range(len(full.log) + 1):
        done = sum(1 for e in ends if e <= cut)
        published = {k: v for r in results[:done + 1] for k, v in r.items()}   # Redis is written first
        for committed in {max(done - 3, 0), done}:
            store = Changelog(full.log[:cut])
            again, _ = run(store, ops[committed:])
            assert published | {k: v for r in again for k, v in r.items()} == want, (cut, committed)
            assert not [k for k in store if k.startswith("r|")], (cut, committed)


def test_join_handler_delivers_a_records_operations_after_storing_them() -> None:
    """State first, naming the operations (``outbox``), then their delivery: a crash in between
    sends the stored operations again; none is sent that the state does not hold."""
    import asyncio
    from collections.abc import Mapping, Sequence

    from prometheus_client import CollectorRegistry

    from monitoring.monitor_metrics import MonitorMetrics
    from monitoring.truth_app import GroundTruthConfig, JoinHandler, LabelsConfig, RecordDecoder

    cfg = GroundTruthConfig(name="t", predictions=["preds"], labels=LabelsConfig(topic="labels"), window_ms=W)
    table = Changelog()
    sent: list[tuple[int, str, int]] = []      # (table writes so far, op, quality partition)

    async def send(ops: Sequence[tuple[Mapping[str, Any], int]]) -> None:
        sent.extend((len(table.log), op["op"], qp) for op, qp in ops)

    class Sink:
        def write_label_counts(self, pipeline: str, partition: int, counts: Mapping[str, int]) -> None:
            pass

    async def retry(fn: Any) -> None:
        fn()

    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry)
    h = JoinHandler(cfg, _core(), table, Sink(), metrics,  # type: ignore[arg-type]
                    RecordDecoder(None), retry, send, quality_parts=3)
    pred = {"event_id": "a", "model": "m", "version": "1", "variant": "primary", "score": 0.9, "decision": True,
            "event_time": 0}

    async def feed() -> None:
        await h.handle("preds", 0, 0, json.dumps(pred).encode(), 0)
        await h.handle("labels", 0, 0, json.dumps({"event_id": "a", "label": True, "label_time": 5}).encode(), 0)
        await h.handle("labels", 0, 0, json.dumps({"event_id": "a", "label": False, "label_time": 5}).encode(), 0)

    asyncio.run(feed())
    # the prediction's writes: meta, event, its event-time window's counts; then they are sent (est)
    assert [(n, op) for n, op, _qp in sent if op == "est"] == [(3, "est")]
    assert [(n, op) for n, op, _qp in sent if op == "set"] == [(5, "set")]     # after the label's writes
    assert [op["op"] for op in json.loads(table.log[3][1] or "{}")["outbox"]] == ["set", "wm"]
    assert sorted(qp for _n, op, qp in sent if op == "wm") == [0, 1, 2]         # the watermark to every partition
    assert registry.get_sample_value("streamscore_monitor_replayed_records_total") == 1   # the third: a replay


async def _settle(table: Any) -> None:
    """Deliver a pending table's writes as they come (a test's changelog)."""
    import asyncio

    for _ in range(20):
        await asyncio.sleep(0.01)
        for f in table.sent:
            if not f.done():
                f.set_result(None)


def test_truth_handlers_return_only_once_their_changelog_writes_are_delivered() -> None:
    """A record is acknowledged when its handler returns: not before its state is on the changelog,
    and a failed changelog write is repeated, deletes included."""
    import asyncio
    from collections.abc import Mapping, Sequence

    from prometheus_client import CollectorRegistry

    from monitoring.monitor_metrics import MonitorMetrics
    from monitoring.truth_app import GroundTruthConfig, JoinHandler, LabelsConfig, QualityHandler, RecordDecoder

    class Pending(Changelog):
        """Each write's delivery is a future the test settles."""

        def __init__(self) -> None:
            super().__init__()
            self.futs: list[asyncio.Future[object]] = []     # not yet taken
            self.sent: list[asyncio.Future[object]] = []     # all of them

        def _sent(self) -> None:
            self.futs.append(asyncio.get_running_loop().create_future())
            self.sent.append(self.futs[-1])

        def __setitem__(self, key: str, value: Any) -> None:
            super().__setitem__(key, value)
            self._sent()

        def __delitem__(self, key: str) -> None:
            super().__delitem__(key)
            self._sent()

        def take_writes(self) -> list[Awaitable[object]]:
            futs, self.futs = self.futs, []
            return list(futs)

    cfg = GroundTruthConfig(name="t", predictions=["preds"], labels=LabelsConfig(topic="labels"), window_ms=W)

    async def send(ops: Sequence[tuple[Mapping[str, Any], int]]) -> None:
        pass

    class Sink:
        def write_label_counts(self, pipeline: str, partition: int, counts: Mapping[str, int]) -> None:
            pass

        def write_quality(self, pipeline: str, result: Mapping[str, Any]) -> None:
            pass

    async def retry(fn: Any) -> None:
        fn()

    metrics = MonitorMetrics(CollectorRegistry())
    jtable, qtable = Pending(), Pending()
    join = JoinHandler(cfg, _core(), jtable, Sink(), metrics,  # type: ignore[arg-type]
                       RecordDecoder(None), retry, send, quality_parts=1)
    qual = QualityHandler(cfg, QualityCore(windows=WindowSpec(W), sources=1), qtable, Sink(),  # type: ignore[arg-type]
                          metrics, retry)
    pred = {"event_id": "a", "model": "m", "version": "1", "variant": "primary", "score": 0.9, "decision": True,
            "event_time": 0}

    async def run() -> None:
        task = asyncio.ensure_future(join.handle("preds", 0, 0, json.dumps(pred).encode(), 0))
        await asyncio.sleep(0.01)
        assert not task.done() and jtable.sent                  # waiting for its changelog writes
        for f in jtable.sent:
            f.set_result(None)
        await asyncio.wait_for(task, 1)
        set_op = {"op": "set", "key": "m|1|primary", "start": 0, "eid": "a", "row": [0.9, True, True], "src": 0}
        task = asyncio.ensure_future(qual.handle(0, 7, json.dumps(set_op).encode()))
        await asyncio.sleep(0.01)
        assert not task.done()
        logged = len(qtable.log)
        qtable.sent[0].set_exception(RuntimeError("broker down"))
        await asyncio.sleep(0.5)                                # the retry's 0.2 s backoff
        assert len(qtable.log) > logged and not task.done()     # written again, waiting again
        for f in qtable.sent[1:]:
            f.set_result(None)
        await asyncio.wait_for(task, 1)
        assert qtable.log[-1] == ("o|0", "7")                   # the operation's offset, written last
        del_op = {**set_op, "op": "del"}
        await asyncio.wait_for(asyncio.gather(qual.handle(0, 8, json.dumps(del_op).encode()),
                                              _settle(qtable)), 1)
        assert qtable.log[-2:] == [("r|0|m|1|primary|0|a", None), ("o|0", "8")]   # after the delete, not before

    asyncio.run(run())


@pytest.mark.parametrize("kind", ["classes", "value"])
def test_classes_and_value_heads_joined_and_judged_like_sklearn(kind: str) -> None:
    """Prediction and label records of a classes or value head through the decoders, the join and the
    quality stage: one window's accuracy + macro-F1 or MAE + RMSE equal scikit-learn's."""
    from sklearn import metrics as skm

    from monitoring.truth_app import LabelsConfig, to_label, to_prediction

    rng = np.random.default_rng(8)
    spec = WindowSpec(size=W)
    join = JoinCore(windows=spec, horizon_ms=10 * W)
    qual = QualityCore(windows=spec, sources=1, kind=kind)  # type: ignore[arg-type]
    store: dict[str, Any] = {}
    qstore: dict[str, Any] = {}
    results: list[dict[str, Any]] = []
    cfg = LabelsConfig(topic="l")
    truth: dict[str, Any] = {}
    guess: dict[str, Any] = {}

    def run(out: Any) -> None:
        assert out is not None
        for op in out.ops:
            update, res = qual.apply(qstore, 0, 0, op)
            results.extend(res)
            write(qstore, update)
        write(store, out)

    for i in range(120):
        eid = f"e{i}"
        if kind == "classes":
            truth[eid] = ["a", "b", "c"][int(rng.integers(0, 3))]
            guess[eid] = truth[eid] if rng.random() < 0.6 else ["a", "b", "c", "d"][int(rng.integers(0, 4))]
            pred = {"label": guess[eid], "probability": 0.5, "scores": {}}
        else:
            truth[eid] = float(rng.normal(10, 2))
            guess[eid] = truth[eid] + float(rng.normal(0, 1))
            pred = {"value": guess[eid]}
        p = to_prediction({"event_id": eid, "model": "m", "version": "1", "variant": "primary", "event_time": i,
                           **pred}, kind, None)  # type: ignore[arg-type]
        assert p is not None
        assert to_prediction({"event_id": eid, "score": 0.1, "decision": True}, kind) is None  # type: ignore[arg-type]
        run(join.apply_prediction(store, 0, "p", i, p))
        run(join.apply_label(store, 0, "l", i, to_label({"event_id": eid, "label": truth[eid], "label_time": i},
                                                         cfg, 0, kind)))  # type: ignore[arg-type]
    run(join.apply_label(store, 0, "l", 999, Label("end", "a" if kind == "classes" else 0.0, 3 * W)))
    [res] = results
    m, ids = res["metrics"], sorted(truth)
    y, p_ = [truth[e] for e in ids], [guess[e] for e in ids]
    if kind == "classes":
        assert abs(m["accuracy"] - skm.accuracy_score(y, p_)) < 1e-12
        assert abs(m["macro_f1"] - skm.f1_score(y, p_, average="macro", zero_division=0)) < 1e-12
    else:
        assert abs(m["mae"] - skm.mean_absolute_error(y, p_)) < 1e-9
        assert abs(m["rmse"] - np.sqrt(skm.mean_squared_error(y, p_))) < 1e-9
    assert res["cumulative"] == m and "pairs" not in res and m["count"] == 120


def test_after_recovery_each_stage_resumes_after_what_its_state_applied() -> None:
    """The offsets committed when a recovery completes: the join's per source topic and partition
    (from its meta), the quality stage's per rows partition (its ``o|`` key); nothing for a
    partition or topic the state applied nothing of."""
    from monitoring.truth_app import quality_resume

    core, store = _core(), Changelog()
    for topic, off, part, rec in (("p", 4, 0, _pred("a", 0.9)), ("l", 9, 0, Label("a", True, 5)),
                                  ("p", 2, 1, _pred("b", 0.1))):
        out = (core.apply_prediction(store, part, topic, off, rec) if isinstance(rec, Prediction)
               else core.apply_label(store, part, topic, off, rec))
        assert out is not None
        write(store, out)
    assert JoinCore.resume(store, [0, 1, 2]) == {("p", 0): 5, ("l", 0): 10, ("p", 1): 3}
    assert quality_resume({"o|0": 11, "q|0": {}}, [0, 1], "rows") == {("rows", 0): 12}


def _join_records(seed: int) -> list[tuple[str, int, int, bytes, int]]:
    """``_records`` as the join agent's records over 2 partitions (event ``e<i>`` in partition i % 2),
    offsets per topic and partition, then a far label per partition that closes every window."""
    recs, offsets = [], {}
    for topic, _t, r in _records(seed):
        if r.event_id == "end":
            continue
        part = int(r.event_id.lstrip("eorphan")) % 2
        off = offsets[(topic, part)] = offsets.get((topic, part), -1) + 1
        body = ({"event_id": r.event_id, "label": r.y, "label_time": r.time} if isinstance(r, Label) else
                {"event_id": r.event_id, "model": r.model, "version": r.version, "variant": r.variant,
                 "score": r.score, "decision": r.decision, "event_time": r.event_time})
        recs.append((topic, part, off, json.dumps(body).encode(), 0))
    for part in (0, 1):
        body = {"event_id": f"end{part}", "label": False, "label_time": 40 * W}
        recs.append(("l", part, offsets[("l", part)] + 1, json.dumps(body).encode(), 0))
    return recs


def _shuffled(recs: list[Any], rng: np.random.Generator) -> list[Any]:
    """Another order across topics and partitions (each one's own order kept), the closing labels last."""
    lanes: dict[tuple[str, int], list[Any]] = {}
    closing = [r for r in recs if b'"end' in r[3]]
    for r in recs:
        if r not in closing:
            lanes.setdefault((r[0], r[1]), []).append(r)
    out = []
    while lanes:
        lane = list(lanes)[int(rng.integers(0, len(lanes)))]
        out.append(lanes[lane].pop(0))
        if not lanes[lane]:
            del lanes[lane]
    return out + closing


def _batches(recs: list[Any], rng: np.random.Generator, most: int = 9) -> list[list[Any]]:
    out, i = [], 0
    while i < len(recs):
        n = int(rng.integers(1, most + 1))
        out.append(recs[i:i + n])
        i += n
    return out


def test_a_crash_at_any_prefix_of_a_batchs_join_writes_neither_loses_nor_double_counts() -> None:
    """``JoinHandler.handle_batch`` over random batches: restore its table from every prefix of its
    changelog (its operations delivered up to the crash: those sent before, and with a crash right
    after a batch's writes, with or without that batch's), restart from the state's offsets or a
    committed offset before them, and replay the rest in random batches and ANOTHER order across
    topics (as Kafka may): the quality windows and the counters equal an uninterrupted run's."""
    import asyncio
    from collections.abc import Mapping, Sequence

    from prometheus_client import CollectorRegistry

    from monitoring.monitor_metrics import MonitorMetrics
    from monitoring.truth_app import GroundTruthConfig, JoinHandler, LabelsConfig, RecordDecoder

    spec = WindowSpec(size=W, lateness=6 * W)
    cfg = GroundTruthConfig(name="t", predictions=["p"], labels=LabelsConfig(topic="l"), window_ms=W,
                            lateness_ms=6 * W)
    recs, rng = _join_records(seed=11), np.random.default_rng(4)

    class Sink:
        def write_label_counts(self, pipeline: str, partition: int, counts: Mapping[str, int]) -> None:
            pass

    async def retry(fn: Any) -> None:
        fn()

    def handler(table: Changelog, sent: list[tuple[int, dict[str, Any]]]) -> JoinHandler:
        async def send(ops: Sequence[tuple[Mapping[str, Any], int]]) -> None:
            sent.extend((len(table.log), dict(op)) for op, qp in ops if op["op"] != "wm" or qp == 0)   # wm: once
        return JoinHandler(cfg, JoinCore(windows=spec, horizon_ms=10 * W), table, Sink(),  # type: ignore[arg-type]
                           MonitorMetrics(CollectorRegistry()), RecordDecoder(None), retry, send, quality_parts=2)

    def feed(h: JoinHandler, batches: list[list[Any]]) -> None:
        async def go() -> None:
            await h.recovered([0, 1])                  # as the table's recovery hook does
            for b in batches:
                await h.handle_batch(b)
        asyncio.run(go())

    def windows(ops: list[dict[str, Any]]) -> dict[tuple[str, int], str]:
        quality, qstore, out = QualityCore(windows=spec, sources=2), {}, {}   # type: ignore[var-annotated]
        for op in ops:
            update, res = quality.apply(qstore, 0, int(op["src"]), op)
            write(qstore, update)
            out |= {(("est:" if r.get("estimate") else "") + r["variant"], r["window_start"]):
                    json.dumps(r.get("metrics", r), sort_keys=True) for r in res}   # live estimates: the whole result
        return out

    def counts(table: Changelog) -> list[dict[str, int]]:   # "joined" counts joins, which the order changes
        return [{k: v for k, v in JoinCore.meta(table, p)["counts"].items() if k != "joined"} for p in (0, 1)]

    full, sent = Changelog(), []    # type: ignore[var-annotated]
    feed(handler(full, sent), _batches(recs, rng))
    want, want_counts = windows([op for _n, op in sent]), counts(full)
    assert len([k for k in want if not k[0].startswith("est:")]) == 12
    assert len([k for k in want if k[0].startswith("est:")]) > 0, "the predictions' live estimates"
    assert want_counts[0]["duplicates"] + want_counts[1]["duplicates"] > 0
    assert sum(c["orphans"] for c in want_counts) == 3 and sum(c["unlabelled"] for c in want_counts) > 0
    assert all(c["late"] == 0 for c in want_counts)
    sends_at = sorted({n for n, _op in sent})
    checked = 0
    for cut in range(len(full.log) + 1):
        for with_last in ([False, True] if cut in sends_at else [False]):
            delivered = [op for n, op in sent if n < cut or (with_last and n == cut)]
            store = Changelog(full.log[:cut])
            resume = JoinCore.resume(store, [0, 1])
            for back in (0, 3):
                todo = [r for r in recs if r[2] >= resume.get((r[0], r[1]), 0) - back]
                again: list[tuple[int, dict[str, Any]]] = []
                restored = Changelog(full.log[:cut])
                feed(handler(restored, again), _batches(_shuffled(todo, rng), rng))
                got = windows(delivered + [op for _n, op in again])
                assert got == want, (cut, with_last, back)
                assert counts(restored) == want_counts, (cut, with_last, back)
                checked += 1
    assert checked > 2 * len(full.log)


def test_a_crash_at_any_prefix_of_a_batchs_quality_writes_ends_with_the_same_results() -> None:
    """``QualityHandler.handle_batch`` over random batches of row operations: restore its table from
    every prefix of its changelog, re-read from where the state says (or 3 before) in other batches:
    the results in Redis (written before each batch's state) equal an uninterrupted run's, and no
    row is left behind."""
    import asyncio
    from collections.abc import Mapping

    from prometheus_client import CollectorRegistry

    from monitoring.monitor_metrics import MonitorMetrics
    from monitoring.truth_app import GroundTruthConfig, LabelsConfig, QualityHandler, quality_resume

    spec = WindowSpec(size=W, lateness=6 * W)
    cfg = GroundTruthConfig(name="t", predictions=["p"], labels=LabelsConfig(topic="l"), window_ms=W,
                            lateness_ms=6 * W)
    join, jstore, ops = JoinCore(windows=spec, horizon_ms=10 * W), {}, []   # type: ignore[var-annotated]
    for off, (_kind, _t, rec) in enumerate(_records(seed=5)):
        out = (join.apply_prediction(jstore, 0, "p", off, rec) if isinstance(rec, Prediction)
               else join.apply_label(jstore, 0, "l", off, rec))
        assert out is not None
        ops += [json.dumps({**op, "src": 0}).encode() for op in out.ops]
        write(jstore, out)
    rng = np.random.default_rng(9)

    class Sink:
        def __init__(self, table: Changelog) -> None:
            self.table, self.written = table, []   # type: ignore[var-annotated]

        def write_quality(self, pipeline: str, result: Mapping[str, Any], *, keep_pairs: int = 168) -> None:
            self.written.append((len(self.table.log), f"{result['variant']}|{result['window_start']}",
                                 json.dumps(result, sort_keys=True)))

    async def retry(fn: Any) -> None:
        fn()

    def feed(table: Changelog, start: int) -> Sink:
        sink = Sink(table)
        h = QualityHandler(cfg, QualityCore(windows=spec, sources=1), table, sink,  # type: ignore[arg-type]
                           MonitorMetrics(CollectorRegistry()), retry)

        async def go() -> None:
            for b in _batches(list(enumerate(ops))[start:], rng, most=12):
                await h.handle_batch([(0, off, op) for off, op in b])
        asyncio.run(go())
        return sink

    full = Changelog()
    written = feed(full, 0).written
    want = {k: v for _n, k, v in written}
    assert len(want) == 12 and not [k for k in full if k.startswith("r|")]
    for cut in range(len(full.log) + 1):
        published = {k: v for n, k, v in written if n <= cut}     # Redis is written before the batch's state
        resume = quality_resume(Changelog(full.log[:cut]), [0], "rows").get(("rows", 0), 0)
        for back in {resume, max(resume - 3, 0)}:
            store = Changelog(full.log[:cut])
            again = feed(store, back).written
            assert published | {k: v for _n, k, v in again} == want, (cut, back)
            assert not [k for k in store if k.startswith("r|")], (cut, back)


# -- the live estimate: CBPE over every prediction of an event-time window, before its labels -----------------

def _timed(eid: str, score: float, t: int, version: str = "1") -> Prediction:
    return Prediction(event_id=eid, model="m", version=version, variant="primary", score=score,
                      decision=score >= 0.5, event_time=t)


def _est_ops(core: JoinCore, store: dict[str, Any], part: int, preds: list[Prediction], first: int = 0
             ) -> list[dict[str, Any]]:
    """One batch of predictions through the join (as ``JoinHandler.handle_batch`` does): its est operations."""
    from monitoring.truth_core import Staged

    staged = Staged(store)
    for off, p in enumerate(preds, start=first):
        out = core.apply_prediction(staged, part, "p", off, p)
        assert out is not None
        write(staged, out)
    update = JoinCore.batch_update(staged, part, [])
    assert update is not None
    write(store, update)
    return [op for op in update.ops if op["op"] == "est"]


def test_every_prediction_of_a_score_head_counts_in_its_event_time_window_labelled_or_not() -> None:
    core, store = _core(), {}      # type: ignore[var-annotated]
    preds = [_timed("a", 0.9, 10), _timed("b", 0.1, 20), _timed("c", 0.9004, 30), _timed("d", 0.2, W + 5)]
    ops = _est_ops(core, store, 0, preds)
    by_start = {op["start"]: op for op in ops}
    assert sorted(by_start) == [0, W] and all(op["key"] == "m|1|primary" for op in ops)
    assert by_start[0]["hist"] == {"yes": {"900": 2}, "no": {"100": 1}}      # the score bins, by decision
    assert by_start[W]["hist"] == {"yes": {}, "no": {"200": 1}}
    # a replayed batch (offsets already applied) counts nothing again
    assert JoinCore.batch_update(_staged_replay(core, store, preds), 0, []) is None
    # the next batch sends only the windows it changed, whole
    [op] = _est_ops(core, store, 0, [_timed("e", 0.95, 40)], first=len(preds))
    assert op["start"] == 0 and op["hist"] == {"yes": {"900": 2, "950": 1}, "no": {"100": 1}}


def _staged_replay(core: JoinCore, store: dict[str, Any], preds: list[Prediction]) -> Any:
    from monitoring.truth_core import Staged

    staged = Staged(store)
    for off, p in enumerate(preds):
        assert core.apply_prediction(staged, 0, "p", off, p) is None
    return staged


def test_a_partitions_event_time_windows_past_the_horizon_are_dropped_when_a_new_one_starts() -> None:
    core, store = _core(), {}      # type: ignore[var-annotated]     # horizon 10 windows
    _est_ops(core, store, 0, [_timed("a", 0.9, 5)])
    _est_ops(core, store, 0, [_timed("b", 0.9, 5 * W)], first=1)
    assert {k for k in store if k.startswith("h|")} == {"h|0|m|1|primary|0", f"h|0|m|1|primary|{5 * W}"}
    _est_ops(core, store, 0, [_timed("c", 0.9, 11 * W + 5)], first=2)
    assert {k for k in store if k.startswith("h|")} == {f"h|0|m|1|primary|{5 * W}", f"h|0|m|1|primary|{11 * W}"}
    assert _est_ops(core, store, 0, [_timed("d", 0.9, 5)], first=3) == [], "a prediction past the horizon"


def _calibrate(q: QualityCore, store: dict[str, Any], rows: list[tuple[float, bool]], sources: int
               ) -> list[dict[str, Any]]:
    """Close label-time window 0 of m|1|primary with ``rows`` (score, label); returns the results."""
    out = []
    for i, (score, y) in enumerate(rows):
        update, res = q.apply(store, 0, 0, {"op": "set", "key": "m|1|primary", "start": 0, "eid": f"c{i}",
                                            "row": [score, y, score >= 0.5]})
        write(store, update)
        out += res
    for src in range(sources):
        update, res = q.apply(store, 0, src, {"op": "wm", "wm": 5 * W})
        write(store, update)
        out += res
    return out


def test_the_live_estimate_is_cbpe_over_the_windows_counts_from_every_source_calibrated_on_closed_windows() -> None:
    from monitoring import cbpe

    rng = np.random.default_rng(3)
    q, store = QualityCore(windows=WindowSpec(size=W), sources=2), {}     # type: ignore[var-annotated]
    ref = [(float(s), bool(rng.random() < s)) for s in rng.random(400)]
    _calibrate(q, store, ref, sources=2)
    # a later event-time window, unlabelled: predictions split over two join partitions
    scores = rng.random(300)
    core, jstores = _core(), [{}, {}]     # type: ignore[var-annotated]
    results = []
    for src in (0, 1):
        mine = [_timed(f"u{i}", float(s), 20 * W + i) for i, s in enumerate(scores) if i % 2 == src]
        for op in _est_ops(core, jstores[src], src, mine) * 2:        # each sent twice: idempotent
            update, res = q.apply(store, 0, src, op)
            write(store, update)
            results += res
    est = [r for r in results if r.get("estimate")]
    assert len(est) == 4 and est[-1] == est[-2], "an operation sent again changes nothing"
    last = est[-1]
    ys, ss = np.array([y for _, y in ref]), np.array([s for s, _ in ref])
    totals = quality.add_totals(quality.empty_totals(), ys, ss, ss >= 0.5)
    calib = cbpe.calibration(totals["hist_pos"], totals["hist_neg"])
    want = cbpe.estimate(scores, scores >= 0.5, calib)
    assert last["count"] == 300 and last["window_start"] == 20 * W and last["calibrated_on"] == 400
    for k, v in want.items():
        assert abs(last[k] - v) <= 1e-12, (k, last[k], v)
    assert est[0]["count"] == len(scores[::2]), "the first source's counts alone before the second's arrive"


def test_a_closing_window_estimates_its_versions_event_time_windows_again() -> None:
    q, store = QualityCore(windows=WindowSpec(size=W), sources=1), {}    # type: ignore[var-annotated]
    core, jstore = _core(), {}    # type: ignore[var-annotated]
    [op] = _est_ops(core, jstore, 0, [_timed(f"u{i}", i / 10, 20 * W) for i in range(10)])
    update, [before] = q.apply(store, 0, 0, op)
    write(store, update)
    assert before["count"] == 10 and np.isnan(before["est_accuracy"]), "no closed window yet: no calibration"
    results = _calibrate(q, store, [(0.1, False), (0.2, False), (0.8, True), (0.9, True), (0.6, False)], sources=1)
    [after] = [r for r in results if r.get("estimate")]
    assert after["window_start"] == 20 * W and after["count"] == 10 and not np.isnan(after["est_accuracy"])
    assert [r["window_start"] for r in results if not r.get("estimate")] == [0]


def test_only_the_newest_event_time_windows_keep_their_counts() -> None:
    from monitoring.truth_core import EST_KEEP

    q, store = QualityCore(windows=WindowSpec(size=W), sources=2), {}    # type: ignore[var-annotated]
    hist = {"yes": {"900": 1}, "no": {}}
    for w in range(1, EST_KEEP + 2):
        for src in (0, 1):
            update, _ = q.apply(store, 0, src, {"op": "est", "key": "m|1|primary", "start": w * W, "hist": hist})
            write(store, update)
    starts = sorted({int(k.split("|")[5]) for k in store if k.startswith("x|")})
    assert starts == [w * W for w in range(2, EST_KEEP + 2)], "the oldest window's counts are gone"
    update, res = q.apply(store, 0, 0, {"op": "est", "key": "m|1|primary", "start": W, "hist": hist})
    assert res == [] and update.put == {}, "counts of a window older than every kept one are ignored"


def test_without_a_registry_the_monitor_reads_avro_framed_with_the_bundled_schemas_ids() -> None:
    """A scorer without a schema registry writes its predictions with the bundled schemas' fixed ids (the
    demo does): the monitor reads them the same way; an id no bundled schema has is skipped, saying why."""
    import io

    import fastavro

    from monitoring.truth_app import RecordDecoder
    from schemas.errors import DecodeError
    from schemas.registry import SchemaRegistry
    from schemas.wire import frame

    reg = SchemaRegistry.default()
    sid = reg.id_for("prediction")
    rec = {"event_id": "e1", "key": "acct-1", "model": "m", "version": "1", "variant": "primary", "score": 0.25,
           "decision": False, "event_time": 5, "scored_at": 6}
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, reg.by_id(sid), rec)
    from monitoring.truth_app import to_prediction

    pred = to_prediction(RecordDecoder(None).decode(frame(sid, buf.getvalue())))
    assert pred == Prediction(event_id="e1", model="m", version="1", variant="primary", score=0.25, decision=False,
                              event_time=5)
    with pytest.raises(DecodeError, match="schema id 999, which is no bundled schema"):
        RecordDecoder(None).decode(frame(999, buf.getvalue()))
