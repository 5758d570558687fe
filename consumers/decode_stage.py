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

from consumers.runtime import PipelineRuntime
from consumers.offsets import TP
from consumers.work import Work


def decode_work(rt: PipelineRuntime, msgs: list[Message], *, batch_id: int) -> Work:
    """Decode ``msgs`` (one pipeline's, in consumption order) into a Work item for the model stage."""
    n = len(msgs)
    partition, offset, value, key = _accessors(msgs)
    parts = np.fromiter(map(partition, msgs), dtype=np.int32, count=n)
    offs = np.fromiter(map(offset, msgs), dtype=np.int64, count=n)
    ranges: dict[TP, tuple[int, int]] = {}
    for p in np.unique(parts).tolist():
        sel = offs[parts == p]
        ranges[(rt.input_topic, p)] = (int(sel.min()), int(sel.max()))
    values = list(map(value, msgs))
    work = Work(batch_id=batch_id, rt=rt, ranges=ranges, msgs=msgs, consumed_at=time.monotonic())
    limit = rt.max_message_bytes
    try:
        oversized = np.flatnonzero(np.fromiter(map(len, values), np.int64, n) > limit).tolist()
    except TypeError:   # a null value (tombstone) among them
        oversized = [i for i, v in enumerate(values) if v is not None and len(v) > limit]
    for i in oversized:
        values[i] = None
    decoded = rt.decoder.decode(values)
    over = set(oversized)
    for idx, err in decoded.errors:
        if idx in over:
            work.dead.append((idx, "oversized", f"value of {len(msgs[idx].value() or b'')} bytes exceeds {limit}"))
        else:
            work.dead.append((idx, err.reason, str(err)))
    work.decoded = decoded
    ok = decoded.ok_index
    work.keys = list(map(key, msgs)) if len(ok) == n else [msgs[i].key() for i in ok.tolist()]
    work.in_parts = parts[ok]
    return work


def _accessors(msgs: list[Message]) -> tuple[Callable[[Any], Any], ...]:
    """Message's own C methods for Kafka messages (no Python bytecode per message), else method calls."""
    if not msgs or type(msgs[0]) is Message:
        return Message.partition, Message.offset, Message.value, Message.key
    return tuple(operator.methodcaller(m) for m in ("partition", "offset", "value", "key"))
