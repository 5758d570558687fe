"""The bench's read-back against a real broker: one full pass, and the soak's offset-window sample."""

from __future__ import annotations

import time
import zlib
from typing import Callable

from confluent_kafka import Consumer

from bench.readback import read_all, read_sampled, sample_windows, watermarks
from bench.run import create_topic, decode_event_time
from streamscore.produce import produce_events

N = 40_000


def _every_record(bootstrap: str, topic: str) -> dict[tuple[int, int], str]:
    """(partition, offset) -> event_id of every record, read plainly."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"all-{topic}", "auto.offset.reset": "earliest"})
    c.subscribe([topic])
    out: dict[tuple[int, int], str] = {}
    deadline = time.monotonic() + 120
    while len(out) < N and time.monotonic() < deadline:
        for m in c.consume(10000, 0.5):
            if m.error() is None:
                out[(m.partition(), m.offset())] = decode_event_time(m.value())[0]
    c.close()
    assert len(out) == N
    return out


def test_sampled_read_takes_exactly_the_planned_windows(bootstrap: str, names: Callable[[str], str]) -> None:
    topic = names("readback")
    create_topic(bootstrap, topic, partitions=4, append_time=True)
    produce_events({"bootstrap.servers": bootstrap}, topic, N, seed=8)
    every = _every_record(bootstrap, topic)

    ids: list[str] = []

    def decode(value: bytes) -> tuple[str, int]:
        got = decode_event_time(value)
        ids.append(got[0])
        return got

    rb = read_sampled(bootstrap, topic, decode, windows=8, size=200)
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": names("wm")})
    plan = sample_windows(watermarks(c, topic, 4), 8, 200)
    c.close()
    want = [every[(p, off)] for p, ws in plan.items() for s, e in ws for off in range(s, e)]
    assert rb.total == N and rb.planned == len(want) == 4 * 8 * 200
    assert rb.read == len(want) and len(ids) == len(set(ids))        # no record twice
    assert sorted(ids) == sorted(want)                                # exactly the windows' records
    assert len(rb.lat) == len(want) and all(lat > -1000 for lat in rb.lat)


def test_full_read_takes_every_step_and_the_crc_sampled_ids(bootstrap: str, names: Callable[[str], str]) -> None:
    topic = names("readall")
    create_topic(bootstrap, topic, partitions=4, append_time=True)
    produce_events({"bootstrap.servers": bootstrap}, topic, N, seed=8)
    every = set(_every_record(bootstrap, topic).values())
    rb = read_all(bootstrap, topic, decode_event_time, step=10, append_step=7)
    assert rb.read == rb.total == N
    assert len(rb.lat) == N // 10
    assert set(rb.appended) == {e for e in every if zlib.crc32(e.encode()) % 7 == 0}
    assert read_all(bootstrap, topic, decode_event_time, step=0).lat == []
