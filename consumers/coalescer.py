"""Concurrent requests coalesced into micro-batches by the stream's AdaptiveBatcher.

Callers (an HTTP server's handlers, any thread) ``submit`` a feature matrix and the slot
it is for and get a ``concurrent.futures.Future``. One model thread adds arrivals to the
batcher (with each request's age), closes a batch when the batcher says so (size, wait,
or the latency target), reads each slot's active model once per batch (a hot swap lands
between two batches), and predicts with the stream's bisection: a request whose rows make
the model raise fails alone; its batch-mates get their scores.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from consumers.batcher import AdaptiveBatcher
from consumers.model_stage import predict_isolating
from consumers.runtime import ActiveModel, ModelSlot
from schemas.errors import PredictError

log = logging.getLogger(__name__)
_EMPTY: Any = object()


@dataclass(frozen=True)
class Scored:
    """One request's answer: the model that scored it, one score and decision per row."""

    active: ActiveModel
    scores: np.ndarray
    decisions: np.ndarray


@dataclass
class _Request:
    slot: ModelSlot
    features: np.ndarray
    arrived: float
    future: Future[Scored] = field(default_factory=Future)


class RequestCoalescer:
    def __init__(self, *, batcher: AdaptiveBatcher, on_batch: Callable[[int, int], None] | None = None) -> None:
        self.batcher = batcher
        self._q: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="coalescer", daemon=True)
        self._on_batch = on_batch     # told (requests, rows) of every scored batch
        self.batches = 0

    def start(self) -> "RequestCoalescer":
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(30)

    def submit(self, slot: ModelSlot, features: np.ndarray) -> Future[Scored]:
        req = _Request(slot=slot, features=features, arrived=time.monotonic())
        self._q.put(req)
        return req.future

    def _run(self) -> None:
        pending: list[_Request] = []
        b = self.batcher
        while True:
            try:
                req = self._q.get(timeout=b.time_left(time.monotonic()) if pending else None)
            except queue.Empty:
                req = _EMPTY
            while req is not _EMPTY:            # take every arrival that is already here
                if req is None:
                    self._fail_all(pending, "server shutting down")
                    return
                pending.append(req)
                now = time.monotonic()
                b.add(len(req.features), now, oldest_age_s=now - req.arrived)
                try:
                    req = self._q.get_nowait()
                except queue.Empty:
                    req = _EMPTY
            if pending:
                reason = b.should_close(time.monotonic())
                if reason is not None:
                    b.close(time.monotonic(), reason)
                    batch, pending = pending, []
                    self._dispatch(batch)

    def _dispatch(self, batch: list[_Request]) -> None:
        by_slot: dict[int, list[_Request]] = {}
        for r in batch:
            by_slot.setdefault(id(r.slot), []).append(r)
        for reqs in by_slot.values():
            active = reqs[0].slot.active           # one read per batch
            feats = reqs[0].features if len(reqs) == 1 else np.concatenate([r.features for r in reqs])
            t0 = time.perf_counter()
            scores, bad = predict_isolating(active.model, feats, np.arange(len(feats)))
            self.batcher.observe_model(len(feats), time.perf_counter() - t0)
            self.batches += 1
            bad_rows = dict(bad)
            lo = 0
            for r in reqs:
                hi = lo + len(r.features)
                errors = [bad_rows[i] for i in range(lo, hi) if i in bad_rows] if bad_rows else []
                if errors:
                    r.future.set_exception(PredictError(f"model {active.model.name}@{active.model.version} failed "
                                                        f"on {len(errors)} of {hi - lo} rows: {errors[0]}"))
                else:
                    s = scores[lo:hi]
                    r.future.set_result(Scored(active=active, scores=s, decisions=s >= active.threshold))
                lo = hi
            if self._on_batch is not None:
                self._on_batch(len(reqs), len(feats))

    @staticmethod
    def _fail_all(pending: list[_Request], why: str) -> None:
        for r in pending:
            r.future.set_exception(PredictError(why))
