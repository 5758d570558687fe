"""Which input offsets are safe to commit.

The one commit protocol both delivery modes share. Batches are registered in consumption
order with the offset range they cover in each partition. A batch is *done* when every
output it produced (predictions, shadow predictions, dead letters) is acknowledged. The
committable position of a partition is one past the last offset of the longest prefix
of done batches in that partition: a done batch behind an unfinished one waits.

Invariants:
- positions never move backwards (a stale or replayed range is refused, not committed);
- a revoked partition forgets its pending batches, so a late ack cannot commit for a
  partition this process no longer owns.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

TP = tuple[str, int]   # (topic, partition): the one alias the consumers package uses (not confluent_kafka.TopicPartition)


@dataclass
class _Pending:
    batch_id: int
    last_offset: int
    done: bool = False


@dataclass
class _PartitionState:
    pending: deque[_Pending] = field(default_factory=deque)
    committable: int | None = None     # next offset to consume; None = nothing yet
    committed: int | None = None       # last position handed to commit()


class OffsetTracker:
    """Which input offsets are safe to commit, per partition (see the module docstring).

    Owns only bookkeeping: the pending batches of each partition and their committable
    positions, behind one condition variable (any thread may call it). It never talks to
    Kafka: the commit protocol (``consumers.commit``) asks ``to_commit`` and commits.
    """

    def __init__(self) -> None:
        self._parts: dict[TP, _PartitionState] = {}
        self._batches: dict[int, list[TP]] = {}
        self._cond = threading.Condition()

    def begin(self, batch_id: int, ranges: dict[TP, tuple[int, int]]) -> None:
        """Register a batch covering ``ranges[tp] = (first_offset, last_offset)``."""
        with self._cond:
            if batch_id in self._batches:
                raise ValueError(f"batch {batch_id} registered twice")
            for tp, (first, last) in ranges.items():
                if last < first:
                    raise ValueError(f"bad range {first}..{last} for {tp}")
                st = self._parts.setdefault(tp, _PartitionState())
                prev_last = st.pending[-1].last_offset if st.pending else (
                    (st.committable - 1) if st.committable is not None else None)
                if prev_last is not None and first <= prev_last:
                    raise ValueError(f"offsets for {tp} move backwards: {first} after {prev_last}")
                st.pending.append(_Pending(batch_id, last))
            self._batches[batch_id] = list(ranges)

    def complete(self, batch_id: int) -> None:
        """Mark every output of ``batch_id`` acknowledged. Unknown ids (revoked) are ignored."""
        with self._cond:
            tps = self._batches.pop(batch_id, None)
            if tps is None:
                return
            for tp in tps:
                st = self._parts.get(tp)
                if st is None:
                    continue
                for p in st.pending:
                    if p.batch_id == batch_id:
                        p.done = True
                        break
                while st.pending and st.pending[0].done:
                    st.committable = st.pending.popleft().last_offset + 1
            self._cond.notify_all()

    def to_commit(self) -> dict[TP, int]:
        """Positions that advanced since the last call (marked as handed out)."""
        with self._cond:
            out = {}
            for tp, st in self._parts.items():
                if st.committable is not None and (st.committed is None or st.committable > st.committed):
                    out[tp] = st.committable
                    st.committed = st.committable
            return out

    def positions(self) -> dict[TP, int]:
        with self._cond:
            return {tp: st.committable for tp, st in self._parts.items() if st.committable is not None}

    def in_flight(self, tps: list[TP] | None = None) -> int:
        with self._cond:
            return self._in_flight(tps)

    def _in_flight(self, tps: list[TP] | None) -> int:
        keys = self._parts.keys() if tps is None else [tp for tp in tps if tp in self._parts]
        return sum(len(self._parts[tp].pending) for tp in keys)

    def wait_drained(self, tps: list[TP] | None, timeout: float) -> bool:
        """Block until no batch is pending in ``tps`` (all partitions if None)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._in_flight(tps) == 0, timeout)

    def revoke(self, tps: list[TP]) -> None:
        with self._cond:
            for tp in tps:
                st = self._parts.pop(tp, None)
                if st is None:
                    continue
                for p in st.pending:
                    owners = self._batches.get(p.batch_id)
                    if owners is not None and tp in owners:
                        owners.remove(tp)
            self._cond.notify_all()

    def discard_pending(self) -> None:
        """Forget every unfinished batch (exactly-once abort): positions stay where they were."""
        with self._cond:
            for st in self._parts.values():
                st.pending.clear()
            self._batches.clear()
            self._cond.notify_all()
