"""Reading a bench topic back after a run: every record in one pass, or a sample of offset windows.

``read_all`` fetches every record of a topic once and takes from that one pass both what the
event_time figures need (every ``step``-th record decoded: append time - event_time) and what
the append-to-append join needs (append time of the ids whose crc32 is a multiple of
``append_step``: the same ids on the input and the output topic, so the two samples join by id).

``read_sampled`` (the soak's read-back, tens of millions of records) does not fetch everything:
``sample_windows`` splits each partition's offset range [low, high) into ``windows`` equal strata
(256) and takes ``size`` (500) consecutive offsets around one point in each, inside the stratum.
The point sits at the same fraction of every stratum of a partition, and that fraction is
staggered across partitions ((j + 0.5) / P for the j-th of P partitions), so the windows of all
partitions together fall at P * ``windows`` evenly spaced points of the run. A partition's
offsets are appended in time order at a steady rate, so the sample (512k records per 4-partition
topic, whatever the run's length) is spread evenly over the run's duration, no start or end bias.
Every sampled record is decoded; as in ``read_all``, a record's latency is its own append time -
its event_time, no join. Many short windows, not a few long ones: latency spikes are clustered
in time, and a p99 over few clusters swings with which spikes they happen to catch.
"""

from __future__ import annotations

import math
import time
import uuid
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Decode = Callable[[bytes], tuple[str, int]]     # a record's value -> (event_id, event_time ms)
PROBE_PREFIX = "evt-7-"       # the probe events produced before a load window: not part of it
PROBE = PROBE_PREFIX.encode()


@dataclass
class ReadBack:
    """What a read-back took from a topic.

    ``lat``/``sent``: append time - event_time and event_time (ms) of the decoded records, probes
    left out; ``appended``: event_id -> append time of the crc-sampled ids; ``read``: records
    fetched; ``total``: records in the topic (``read`` when everything was fetched); ``planned``:
    the offsets a sample meant to read (``read`` falls short if a window's records were gone)."""

    lat: list[float] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)
    appended: dict[str, int] = field(default_factory=dict)
    read: int = 0
    total: int = 0
    planned: int = 0
    seconds: float = 0.0

    def take(self, value: bytes, append_ms: int, decode: Decode) -> None:
        event_id, event_time = decode(value)
        if not event_id.startswith(PROBE_PREFIX):
            self.lat.append(append_ms - event_time)
            self.sent.append(event_time)


def _reader(bootstrap: str, **settings: Any) -> Any:
    from confluent_kafka import Consumer

    return Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{uuid.uuid4().hex[:6]}",
                     "auto.offset.reset": "earliest", "enable.auto.commit": False, **settings})


def read_all(bootstrap: str, topic: str, decode: Decode, step: int, append_step: int = 0,
             idle_s: float = 3.0) -> ReadBack:
    """Every record of ``topic`` in one pass: every ``step``-th decoded (``lat``/``sent``; none if 0) and, if
    ``append_step`` > 0, the append time of each id whose crc32 is a multiple of it (``appended``).
    Nothing may still be writing to ``topic``: the read ends at the high watermarks it finds first
    (or after ``idle_s`` without a record, should the last offsets hold no record)."""
    from confluent_kafka import TopicPartition

    from bench.chaos_kit import event_id_bytes

    t0 = time.monotonic()
    reader = _reader(bootstrap)
    ranges = watermarks(reader, topic)
    last = {p: hi - 1 for p, (lo, hi) in ranges.items() if hi > lo}     # partition -> its last offset
    reader.assign([TopicPartition(topic, p, ranges[p][0]) for p in last])
    rb = ReadBack()
    idle = time.monotonic()
    while last and time.monotonic() - idle < idle_s:
        msgs = reader.consume(10000, 0.5)
        if msgs:
            idle = time.monotonic()
        for m in msgs:
            if m.error() is not None:
                continue
            if m.offset() >= last.get(m.partition(), -1):
                last.pop(m.partition(), None)
            rb.read += 1
            value, ts = m.value(), m.timestamp()[1]
            if step and rb.read % step == 0:
                rb.take(value, ts, decode)
            if append_step:
                eid = event_id_bytes(value)     # the first field of a transaction and of a prediction
                if (append_step == 1 or zlib.crc32(eid) % append_step == 0) and not eid.startswith(PROBE):
                    rb.appended[eid.decode()] = ts
    reader.close()
    rb.total, rb.seconds = rb.read, time.monotonic() - t0
    return rb


def sample_windows(ranges: Mapping[int, tuple[int, int]], windows: int, size: int) -> dict[int, list[tuple[int, int]]]:
    """Offset windows [start, end) per partition, in offset order: ``windows`` of ``size`` offsets
    each, one per equal stratum of the partition's [low, high), staggered across partitions (see
    the module docstring). A partition with at most ``windows * size`` offsets is read whole."""
    if windows < 1 or size < 1:
        raise ValueError(f"windows and size must be >= 1, got {windows} and {size}")
    parts = sorted(ranges)
    plan: dict[int, list[tuple[int, int]]] = {}
    for j, p in enumerate(parts):
        lo, hi = ranges[p]
        span = hi - lo
        if span <= 0:
            plan[p] = []
        elif span <= windows * size:
            plan[p] = [(lo, hi)]
        else:
            stride = span / windows
            phase = (j + 0.5) / len(parts)
            plan[p] = []
            for i in range(windows):    # centred on its point, kept inside its own stratum
                first, last = lo + math.ceil(i * stride), lo + math.floor((i + 1) * stride) - size
                start = min(max(first, lo + round((i + phase) * stride - size / 2)), last)
                plan[p].append((start, start + size))
    return plan


def watermarks(consumer: Any, topic: str, partitions: int | None = None) -> dict[int, tuple[int, int]]:
    """partition -> (low, high) watermarks of ``topic``'s first ``partitions`` (default: all),
    asked of the broker (not cached)."""
    from confluent_kafka import KafkaException, TopicPartition

    if partitions is None:
        partitions = len(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
    out: dict[int, tuple[int, int]] = {}
    for p in range(partitions):
        for _ in range(50):
            try:
                out[p] = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5, cached=False)
                break
            except KafkaException:   # leadership still settling: ask again
                time.sleep(0.1)
        else:
            raise RuntimeError(f"no watermark for {topic}[{p}]")
    return out


def read_sampled(bootstrap: str, topic: str, decode: Decode, windows: int = 256, size: int = 500,
                 idle_s: float = 5.0) -> ReadBack:
    """The records of ``sample_windows`` over ``topic``'s offsets, every one decoded; ``total``
    counts the topic's records by its watermarks. One consumer reads all partitions, seeking
    each to its next window once the current one is read."""
    from confluent_kafka import TopicPartition

    t0 = time.monotonic()
    # prefetch about one window per partition, not librdkafka's 100k records (a seek drops them)
    reader = _reader(bootstrap, **{"queued.min.messages": size, "fetch.wait.max.ms": 20,
                                   "fetch.queue.backoff.ms": 5, "max.partition.fetch.bytes": 200 * size})
    ranges = watermarks(reader, topic)
    plan = {p: ws for p, ws in sample_windows(ranges, windows, size).items() if ws}
    rb = ReadBack(total=sum(hi - lo for lo, hi in ranges.values()))
    at = dict.fromkeys(plan, 0)                     # partition -> index of its current window
    pos = {p: ws[0][0] for p, ws in plan.items()}   # partition -> next offset wanted
    if plan:
        reader.assign([TopicPartition(topic, p, pos[p]) for p in plan])
    idle = time.monotonic()
    while at and time.monotonic() - idle < idle_s:
        msgs = reader.consume(10000, 0.002)   # whatever has come: a seek refills one window only
        if msgs:
            idle = time.monotonic()
        for m in msgs:
            p = m.partition()
            if m.error() is not None or p not in at or m.offset() < pos[p]:
                continue            # done, or fetched before the last seek
            start, end = plan[p][at[p]]
            off = m.offset()
            if off < end:
                rb.read += 1
                rb.take(m.value(), m.timestamp()[1], decode)
                pos[p] = off + 1
            if off >= end - 1:      # this window is read (or the log skipped past its end)
                at[p] += 1
                if at[p] == len(plan[p]):
                    del at[p]
                    reader.pause([TopicPartition(topic, p)])
                else:
                    pos[p] = plan[p][at[p]][0]
                    reader.seek(TopicPartition(topic, p, pos[p]))
    reader.close()
    rb.planned = sum(e - s for ws in plan.values() for s, e in ws)
    rb.seconds = time.monotonic() - t0
    return rb
