"""Where a backfill reads: a topic's offset range, or a Parquet/CSV file's rows."""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from consumers.work import SyntheticMessage
from schemas.errors import ConfigError, DeliveryError, StreamscoreError

log = logging.getLogger(__name__)


class Source(Protocol):
    """Where a backfill reads: ``total`` events planned, ``already`` done by an earlier run."""

    total: int
    already: int

    def chunks(self, max_rows: int) -> Iterator[list[Message]]: ...
    def close(self) -> None: ...


class TopicRange:
    """Every partition of ``topic`` from T1's offsets up to (not including) T2's; never waits for new data."""

    def __init__(self, conf: dict[str, Any], topic: str, *, ranges: dict[int, tuple[int, int]],
                 positions: dict[int, int]) -> None:
        self.topic = topic
        self.ranges = ranges
        self.consumer = Consumer({**conf, "enable.auto.commit": False, "enable.partition.eof": True,
                                  "auto.offset.reset": "earliest"})
        self.start = {p: max(lo, positions.get(p, lo)) for p, (lo, _) in ranges.items()}
        self.total = sum(hi - lo for lo, hi in ranges.values())
        self.already = sum(self.start[p] - lo for p, (lo, _) in ranges.items())

    @staticmethod
    def plan(conf: dict[str, Any], topic: str, from_ms: int | None, to_ms: int | None) -> dict[int, tuple[int, int]]:
        """Per partition (first offset with timestamp >= T1, first offset with timestamp >= T2)."""
        c = Consumer({**conf, "group.id": f"streamscore-backfill-plan-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False})
        try:
            md = c.list_topics(topic, timeout=15)
            tmd = md.topics.get(topic)
            if tmd is None or tmd.error is not None or not tmd.partitions:
                raise ConfigError(f"input topic {topic!r} does not exist (or has no partitions)")
            parts = sorted(tmd.partitions)
            marks = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=15) for p in parts}

            def at(ms: int | None, default: Callable[[int], int]) -> dict[int, int]:
                if ms is None:
                    return {p: default(p) for p in parts}
                found = c.offsets_for_times([TopicPartition(topic, p, ms) for p in parts], timeout=15)
                # -1: no message at or after ms -> the partition's end
                return {tp.partition: tp.offset if tp.offset >= 0 else marks[tp.partition][1] for tp in found}

            lo = at(from_ms, lambda p: marks[p][0])
            hi = at(to_ms, lambda p: marks[p][1])
        except KafkaException as exc:
            raise DeliveryError(f"reading the offsets of {topic!r}: {exc}") from exc
        finally:
            c.close()
        return {p: (lo[p], max(lo[p], hi[p])) for p in parts}

    def chunks(self, max_rows: int) -> Iterator[list[Message]]:
        todo = {p: (self.start[p], hi) for p, (_, hi) in self.ranges.items() if self.start[p] < hi}
        if not todo:
            return
        self.consumer.assign([TopicPartition(self.topic, p, lo) for p, (lo, _) in todo.items()])
        end = {p: hi for p, (_, hi) in todo.items()}
        while end:
            msgs = self.consumer.consume(max_rows, 1.0)
            keep: list[Message] = []
            finished: list[int] = []
            for m in msgs:
                err = m.error()
                p = m.partition()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:   # the range ends past what exists now
                        if p in end:
                            finished.append(p)
                        continue
                    if err.fatal():
                        raise DeliveryError(f"consumer fatal error: {err}")
                    log.warning("consumer error: %s", err)
                    continue
                hi = end.get(p)
                if hi is None:
                    continue
                off = m.offset()
                if off < hi:
                    keep.append(m)
                if off >= hi - 1:
                    finished.append(p)
            if not msgs:   # control records (transaction markers) can end a range without a message
                for tp in self.consumer.position([TopicPartition(self.topic, p) for p in end]):
                    if tp.offset >= end[tp.partition]:
                        finished.append(tp.partition)
            for p in set(finished):
                if p in end:
                    del end[p]
                    self.consumer.incremental_unassign([TopicPartition(self.topic, p)])
            if keep:
                yield keep

    def close(self) -> None:
        self.consumer.close()


class FileRows:
    """Rows of a Parquet or CSV file, as JSON records the pipeline's decoder reads (partition 0, offset = row)."""

    def __init__(self, path: Path, *, position: int) -> None:
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq

        if not path.is_file():
            raise ConfigError(f"--input-file: {path} does not exist")
        self.topic = str(path)
        try:
            if path.suffix.lower() in (".parquet", ".pq"):
                self.table = pq.read_table(path)
            elif path.suffix.lower() in (".csv", ".txt"):
                self.table = pacsv.read_csv(path)
            else:
                raise ConfigError(f"--input-file: {path} is neither .parquet nor .csv")
        except StreamscoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
            raise ConfigError(f"--input-file: cannot read {path}: {exc}") from exc
        self.total = self.table.num_rows
        self.start = min(position, self.total)
        self.already = self.start
        self.ranges = {0: (0, self.total)}

    def chunks(self, max_rows: int) -> Iterator[list[Message]]:
        for lo in range(self.start, self.total, max_rows):
            rows = self.table.slice(lo, max_rows).to_pylist()
            yield [SyntheticMessage(self.topic, lo + i, json.dumps(r, default=_json_default).encode())
                   for i, r in enumerate(rows)]

    def close(self) -> None:
        pass


def _json_default(v: Any) -> Any:
    if isinstance(v, dt.datetime):
        return int(v.timestamp() * 1000) if v.tzinfo else int(v.replace(tzinfo=dt.timezone.utc).timestamp() * 1000)
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    raise TypeError(f"{type(v).__name__} is not JSON serialisable")
