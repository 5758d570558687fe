"""Raw messages -> a decoded Work item: the decode step every serving pattern shares.

``serve`` (the scorer's source stage), ``backfill`` and ``serve-http`` (record form) all turn
a list of messages into a ``Work`` here: oversized values and undecodable records become
dead letters, the rest become reader columns. A message is anything with confluent-kafka's
``Message`` accessors (``value key topic partition offset timestamp``).
"""

from __future__ import annotations

import operator
import time
from typing import Any, Callable

import numpy as np
from confluent_kafka import Message

from consumers.offsets import TP
from consumers.raw_batch import RawBatch, RawValues
from consumers.runtime import PipelineRuntime
from consumers.work import Work
from schemas.codec.vec import PAD
from schemas.columns import DecodedBatch, StrColumn


def decode_work(rt: PipelineRuntime, msgs: list[Message] | RawBatch, *, batch_id: int) -> Work:
    """Decode ``msgs`` (one pipeline's, in consumption order) into a Work item for the model stage."""
    if isinstance(msgs, RawBatch):
        return _decode_raw(rt, msgs, batch_id)
    n = len(msgs)
    partition, offset, value, key = _accessors(msgs)
    parts = np.fromiter(map(partition, msgs), dtype=np.int32, count=n)
    offs = np.fromiter(map(offset, msgs), dtype=np.int64, count=n)
    values = list(map(value, msgs))
    work = Work(batch_id=batch_id, rt=rt, ranges=_ranges(rt, parts, offs), msgs=msgs, consumed_at=time.monotonic())
    limit = rt.max_message_bytes
    try:
        oversized = np.flatnonzero(np.fromiter(map(len, values), np.int64, n) > limit).tolist()
    except TypeError:   # a null value (tombstone) among them
        oversized = [i for i, v in enumerate(values) if v is not None and len(v) > limit]
    for i in oversized:
        values[i] = None
    decoded = rt.decoder.decode(values)
    _finish(work, decoded, oversized)
    ok = decoded.ok_index
    work.keys = StrColumn.from_bytes(list(map(key, msgs)) if len(ok) == n else [msgs[i].key() for i in ok.tolist()])
    work.in_parts = parts[ok]
    return work


def _decode_raw(rt: PipelineRuntime, raw: RawBatch, batch_id: int) -> Work:
    """``decode_work`` of records drained into arrays: the values go to the decoder as one buffer."""
    raw = raw.compact()
    work = Work(batch_id=batch_id, rt=rt, ranges=_ranges(rt, raw.partition, raw.offset), msgs=raw,
                consumed_at=time.monotonic())
    oversized = np.flatnonzero(raw.vlen > rt.max_message_bytes).tolist()
    if oversized or rt.decoder.fmt != "avro":
        values = raw.value_list()
        for i in oversized:
            values[i] = None
        decoded = rt.decoder.decode(values)
    else:
        decoded = rt.decoder.decode_joined(raw.values + bytes(PAD), np.maximum(raw.vlen, 0), RawValues(raw))
    _finish(work, decoded, oversized)
    ok = decoded.ok_index
    work.keys = raw.key_column(None if len(ok) == len(raw) else ok)
    work.in_parts = raw.partition[ok]
    return work


def _ranges(rt: PipelineRuntime, parts: np.ndarray, offs: np.ndarray) -> dict[TP, tuple[int, int]]:
    """The (first, last) offset the batch holds of each partition."""
    ranges: dict[TP, tuple[int, int]] = {}
    for p in np.unique(parts).tolist():
        sel = offs[parts == p]
        ranges[(rt.input_topic, p)] = (int(sel.min()), int(sel.max()))
    return ranges


def _finish(work: Work, decoded: DecodedBatch, oversized: list[int]) -> None:
    """Dead letters for oversized and undecodable records; the decoded batch onto ``work``."""
    msgs, limit = work.msgs, work.rt.max_message_bytes
    over = set(oversized)
    for idx, err in decoded.errors:
        if idx in over:
            work.dead.append((idx, "oversized", f"value of {len(msgs[idx].value() or b'')} bytes exceeds {limit}"))
        else:
            work.dead.append((idx, err.reason, str(err)))
    work.decoded = decoded


def _accessors(msgs: list[Message]) -> tuple[Callable[[Any], Any], ...]:
    """Message's own C methods for Kafka messages (no Python bytecode per message), else method calls."""
    if not msgs or type(msgs[0]) is Message:
        return Message.partition, Message.offset, Message.value, Message.key
    return tuple(operator.methodcaller(m) for m in ("partition", "offset", "value", "key"))
