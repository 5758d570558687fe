"""Ground truth end to end: Avro predictions (registry) and JSON labels on real Kafka, the monitor
in a child process (SIGKILLed and restarted midway), quality windows in real Redis, checked
against scikit-learn on the same joined set.

Labels arrive shuffled, ~30% before their predictions, 5% twice (the second with the other
label: last wins), 10% never, plus orphans for events never predicted. Windows are 10 s of
label time; a lateness longer than the span keeps them open until a final far-future label.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Callable

import fastavro
import numpy as np
import pytest
from confluent_kafka import Producer
from sklearn import metrics as skm

from monitoring.redis_state import Keys, connect
from schemas.prediction import prediction_schema
from schemas.registry_client import RegistryClient, RegistrySettings
from schemas.wire import frame
from tests.integration.helpers import committed, wait_for
from tests.integration.test_monitor import Monitor

pytestmark = pytest.mark.integration

N = 600
WINDOW_MS = 10_000
SPAN_MS = 3 * WINDOW_MS
LATENESS_MS = 100_000
HORIZON_MS = 200_000
ORPHANS = 10
MODEL = "fraud-mlp"   # its demo registry entry v1 has a reference AUC (0.993): this stream (~0.85) drops


def _events(seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Predictions (primary or canary per event, shadow for every event) and labels in publish order."""
    rng = np.random.default_rng(seed)
    preds, labels = [], []
    for i in range(N):
        eid, key = f"e{i}", f"acct-{i % 17}"
        y = bool(rng.random() < 0.3)
        base = float(np.clip(rng.normal(0.65 if y else 0.35, 0.2), 0, 1))
        canary = rng.random() < 0.25
        for variant, version, score in (("canary" if canary else "primary", "2" if canary else "1", base),
                                        ("shadow", "9", float(np.clip(base + rng.normal(0, 0.15), 0, 1)))):
            preds.append({"event_id": eid, "key": key, "model": MODEL, "version": version, "variant": variant,
                          "score": round(score, 3), "decision": score >= 0.5, "event_time": 1_000 + i,
                          "scored_at": 2_000 + i})
        if rng.random() >= 0.10:
            labels.append({"event_id": eid, "key": key, "label": y, "label_time": int(rng.integers(0, SPAN_MS))})
            if rng.random() < 0.05:
                labels.append({"event_id": eid, "key": key, "label": not y,
                               "label_time": int(rng.integers(0, SPAN_MS))})
    for j in range(ORPHANS):
        labels.append({"event_id": f"orphan{j}", "key": f"acct-{j}", "label": True, "label_time": 5 * j})
    return preds, [labels[i] for i in rng.permutation(len(labels))]


def _joined(preds: list[dict[str, Any]], labels: list[dict[str, Any]]) -> dict[str, list[tuple[float, bool, bool]]]:
    """``model:version:variant:window_start`` -> its joined (score, label, decision) rows."""
    final = {lab["event_id"]: lab for lab in labels}                       # last one wins
    rows: dict[str, list[tuple[float, bool, bool]]] = {}
    for p in preds:
        lab = final.get(p["event_id"])
        if lab is None:
            continue
        start = lab["label_time"] - lab["label_time"] % WINDOW_MS
        rows.setdefault(f"{MODEL}:{p['version']}:{p['variant']}:{start}", []).append(
            (p["score"], lab["label"], p["decision"]))
    return rows


def _expected(preds: list[dict[str, Any]], labels: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for key, r in _joined(preds, labels).items():
        s = np.array([x[0] for x in r])
        y = np.array([x[1] for x in r])
        d = np.array([x[2] for x in r])
        out[key] = {"count": len(r), "auc": skm.roc_auc_score(y, s), "log_loss": skm.log_loss(y, s),
                    "precision": skm.precision_score(y, d, zero_division=0),
                    "recall": skm.recall_score(y, d, zero_division=0)}
    return out


def _produce(bootstrap: str, topic: str, records: list[tuple[str, bytes]]) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for key, value in records:
        p.produce(topic, value, key=key.encode())
    assert p.flush(30) == 0


def test_quality_windows_equal_sklearn_across_a_kill(tmp_path: Path, bootstrap: str, redis_url: str,
                                                     schema_registry: Any, names: Callable[[str], str],
                                                     topics: Callable[..., None],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    pred_topic, label_topic, tele = names("pred"), names("labels"), names("tele")
    topics({pred_topic: 2, label_topic: 2, tele: 1})
    app_id, prefix = names("truth-mon"), names("truth")
    schema = prediction_schema()
    sid = RegistryClient(RegistrySettings(url=schema_registry.url)).register(f"{pred_topic}-value", schema)
    parsed = fastavro.parse_schema(schema)

    def avro(rec: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, rec)
        return frame(sid, buf.getvalue())

    preds, labels = _events(seed=7)
    early, late = labels[: len(labels) * 3 // 10], labels[len(labels) * 3 // 10:]
    config = {"broker": bootstrap, "telemetry_topic": tele, "redis_url": redis_url, "redis_prefix": prefix,
              "app_id": app_id, "commit_interval_s": 0.5, "loglevel": os.environ.get("TRUTH_LOGLEVEL", "warning"),
              "schema_registry_url": schema_registry.url,
              "ground_truth": [{"name": "fraud", "predictions": [pred_topic],
                                "labels": {"topic": label_topic, "horizon": HORIZON_MS},
                                "window_ms": WINDOW_MS, "lateness_ms": LATENESS_MS}]}

    def lab(rec: dict[str, Any]) -> tuple[str, bytes]:
        return rec["key"], json.dumps(rec).encode()

    mon = Monitor(tmp_path, "mon1", config)
    try:
        _produce(bootstrap, label_topic, [lab(r) for r in early])     # labels before their predictions
        _produce(bootstrap, pred_topic, [(p["key"], avro(p)) for p in preds])
        half = len(late) // 2
        _produce(bootstrap, label_topic, [lab(r) for r in late[:half]])

        def progressed() -> bool:
            assert mon.proc.poll() is None, f"monitor exited:\n{mon.output()}"
            done = committed(bootstrap, app_id, label_topic, 2)
            return sum(max(v, 0) for v in done.values()) >= len(early) + half // 2
        wait_for(progressed, 180, "the monitor to commit half of the labels")
        if os.environ.get("TRUTH_KILL", "1") == "1":
            mon.kill()
            mon = Monitor(tmp_path, "mon2", config)
        _produce(bootstrap, label_topic, [lab(r) for r in late[half:]])

        def consumed() -> bool:   # windows close by label time only: the closing labels come after the rest
            assert mon.proc.poll() is None, f"monitor exited:\n{mon.output()}"
            return (sum(committed(bootstrap, app_id, pred_topic, 2).values()) >= len(preds)
                    and sum(committed(bootstrap, app_id, label_topic, 2).values()) >= len(labels))
        # the restart: start (~2 s), rejoin once the killed member's session expires (<= 10 s),
        # changelog recovery, then a broker round trip per labelled record; generous for a busy machine
        try:
            wait_for(consumed, 300, "the restarted monitor to consume every prediction and label")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: committed {committed(bootstrap, app_id, pred_topic, 2)} of {len(preds)} "
                                 f"predictions, {committed(bootstrap, app_id, label_topic, 2)} of {len(labels)} "
                                 f"labels\nrestarted monitor's log:\n{mon.output()}") from None
        close = LATENESS_MS + HORIZON_MS + 10 * WINDOW_MS             # closes every window on both partitions
        _produce(bootstrap, label_topic, [(f"acct-{k}", json.dumps({"event_id": f"end{k}", "label": False,
                                                                     "label_time": close}).encode())
                                          for k in range(17)])
        want = _expected(preds, labels)
        r = connect(redis_url)
        keys = Keys(prefix)

        def all_windows() -> bool:
            assert mon.proc.poll() is None, f"monitor exited:\n{mon.output()}"
            return set(r.hkeys(keys.quality_windows)) >= set(want)
        wait_for(all_windows, 180, f"{len(want)} quality windows")
        got = {k: json.loads(v) for k, v in r.hgetall(keys.quality_windows).items()}
        assert set(got) == set(want)
        for key, w in want.items():
            m = got[key]["metrics"]
            assert m["count"] == w["count"], key
            for metric in ("auc", "log_loss", "precision", "recall"):
                assert abs(m[metric] - w[metric]) < 1e-9, (key, metric, m[metric], w[metric])
        def counts() -> dict[str, int]:
            per_part = [json.loads(v) for v in r.hgetall(keys.labels("fraud")).values()]
            return {k: sum(c[k] for c in per_part) for k in ("labels", "duplicates", "orphans")}
        n_dups = len(labels) - len({x["event_id"] for x in labels})
        want_counts = {"duplicates": n_dups, "orphans": ORPHANS}    # written when a window step passes
        wait_for(lambda: {k: counts()[k] for k in want_counts} == want_counts, 60,
                 f"label counts {want_counts} (last {counts()})")
        assert len(labels) + 2 <= counts()["labels"] <= len(labels) + 17
        latest = r.hgetall(keys.quality(MODEL, "1", "primary"))
        assert latest["variant"] == "primary" and float(latest["cumulative_count"]) == sum(
            w["count"] for k, w in want.items() if k.startswith(f"{MODEL}:1:primary:"))
        # quality drop: raised once, after k=2 windows, for the version with a reference AUC only
        alerts = [f for _id, f in r.xrange(keys.alerts)]
        assert [(a["model"], a["version"], a["feature"], a["state"], a["window_start"]) for a in alerts] == [
            (MODEL, "1", "quality:primary:auc", "raised", str(WINDOW_MS))]
        _check_compare(redis_url, prefix, _joined(preds, labels), capsys)
        # the live estimates count every prediction once across the kill (all in event-time window 0)
        arms: dict[tuple[str, str], int] = {}
        for p in preds:
            arms[(p["version"], p["variant"])] = arms.get((p["version"], p["variant"]), 0) + 1
        for (version, variant), n in arms.items():
            est = json.loads(r.hget(keys.quality_estimate(MODEL, version, variant), "0") or "{}")
            assert est.get("count") == n and est["calibrated_on"] > 0, (version, variant, est, n)
    finally:
        mon.stop()


def test_the_live_estimate_of_unlabelled_predictions_tracks_their_realized_accuracy(
        tmp_path: Path, bootstrap: str, redis_url: str, names: Callable[[str], str],
        topics: Callable[..., None]) -> None:
    """Calibrated scores (label ~ Bernoulli(score)): window 0 is labelled and closes; window 3's predictions
    get no labels, yet their live estimate (CBPE over every prediction of the event-time window, calibrated
    on window 0) reaches Redis with every prediction counted, within 0.02 of the accuracy their labels
    would have shown."""
    pred_topic, label_topic, tele = names("lepred"), names("lelabels"), names("letele")
    topics({pred_topic: 1, label_topic: 1, tele: 1})
    app_id, prefix = names("le-mon"), names("le")
    rng = np.random.default_rng(5)

    def preds(n: int, t0: int) -> tuple[list[tuple[str, bytes]], np.ndarray, np.ndarray]:
        score = rng.random(n)
        y = rng.random(n) < score
        recs = [(f"acct-{i % 13}", json.dumps({
            "event_id": f"w{t0}-{i}", "model": "live", "version": "1", "variant": "primary",
            "score": float(score[i]), "decision": bool(score[i] >= 0.5), "event_time": t0 + i}).encode())
            for i in range(n)]
        return recs, score, y

    labelled, _, y0 = preds(3000, 0)
    unlabelled, score3, y3 = preds(4000, 3 * WINDOW_MS)
    labels = [(k, json.dumps({"event_id": json.loads(v)["event_id"], "label": bool(y0[i]),
                              "label_time": i % WINDOW_MS}).encode()) for i, (k, v) in enumerate(labelled)]
    labels.append(("acct-end", json.dumps({"event_id": "end", "label": False, "label_time": 2 * WINDOW_MS}).encode()))
    config = {"broker": bootstrap, "telemetry_topic": tele, "redis_url": redis_url, "redis_prefix": prefix,
              "app_id": app_id, "commit_interval_s": 0.5,
              "ground_truth": [{"name": "le", "predictions": [pred_topic], "labels": {"topic": label_topic},
                                "window_ms": WINDOW_MS}]}
    _produce(bootstrap, pred_topic, labelled)
    mon = Monitor(tmp_path, "le", config)
    r = connect(redis_url)
    keys = Keys(prefix)
    try:
        def predicted() -> bool:     # labels after their predictions: none runs ahead of them
            assert mon.proc.poll() is None, f"monitor exited:\n{mon.output()}"
            return sum(committed(bootstrap, app_id, pred_topic, 1).values()) >= len(labelled)
        wait_for(predicted, 120, "the monitor to read window 0's predictions")
        _produce(bootstrap, label_topic, labels)
        wait_for(lambda: len(r.hkeys(keys.quality_windows)) >= 1, 120, "window 0 to close")
        _produce(bootstrap, pred_topic, unlabelled)

        def estimated() -> dict[str, Any]:
            return json.loads(r.hget(keys.quality_estimate("live", "1", "primary"), str(3 * WINDOW_MS)) or "{}")

        def counted() -> bool:
            assert mon.proc.poll() is None, f"monitor exited:\n{mon.output()}"
            return estimated().get("count") == len(unlabelled)
        wait_for(counted, 120, "window 3's live estimate")
    finally:
        mon.stop()
    est = estimated()
    realized = float(np.mean(y3 == (score3 >= 0.5)))
    print({"estimated": est, "realized_accuracy": realized})
    assert est["calibrated_on"] == len(labelled) and est["window_end"] == 4 * WINDOW_MS
    assert abs(est["est_accuracy"] - realized) <= 0.02, (est, realized)
    window0 = json.loads(r.hget(keys.quality_estimate("live", "1", "primary"), "0") or "{}")
    assert window0["count"] == len(labelled), "the labelled window's predictions count too"


def _check_compare(redis_url: str, prefix: str, joined: dict[str, list[tuple[float, bool, bool]]],
                   capsys: pytest.CaptureFixture[str]) -> None:
    """``streamscore models compare`` on what the monitor kept: both AUCs equal scikit-learn's on the
    joined rows of every window (the canary and the shadow are live from the first); the shadow
    scored the primary's events too, so it is compared paired."""
    from streamscore.cli import main

    def arm(name: str) -> tuple[list[float], list[bool]]:
        rows = [x for k, r in sorted(joined.items()) if k.startswith(f"{MODEL}:{name}:") for x in r]
        return [x[0] for x in rows], [x[1] for x in rows]

    capsys.readouterr()
    args = ["models", "compare", MODEL, "--redis-url", redis_url, "--prefix", prefix]
    assert main(args) == 2
    assert "several challengers of fraud-mlp:1:primary" in capsys.readouterr().err
    s_p, y_p = arm("1:primary")
    seen = {}
    for chal, paired in (("2:canary", False), ("9:shadow", True)):
        assert main([*args, "--challenger", f"{MODEL}:{chal}", "--json"]) == 0
        got = json.loads(capsys.readouterr().out)
        s_c, y_c = arm(chal)
        if paired:          # the shadow's rows of the primary's events
            assert got["n_challenger"] == len(s_p)
        else:
            assert got["n_challenger"] == len(s_c)
            assert abs(got["auc_challenger"] - skm.roc_auc_score(y_c, s_c)) < 1e-9
        assert got["n_primary"] == len(s_p) and got["paired"] is paired
        assert abs(got["auc_primary"] - skm.roc_auc_score(y_p, s_p)) < 1e-9
        assert got["verdict"] == ("better" if got["low"] > 0 else "worse" if got["high"] < 0 else "not yet known")
        seen[chal] = {k: got[k] for k in ("auc_primary", "auc_challenger", "low", "high", "verdict")}
    print(seen)


CD_WINDOW_MS = 30_000        # quality windows of label time; each holds the labels of 3,000 events
CD_EVENTS = 3_000
CD_WINDOWS, CD_DRIFT = 6, 3  # concept drift from the first event of window 3
CD_NEG_SHARE = 0.05          # every positive and 5% of the negatives get predictions and labels


def test_concept_drift_raises_a_quality_alert_and_no_data_drift_alert(tmp_path: Path, bootstrap: str,
                                                                      redis_url: str, names: Callable[[str], str],
                                                                      topics: Callable[..., None]) -> None:
    """``produce --labels --concept-drift``'s labels (``label_records(concept_from=...)``) on predictions of
    the demo model: the features do not move, so drift (on telemetry of every event, 50-s windows)
    stays quiet, while the windowed AUC falls below the reference (0.993 - 0.05) from the drift on.

    Only every positive and 5% of the negatives are sent (the monitor's cost is per record; the
    AUC does not depend on how many negatives are sampled, only its noise does)."""
    from models.demo_data import generate, labels
    from streamscore.produce import label_records
    from tests.integration.test_monitor import BATCH, _model, telemetry

    entry, model = _model()
    pred_topic, label_topic, tele = names("cdpred"), names("cdlabels"), names("cdtele")
    topics({pred_topic: 1, label_topic: 1, tele: 1})
    app_id, prefix = names("cd-mon"), names("cd")
    start = CD_DRIFT * CD_EVENTS
    preds: list[tuple[str, bytes]] = []
    labs: list[tuple[str, bytes]] = []
    for w in range(CD_WINDOWS):
        cols = generate(CD_EVENTS, seed=21, start=w * CD_EVENTS)
        y = labels(cols, concept=np.arange(w * CD_EVENTS, (w + 1) * CD_EVENTS) >= start)
        keep = y | (np.random.default_rng([21, w]).random(CD_EVENTS) < CD_NEG_SHARE)
        score = model.predict(entry.input_spec.assemble(cols))
        for i in np.flatnonzero(keep):
            preds.append((str(cols["account_id"][i]), json.dumps({
                "event_id": str(cols["event_id"][i]), "model": entry.name, "version": entry.version,
                "variant": "primary", "score": float(score[i]), "decision": bool(score[i] >= entry.decision_threshold),
                "event_time": int(cols["event_time"][i])}).encode()))
        wanted = {str(e) for e in cols["event_id"][keep]}
        labs += [(k.decode(), v) for k, v in label_records(
            CD_EVENTS, seed=21, start=w * CD_EVENTS, now_ms=w * CD_WINDOW_MS, max_delay_ms=CD_WINDOW_MS - 2_000,
            concept_from=start) if json.loads(v)["event_id"] in wanted]
    labs.append(("acct-end", json.dumps({"event_id": "end", "label": False,
                                         "label_time": (CD_WINDOWS + 1) * CD_WINDOW_MS}).encode()))   # closes the last
    batches = 5 * (CD_WINDOWS * CD_EVENTS // (5 * BATCH) + 1)
    config = {"broker": bootstrap, "telemetry_topic": tele, "redis_url": redis_url, "redis_prefix": prefix,
              "app_id": app_id, "window_ms": 50_000, "k": 2, "m": 2, "commit_interval_s": 0.5,
              "ground_truth": [{"name": "cd", "predictions": [pred_topic], "labels": {"topic": label_topic},
                                "window_ms": CD_WINDOW_MS, "auc_drop": 0.05}]}
    _produce(bootstrap, tele, [("fraud-mlp", v) for v in telemetry(range(batches + 1), seed=21)])
    _produce(bootstrap, pred_topic, preds)
    mon = Monitor(tmp_path, "cd", config)
    r = connect(redis_url)
    keys = Keys(prefix)
    try:
        def predicted() -> bool:    # labels after their predictions: none runs ahead and closes a window early
            assert mon.proc.poll() is None, f"monitor exited:\n{mon.output()}"
            return sum(committed(bootstrap, app_id, pred_topic, 1).values()) >= len(preds)
        wait_for(predicted, 120, "the monitor to read every prediction")
        _produce(bootstrap, label_topic, labs)

        def closed() -> bool:
            assert mon.proc.poll() is None, f"monitor exited:\n{mon.output()}"
            return (len(r.hkeys(keys.quality_windows)) >= CD_WINDOWS
                    and len(r.hkeys(keys.windows)) >= batches * BATCH * 10 // 50_000)
        wait_for(closed, 150, f"{CD_WINDOWS} quality windows and the drift windows")
    finally:
        mon.stop()
    metrics = {json.loads(v)["window_start"] // CD_WINDOW_MS: json.loads(v)["metrics"]
               for v in r.hvals(keys.quality_windows)}
    aucs = {w: m["auc"] for w, m in metrics.items()}
    accuracy = {w: (round(m["accuracy"], 4), round(m["est_accuracy"], 4)) for w, m in sorted(metrics.items())}
    alerts = [f for _id, f in r.xrange(keys.alerts)]
    quality = [(a["feature"], a["state"], int(a["window_start"]) // CD_WINDOW_MS) for a in alerts
               if a["feature"].startswith("quality:")]
    print({"auc_by_window": aucs, "alerts": quality, "drift_windows": len(r.hkeys(keys.windows)),
           "accuracy_realized_estimated": accuracy})
    assert [a for a in alerts if not a["feature"].startswith("quality:")] == []       # no data-drift alert
    assert all(aucs[w] > 0.95 for w in range(CD_DRIFT)), aucs
    assert all(aucs[w] < 0.943 for w in range(CD_DRIFT, CD_WINDOWS)), aucs
    assert quality == [("quality:primary:auc", "raised", CD_DRIFT + 1)]   # k = 2: the drift's second window
    # CBPE, calibrated on the earlier windows: close before the drift, blind to it after
    assert np.isnan(metrics[0]["est_accuracy"]) and abs(accuracy[CD_DRIFT - 1][0] - accuracy[CD_DRIFT - 1][1]) <= 0.02
    assert all(accuracy[w][1] - accuracy[w][0] > 0.05 for w in range(CD_DRIFT, CD_WINDOWS)), accuracy
