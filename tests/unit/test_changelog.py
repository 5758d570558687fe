"""Aggregate state on assignment and in a batch: restored from the changelog before scoring, the
batch's columns joined in, and its changelog records produced under the batch's acknowledgement."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from confluent_kafka import KafkaError, KafkaException
from prometheus_client import CollectorRegistry

from consumers.changelog import AggregateState, ChangelogReader, Record
from consumers.outputs import OutputWriter
from models.aggregates import AggregateEngine, AggregateSpec
from monitoring.metrics import ScorerMetrics
from schemas.columns import StrColumn
from sinks.kafka_sink import BatchAck


class _Msg:
    def __init__(self, partition: int, offset: int, ts: int) -> None:
        self._p, self._o, self._t = partition, offset, ts

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def timestamp(self) -> tuple[int, int]:
        return (1, self._t)


class _Reader(ChangelogReader):
    def __init__(self, logs: dict[int, list[Record]]) -> None:
        super().__init__(lambda: None)  # type: ignore[arg-type,return-value]
        self.logs = logs
        self.calls: list[list[int]] = []

    def read(self, topic: str, partitions: Sequence[int]) -> dict[int, list[Record]]:
        self.calls.append(list(partitions))
        return {p: list(self.logs.get(p, [])) for p in partitions}


class _Batch:
    def __init__(self, accounts: list[str]) -> None:
        self.columns: dict[str, Any] = {"account_id": np.array(accounts, dtype=object)}
        self.nulls: dict[str, np.ndarray] = {}
        self.symbols: dict[str, Any] = {}
        self.ok_index = np.arange(len(accounts))


class _Work:
    def __init__(self, accounts: list[str], parts: list[int], offsets: list[int], ts: list[int]) -> None:
        self.decoded = _Batch(accounts)
        self.msgs = [_Msg(p, o, t) for p, o, t in zip(parts, offsets, ts)]
        self.in_parts = np.array(parts, np.int32)
        self.changelog: Any = None


class _Sink:
    def __init__(self) -> None:
        self.batches: list[tuple[str, list[bytes | None], list[bytes | None], Any]] = []

    def produce_batch(self, topic: str, values: Sequence[bytes | None], keys: Sequence[bytes | None], ack: BatchAck,
                      *, partitions: np.ndarray | None = None, headers: Any = None) -> None:
        self.batches.append((topic, list(values), list(keys), partitions))

    def produce_encoded(self, topic: str, encoded: tuple[np.ndarray, np.ndarray, np.ndarray], keys: StrColumn | None,
                        ack: BatchAck, *, partitions: np.ndarray | None = None, headers: Any = None) -> None:
        buf, starts, lengths = encoded
        values = [buf[a:a + k].tobytes() for a, k in zip(starts.tolist(), lengths.tolist())]
        texts = keys.to_list() if keys is not None else [None] * len(values)
        self.batches.append((topic, values, [None if k is None else k.encode() for k in texts], partitions))


def _state(logs: dict[int, list[Record]]) -> tuple[AggregateState, _Reader, ScorerMetrics]:
    engine = AggregateEngine([AggregateSpec("n", "account_id", "count", 60_000)])
    reader = _Reader(logs)
    metrics = ScorerMetrics(registry=CollectorRegistry())
    return AggregateState(engine, reader, topic="cl", pipeline="p", metrics=metrics), reader, metrics


def test_a_batch_applies_to_restored_state_and_writes_its_changelog_under_the_batch_ack() -> None:
    first, _, _ = _state({})
    first.assign([0, 1])
    work = _Work(["a", "b", "a"], [0, 1, 0], [0, 0, 1], [1000, 1000, 2000])
    first.apply(first.view(), work)
    assert work.decoded.columns["n"].tolist() == [1.0, 1.0, 2.0]
    sink = _Sink()
    OutputWriter(sink=sink, metrics=ScorerMetrics(registry=CollectorRegistry()),  # type: ignore[arg-type]
                 record_latency=lambda _s: None).emit_changelog(work, BatchAck(1, lambda _a: None))  # type: ignore[arg-type]
    [(topic, values, keys, parts)] = sink.batches
    assert topic == "cl" and len(values) == 2 and parts.tolist() == [0, 1]     # a record per partition
    # a second process restores from those records: the next event of "a" counts both before it
    logs: dict[int, list[Record]] = {0: [], 1: []}
    for k, v, p in zip(keys, values, parts.tolist()):
        logs[p].append((k or b"", v))
    second, reader, metrics = _state(logs)
    second.assign([0])
    assert reader.calls == [[0]]
    nxt = _Work(["a"], [0], [2], [3000])
    second.apply(second.view(), nxt)
    assert nxt.decoded.columns["n"].tolist() == [3.0]
    assert metrics.registry.get_sample_value("streamscore_aggregate_keys", {"instance": metrics.instance,
                                                                              "pipeline": "p"}) == 1.0


def test_a_view_taken_before_a_revoke_keeps_its_state() -> None:
    state, _, _ = _state({})
    state.assign([0])
    view = state.view()
    state.revoke([0])
    assert state.view() == {}
    work = _Work(["a"], [0], [0], [1000])
    state.apply(view, work)
    assert work.decoded.columns["n"].tolist() == [1.0]


class _NewTopicConsumer:
    """A consumer of a changelog topic created moments ago: its partition has no leader for the first calls."""

    def __init__(self, not_ready: int) -> None:
        self.not_ready = not_ready
        self.closed = False

    def get_watermark_offsets(self, tp: Any, timeout: float, cached: bool) -> tuple[int, int]:
        if self.not_ready > 0:
            self.not_ready -= 1
            raise KafkaException(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION))
        return 0, 0

    def assign(self, partitions: Any) -> None: ...

    def close(self) -> None:
        self.closed = True


def test_restoring_waits_for_a_new_changelog_partition_to_get_a_leader() -> None:
    consumer = _NewTopicConsumer(not_ready=2)
    reader = ChangelogReader(lambda: consumer, timeout_s=30.0)  # type: ignore[arg-type,return-value]
    assert reader.read("cl", [0]) == {0: []} and consumer.not_ready == 0 and consumer.closed
    never = _NewTopicConsumer(not_ready=10**9)
    with pytest.raises(KafkaException):
        ChangelogReader(lambda: never, timeout_s=0.3).read("cl", [0])  # type: ignore[arg-type,return-value]
