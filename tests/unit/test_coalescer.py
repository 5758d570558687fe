"""The request coalescer: one batch per loop turn or batcher deadline; the latency target closes it early."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest

from consumers.batcher import AdaptiveBatcher
from consumers.coalescer import RequestCoalescer
from consumers.runtime import ActiveModel, ModelSlot
from schemas.errors import PredictError


class _Model:
    name, version = "m", "1"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.calls.append(len(x))
        if np.any(x[:, 0] < 0):
            raise ValueError("negative")
        return x[:, 0] * 2

    def close(self) -> None:
        pass


def _slot(model: Any) -> ModelSlot:
    return ModelSlot(ActiveModel(model=model, assembler=None, threshold=1.0))  # type: ignore[arg-type]


def test_requests_of_one_loop_turn_share_one_model_call() -> None:
    model = _Model()
    slot = _slot(model)
    c = RequestCoalescer(batcher=AdaptiveBatcher(max_size=100, max_wait_s=0.0))

    async def run() -> list[Any]:
        return await asyncio.gather(*(c.score(slot, np.full((2, 1), float(i), np.float32)) for i in range(5)),
                                    return_exceptions=True)

    out = asyncio.run(run())
    assert model.calls == [10]
    assert [r.scores.tolist() for r in out] == [[2.0 * i, 2.0 * i] for i in range(5)]
    assert [r.decisions.tolist() for r in out][1] == [True, True]


def test_latency_target_closes_before_max_wait_and_a_bad_row_fails_its_request_only() -> None:
    model = _Model()
    slot = _slot(model)
    batcher = AdaptiveBatcher(max_size=100, max_wait_s=2.0, latency_target_s=0.05)
    c = RequestCoalescer(batcher=batcher)

    async def run() -> list[Any]:
        return await asyncio.gather(*(c.score(slot, np.array([[v]], np.float32)) for v in (1.0, -1.0, 3.0)),
                                    return_exceptions=True)

    t0 = time.monotonic()
    out = asyncio.run(run())
    took = time.monotonic() - t0
    assert took < 1.0, f"waited {took:.2f}s: the 50-ms latency target did not close the batch"
    assert batcher.stats.closed_by["latency"] == 1 and batcher.stats.batches == 1
    assert isinstance(out[1], PredictError) and "negative" in str(out[1])
    assert out[0].scores.tolist() == [2.0] and out[2].scores.tolist() == [6.0]


def test_max_size_closes_at_once() -> None:
    model = _Model()
    c = RequestCoalescer(batcher=AdaptiveBatcher(max_size=4, max_wait_s=5.0))

    async def run() -> Any:
        return await asyncio.wait_for(c.score(_slot(model), np.ones((4, 1), np.float32)), 2.0)

    assert asyncio.run(run()).scores.tolist() == pytest.approx([2.0] * 4)
