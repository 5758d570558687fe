"""Field mapping of one pipeline: which input field is the event id and the event time,
and which input fields are carried into each prediction.

``id_field: None``: the id is ``<topic>:<partition>:<offset>``; ``time_field: None``: the
Kafka message timestamp. Rows here are rows of the decoded batch (``decoded.ok_index``
maps them to message positions).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from confluent_kafka import Message

from consumers.work import Work, message_times_ms
from schemas.columns import StrColumn, take


def _sub(col: Any, rows: np.ndarray) -> Any:
    return col if len(rows) == len(col) else take(col, rows)


def _messages(work: Work, rows: np.ndarray) -> list[Message]:
    return [work.msgs[i] for i in work.decoded.ok_index[rows].tolist()]


def event_ids(work: Work, rows: np.ndarray) -> Any:
    """The event id column of ``rows``."""
    rt = work.rt
    if rt.id_field is not None:
        return _sub(work.decoded.columns[rt.id_field], rows)
    return StrColumn.from_list([f"{m.topic()}:{m.partition()}:{m.offset()}" for m in _messages(work, rows)])


def event_times_ms(work: Work, rows: np.ndarray) -> np.ndarray | None:
    """Event time (epoch ms) of ``rows``; None when the time field is absent from the batch."""
    rt = work.rt
    if rt.time_field is None:
        return message_times_ms(work.msgs, work.decoded.ok_index[rows])
    col = work.decoded.columns.get(rt.time_field)
    if col is None:
        return None
    out = np.asarray(_sub(col, rows), np.int64)
    return out // rt.time_scale if rt.time_scale != 1 else out


def carried(work: Work, rows: np.ndarray) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The carried input columns of ``rows`` under their output names, and their null masks."""
    cols: dict[str, Any] = {}
    nulls: dict[str, np.ndarray] = {}
    decoded = work.decoded
    for out_name, path in work.rt.carry.items():
        cols[out_name] = _sub(decoded.columns[path], rows)
        mask = decoded.nulls.get(path)
        if mask is not None:
            nulls[out_name] = mask if len(rows) == len(mask) else mask[rows]
    return cols, nulls
