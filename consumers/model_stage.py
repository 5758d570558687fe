"""The model stage: route rows to arms, score them, isolate bad rows, run shadows and embedders.

A batch reads each slot's active model once, so a hot swap lands between two batches.
A row that makes a model raise is found by splitting the batch and dead-lettered; a
shadow that raises is logged and counted, and never touches primary output.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Mapping, Protocol

import numpy as np

from consumers.batcher import AdaptiveBatcher
from consumers.runtime import ActiveModel, ScoringModel
from consumers.work import Work
from schemas.errors import HookContractError, PredictError, StreamscoreError

log = logging.getLogger("consumers.scorer")


class ModelMetrics(Protocol):
    """What the model stage reports (``monitoring.metrics.ScorerMetrics``)."""

    def model_latency(self, pipeline: str, model: str, seconds: float, rows: int) -> None: ...


class ModelStage:
    """The scorer's middle stage: one batch in, its scores (or embeddings) and dead rows out.

    Owns nothing but references: the batchers (one per pipeline, each told its own model's
    cost, for the latency rule) and the metrics. It reads each slot's active model once per
    batch, so a hot swap lands between batches. It never produces, commits or touches Kafka,
    and a shadow's failure never reaches primary output.
    """

    def __init__(self, *, batchers: Mapping[str, AdaptiveBatcher], metrics: ModelMetrics) -> None:
        self.batchers = batchers          # by pipeline name: each learns its own model's cost
        self.metrics = metrics

    def score(self, work: Work) -> None:
        """Fill ``work.scores`` / ``groups`` / ``shadow_out`` (or embeddings); bad rows become dead letters."""
        rt = work.rt
        n = len(work.decoded.ok_index)
        work.scores = np.zeros(n, dtype=np.float32)
        work.ok_rows = np.zeros(0, dtype=np.int64)
        if n == 0:
            return
        if rt.kind == "embed":
            self._embed(work)
            return
        actives = [slot.active for slot in rt.arms]   # one read per batch: swaps land between batches
        work.active = actives[0]
        if rt.router is not None and len(actives) > 1:
            assignment = rt.router.assign(work.keys)
            parts = [(a, np.flatnonzero(assignment == i)) for i, a in enumerate(actives)]
        else:
            parts = [(actives[0], np.arange(n))]
        good = np.ones(n, dtype=bool)
        missing = False
        if rt.lookups is not None:           # waits while the store is down: no row is lost to an outage
            for r, msg in rt.lookups.enrich(work.decoded).items():
                good[r] = False
                work.dead.append((int(work.decoded.ok_index[r]), "lookup_missing", msg))
                missing = True
        feats_by_runner: dict[int, Any] = {}
        for active, rows in parts:
            if missing:
                rows = rows[good[rows]]
            if len(rows) == 0:
                continue
            feats = self._features(work, active, feats_by_runner)
            if feats is None:
                good[rows] = False
                continue
            if feats.bad:
                for r in rows[np.isin(rows, np.fromiter(feats.bad, np.int64, len(feats.bad)))].tolist():
                    good[r] = False
                    work.dead.append((int(work.decoded.ok_index[r]), "features", feats.bad[r]))
                rows = rows[good[rows]]
                if len(rows) == 0:
                    continue
            t0 = time.perf_counter()
            scores, fields, bad = score_isolating(active.runner, feats, rows, work.decoded)
            took = time.perf_counter() - t0
            self.batchers[rt.name].observe_model(len(rows), took)
            self.metrics.model_latency(rt.name, active.model.name, took, len(rows))
            work.scores[rows] = scores
            if rt.include_features:
                fields = {**fields, "features": active.runner.feature_maps(feats, rows)}
            _store(work, n, rows, fields)
            for r, reason, msg in bad:
                good[rows[r]] = False
                work.dead.append((int(work.decoded.ok_index[rows[r]]), reason, msg))
            work.groups.append((active, rows[good[rows]]))
        work.ok_rows = np.flatnonzero(good)
        for slot in rt.shadows:
            self._shadow(work, slot.active, feats_by_runner)

    def _embed(self, work: Work) -> None:
        active = work.rt.slot.active
        work.active = active
        embedder: Any = active.model        # a text embedder (models.text.MiniLMEmbedder)
        texts = [t or "" for t in work.decoded.columns["text"].to_list()]
        t0 = time.perf_counter()
        try:
            emb = embedder.embed(texts)
            labels = embedder.head.predict(emb) if getattr(embedder, "head", None) is not None else None
        except Exception as exc:  # noqa: BLE001 - the whole batch failed: dead-letter it, keep going
            for i in work.decoded.ok_index.tolist():
                work.dead.append((i, "model_error", f"{type(exc).__name__}: {exc}"))
            return
        took = time.perf_counter() - t0
        self.batchers[work.rt.name].observe_model(len(texts), took)
        self.metrics.model_latency(work.rt.name, embedder.name, took, len(texts))
        work.embeddings = emb
        work.labels = labels
        work.ok_rows = np.arange(len(texts))
        work.groups.append((active, work.ok_rows))

    def _features(self, work: Work, active: ActiveModel, cache: dict[int, Any]) -> Any:
        """The batch's features for ``active``'s runner (built once per batch and runner); None
        when the whole batch cannot give them (its rows are dead-lettered)."""
        key = id(active.runner)
        feats = cache.get(key)
        if feats is None:
            try:
                feats = cache[key] = active.runner.features(work.decoded)
            except StreamscoreError as exc:
                seen = {i for i, _, _ in work.dead}
                for i in work.decoded.ok_index.tolist():
                    if i not in seen:
                        work.dead.append((i, "features", str(exc)))
                return None
        return feats

    def _shadow(self, work: Work, active: ActiveModel, cache: dict[int, Any]) -> None:
        """A shadow scores the same rows; whatever it does, primary output is unaffected."""
        rows = work.ok_rows
        if rows is None or len(rows) == 0:
            return
        try:
            feats = cache.get(id(active.runner))
            if feats is None:
                feats = cache[id(active.runner)] = active.runner.features(work.decoded)
            if feats.bad and np.isin(rows, np.fromiter(feats.bad, np.int64, len(feats.bad))).any():
                raise PredictError("the shadow's features cannot be built for every scored row")
            scored = active.runner.score(feats, rows, work.decoded)
            scores = np.asarray(scored.score, dtype=np.float32).reshape(-1)
            if len(scores) != len(rows):
                raise PredictError(f"shadow returned {len(scores)} scores for {len(rows)} rows")
        except Exception as exc:  # noqa: BLE001 - a failing shadow never affects primary output
            work.rt.counters["shadow_errors"] += 1
            first = str(exc).strip().splitlines()
            log.warning("shadow %s:%s failed on a batch (primary output unaffected): %s", active.model.name,
                        active.model.version, first[-1] if first else type(exc).__name__)
            return
        fields = scored.fields
        if work.rt.include_features:
            fields = {**fields, "features": active.runner.feature_maps(feats, rows)}
        work.shadow_out.append((active, scores, fields))


def _store(work: Work, n: int, rows: np.ndarray, fields: dict[str, np.ndarray]) -> None:
    """Prediction fields of ``rows`` into the batch-wide columns (one value per decoded row)."""
    if len(rows) == n and not work.fields:
        work.fields = fields
        return
    for name, values in fields.items():
        col = work.fields.get(name)
        if col is None:
            col = work.fields[name] = np.zeros(n, dtype=values.dtype)
        col[rows] = values


def score_isolating(runner: Any, feats: Any, rows: np.ndarray,
                       batch: Any) -> tuple[np.ndarray, dict[str, np.ndarray], list[tuple[int, str, str]]]:
    """Score ``rows``; if the hooks or the model raise, split the batch until the bad rows stand alone.

    Returns the score and the prediction fields of every row (placeholders where it failed)
    and the failed rows as (position in ``rows``, reason, message). A hook breaking its
    contract is not a row's fault: that error propagates.
    """
    scores = np.zeros(len(rows), dtype=np.float32)
    fields: dict[str, np.ndarray] = {}
    bad: list[tuple[int, str, str]] = []
    stack = [(0, len(rows))]
    while stack:
        lo, hi = stack.pop()
        try:
            out = runner.score(feats, rows[lo:hi], batch)
            got = np.asarray(out.score, dtype=np.float32).reshape(-1)
            if len(got) != hi - lo:
                raise PredictError(f"model returned {len(got)} scores for {hi - lo} rows")
        except HookContractError:
            raise
        except Exception as exc:  # noqa: BLE001 - isolate, then dead-letter
            if hi - lo == 1:
                bad.append((lo, getattr(exc, "reason", "model_error"), f"{type(exc).__name__}: {exc}"))
            else:
                mid = (lo + hi) // 2
                stack.append((mid, hi))
                stack.append((lo, mid))
            continue
        if lo == 0 and hi == len(rows):
            return got, out.fields, bad
        scores[lo:hi] = got
        for name, values in out.fields.items():
            col = fields.get(name)
            if col is None:
                col = fields[name] = np.zeros(len(rows), dtype=values.dtype)
            col[lo:hi] = values
    return scores, fields, bad


def predict_isolating(model: ScoringModel, feats: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Score ``feats``; if the model raises, split the batch until the bad rows stand alone."""
    scores = np.zeros(len(feats), dtype=np.float32)
    bad: list[tuple[int, str]] = []
    stack = [(0, len(feats))]
    while stack:
        lo, hi = stack.pop()
        try:
            out = np.asarray(model.predict(feats[lo:hi]), dtype=np.float32).reshape(-1)
            if len(out) != hi - lo:
                raise PredictError(f"model returned {len(out)} scores for {hi - lo} rows")
            scores[lo:hi] = out
        except Exception as exc:  # noqa: BLE001 - isolate, then dead-letter
            if hi - lo == 1:
                bad.append((lo, f"{type(exc).__name__}: {exc}"))
            else:
                mid = (lo + hi) // 2
                stack.append((mid, hi))
                stack.append((lo, mid))
    return scores, bad
