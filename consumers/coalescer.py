"""Concurrent requests coalesced into micro-batches by the stream's AdaptiveBatcher.

For an asyncio server: handlers ``await score(slot, features)``. A request joins the open
batch; the batch closes when the batcher says so (size, wait, or the latency target) or,
with ``max_wait`` 0, on the event loop's next turn, so the requests whose bodies arrived
together (and those that queued while the model last ran) share one model call. The model
runs on the loop's thread: no hand-off to another thread and back per request, which for a
model that takes microseconds per row costs more than the model. Each slot's active model is
read once per batch (a hot swap lands between two batches), and prediction uses the stream's
bisection: a request whose rows make the model raise fails alone; its batch-mates get scores.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from consumers.batcher import AdaptiveBatcher, CloseReason
from consumers.model_stage import predict_isolating
from consumers.runtime import ActiveModel, ModelSlot
from schemas.errors import PredictError


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
    future: asyncio.Future[Scored]


class RequestCoalescer:
    def __init__(self, *, batcher: AdaptiveBatcher, on_batch: Callable[[int, int], None] | None = None) -> None:
        self.batcher = batcher
        self._pending: list[_Request] = []
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._on_batch = on_batch     # told (requests, rows) of every scored batch
        self.batches = 0

    async def score(self, slot: ModelSlot, features: np.ndarray) -> Scored:
        loop = asyncio.get_running_loop()
        req = _Request(slot=slot, features=features, future=loop.create_future())
        self._pending.append(req)
        self.batcher.add(len(features), time.monotonic())
        if self.batcher.rows >= self.batcher.max_size:
            self._close("size")
        elif self._timer is None:
            self._schedule(loop)
        return await req.future

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        """Decide later, never on arrival: every request that arrives meanwhile joins the batch."""
        wait = self.batcher.time_left(time.monotonic())
        self._timer = loop.call_later(wait, self._tick, loop) if wait > 0 else loop.call_soon(self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = time.monotonic()
        reason = self.batcher.should_close(now)
        if reason is None and self._pending and self.batcher.time_left(now) > 0:
            self._schedule(loop)
            return
        self._close(reason or "latency")

    def _close(self, reason: CloseReason) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if not batch:
            return
        self.batcher.close(time.monotonic(), reason)
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
                if r.future.done():          # the client went away (cancelled)
                    pass
                elif errors:
                    r.future.set_exception(PredictError(f"model {active.model.name}@{active.model.version} failed "
                                                        f"on {len(errors)} of {hi - lo} rows: {errors[0]}"))
                else:
                    s = scores[lo:hi]
                    r.future.set_result(Scored(active=active, scores=s, decisions=s >= active.threshold))
                lo = hi
            if self._on_batch is not None:
                self._on_batch(len(reqs), len(feats))
