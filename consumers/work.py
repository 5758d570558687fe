"""The unit of work that moves through the scorer's stages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence, Union

import numpy as np
from confluent_kafka import Message

from consumers.offsets import TP
from consumers.raw_batch import RawBatch
from consumers.runtime import ActiveModel, PipelineRuntime
from schemas.columns import StrColumn

Messages = Union[Sequence[Message], RawBatch]   # a batch's records: Message objects, or drained into arrays


@dataclass
class Work:
    """One pipeline's share of one micro-batch, as it moves through the stages."""

    batch_id: int
    rt: PipelineRuntime
    ranges: dict[TP, tuple[int, int]]
    msgs: Messages
    decoded: Any = None                       # schemas.columnar.DecodedBatch
    keys: StrColumn = field(default_factory=lambda: StrColumn.from_bytes([]))   # Kafka keys (length -1: null)
    in_parts: np.ndarray | None = None
    dead: list[tuple[int, str, str]] = field(default_factory=list)  # (msg index, reason, message)
    ok_rows: np.ndarray | None = None         # rows of `decoded` that were scored
    scores: np.ndarray | None = None          # one per decoded row (valid where ok_rows says)
    groups: list[tuple[ActiveModel, np.ndarray]] = field(default_factory=list)   # (model, its scored rows)
    fields: dict[str, np.ndarray] = field(default_factory=dict)   # prediction fields, one value per decoded row
    shadow_out: list[tuple[ActiveModel, np.ndarray, dict[str, np.ndarray]]] = field(default_factory=list)
    # ^ (shadow, its scores, its prediction fields), each for ok_rows
    embeddings: np.ndarray | None = None      # kind=embed: (rows, dim) float32
    labels: list[str] | None = None
    active: ActiveModel | None = None
    generation: int = 0
    state: Any = None                         # the aggregate state this batch applies to (given at dispatch)
    changelog: Any = None                     # its aggregate changelog records (consumers.changelog.Changelog)
    consumed_at: float = 0.0                  # time.monotonic() at each stage, for stage latency metrics
    scored_at: float = 0.0


def message_offsets(msgs: Messages, idx: np.ndarray) -> np.ndarray:
    """The offsets of records ``idx`` (an index array)."""
    if isinstance(msgs, RawBatch):
        return np.asarray(msgs.offset[idx])
    return np.fromiter((msgs[i].offset() for i in idx.tolist()), np.int64, len(idx))


def message_times_ms(msgs: Messages, idx: np.ndarray) -> np.ndarray:
    """The Kafka timestamps (ms) of records ``idx`` (an index array)."""
    if isinstance(msgs, RawBatch):
        return np.asarray(msgs.timestamp[idx])
    return np.fromiter((msgs[i].timestamp()[1] for i in idx.tolist()), np.int64, len(idx))


class SyntheticMessage:
    """A record that did not come from a consumer (a warm-up batch, a backfill file row),
    with the accessors the stages read from a Kafka message."""

    __slots__ = ("_topic", "_offset", "_value", "_key", "_timestamp")

    def __init__(self, topic: str, offset: int, value: bytes, *, key: bytes | None = None,
                 timestamp_ms: int = 0) -> None:
        self._topic, self._offset, self._value = topic, offset, value
        self._key, self._timestamp = key, timestamp_ms

    def value(self) -> bytes:
        return self._value

    def key(self) -> bytes | None:
        return self._key

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        """(type, ms) as confluent-kafka gives it: type 0 (not available) when no time was set."""
        return (1, self._timestamp) if self._timestamp else (0, 0)

    def error(self) -> None:
        return None

