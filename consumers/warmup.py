"""Warming a pipeline's path up before the scorer joins its group.

Synthetic batches of each size the batcher makes (``warm_sizes``) go through decode,
features, model and encode, and through the sink's slicing of the encoded buffer, into
a sink that discards them: nothing is produced, no offset is registered, no metric moves.
Each size runs twice: the first pass pays the one-time costs (lazy initialisation,
first-use allocations) against a throwaway batcher; the second pass's model times seed
the real batcher's cost model, so its latency rule starts from measured costs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np

from consumers.batcher import AdaptiveBatcher
from consumers.decode_stage import decode_work
from consumers.model_stage import ModelStage
from consumers.outputs import OutputWriter
from consumers.runtime import PipelineRuntime
from consumers.work import SyntheticMessage
from schemas.columns import StrColumn
from sinks.kafka_sink import BatchAck, Headers

log = logging.getLogger("consumers.scorer")


def warm_sizes(max_size: int) -> list[int]:
    """1, 4, 16, ... up to ``max_size``, and ``max_size`` itself."""
    sizes = {max_size}
    n = 1
    while n < max_size:
        sizes.add(n)
        n *= 4
    return sorted(sizes)


class DrySink:
    """An ``OutputSink`` that does the sink's per-record slicing and counts records, producing nothing."""

    def __init__(self) -> None:
        self.records = 0

    def produce_encoded(self, topic: str, encoded: tuple[np.ndarray, np.ndarray, np.ndarray], keys: StrColumn | None,
                        ack: BatchAck, *, partitions: np.ndarray | None = None,
                        headers: Headers | None = None) -> None:
        buf, starts, lengths = encoded
        data = buf.tobytes()
        self.records += len([data[a:a + k] for a, k in zip(starts.tolist(), lengths.tolist())])

    def produce_one(self, topic: str, value: bytes | None, key: bytes | None, ack: BatchAck,
                    *, headers: Headers | None = None, partition: int = -1) -> None:
        self.records += 1

    def produce_batch(self, topic: str, values: Sequence[bytes | None], keys: Sequence[bytes | None], ack: BatchAck,
                      *, partitions: np.ndarray | None = None, headers: Headers | None = None) -> None:
        self.records += len(values)


class _Quiet:
    """Metrics that record nothing: warm-up batches are not traffic."""

    def model_latency(self, pipeline: str, model: str, seconds: float, rows: int) -> None: ...
    def e2e_latency(self, pipeline: str, seconds: np.ndarray) -> None: ...
    def dead_letters(self, pipeline: str, reason: str, n: int) -> None: ...


def warm_up(rt: PipelineRuntime, batcher: AdaptiveBatcher, sink: DrySink | None = None) -> int:
    """Run one pipeline's synthetic batches (see the module doc); returns the rows scored in
    the seeding pass (0 when the pipeline is not warmed: an embedder, a pipeline with feature
    lookups, or a reader schema with no id to frame it with)."""
    if rt.kind != "score":
        return 0
    if rt.aggregates is not None:
        # synthetic events would enter the per-partition state (and its changelog)
        log.info("pipeline %s: no warm-up (it has aggregates)", rt.name)
        return 0
    if rt.lookups:
        # synthetic keys would be looked up in the user's store (and wait on it if it is down)
        log.info("pipeline %s: no warm-up (it has feature lookups)", rt.name)
        return 0
    sizes = warm_sizes(batcher.max_size)
    values = rt.decoder.samples(sizes[-1])
    if values is None:
        log.info("pipeline %s: no warm-up (its reader schema has no id in the schema source)", rt.name)
        return 0
    t0 = time.perf_counter()
    writer = OutputWriter(sink=sink or DrySink(), metrics=_Quiet(), record_latency=lambda _s: None)
    throwaway = AdaptiveBatcher(max_size=batcher.max_size, max_wait_s=batcher.max_wait_s)
    scored = 0
    for target in (throwaway, batcher):
        stage = ModelStage(batchers={rt.name: target}, metrics=_Quiet())
        scored = 0
        for n in sizes:
            msgs = [SyntheticMessage(rt.input_topic, i, v, key=b"warm-up") for i, v in enumerate(values[:n])]
            work = decode_work(rt, msgs, batch_id=0)   # type: ignore[arg-type]   # duck-typed messages
            stage.score(work)
            if work.ok_rows is not None and len(work.ok_rows):
                writer.emit(work, BatchAck(0, on_done=lambda _a: None))
                scored += len(work.ok_rows)
    fixed, per_row = batcher.cost_fit()
    log.info("pipeline %s: warmed up with batches of %s rows in %.0f ms; model cost %.2f ms + %.2f us/row",
             rt.name, sizes, (time.perf_counter() - t0) * 1000, fixed * 1000, per_row * 1e6)
    return scored
