"""The demo event generator behind ``streamscore produce``: Transaction events, flat out or at a rate."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from consumers.kafka_client import PRODUCER_DEFAULTS, make_producer, merged
from schemas.errors import DeliveryError
from schemas.columnar import long_bytes


@dataclass
class ProduceResult:
    events: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def encode_transactions(cols: dict[str, np.ndarray], n: int, fmt: str = "avro") -> list[bytes]:
    if fmt == "json":
        names = list(cols)
        out = []
        for i in range(n):
            rec = {k: _jsonable(cols[k][i]) for k in names}
            out.append(json.dumps(rec).encode())
        return out
    return _transaction_encoder().encode(cols, n)  # type: ignore[no-any-return]


def _transaction_encoder() -> Any:
    from schemas.columnar import BatchEncoder
    from schemas.registry import SchemaRegistry

    enc = _encoder_cache.get("transaction")
    if enc is None:
        reg = SchemaRegistry.default()
        enc = _encoder_cache["transaction"] = BatchEncoder(reg.schema("transaction"), reg.id_for("transaction"))
    return enc


_encoder_cache: dict[str, Any] = {}


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v


def produce_events(
    conf: dict[str, Any],
    topic: str,
    count: int,
    *,
    rate: float | None = None,
    seed: int = 0,
    start: int = 0,
    drift: Any = None,
    fmt: str = "avro",
    chunk: int = 5000,
    progress: Callable[[int], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> ProduceResult:
    """Write ``count`` events (global indices ``start..start+count``); ``rate`` events/s or flat out.

    Events are generated in large vectorised blocks; each small send chunk is stamped with
    the time it is sent (``event_time``) just before it goes out (Avro: written into the
    already encoded bytes, see ``_StampedBlock``), so latency measured from ``event_time``
    starts when the event really leaves the producer.
    Avro chunks are enqueued with one librdkafka call (sinks.batch_produce) and keyed
    partitioning; the chunk's last message goes through ``produce()`` with a delivery
    callback, so a failing producer is still reported.
    """
    from models.demo_data import generate
    from sinks.batch_produce import BatchProducer

    producer = make_producer(merged(PRODUCER_DEFAULTS, {"linger.ms": 5, "delivery.report.only.error": True}, conf))
    batch = BatchProducer.attach(producer) if fmt == "avro" else None
    if rate:
        chunk = max(1, min(chunk, int(rate * 0.002)))
    # events are generated in blocks between sends; a 50k block stalled the sender ~45 ms
    # (then a catch-up burst) every 0.27 s at 180k/s, a latency spike no steady fleet makes
    block = max(chunk, 8192)
    t0 = time.monotonic()
    sent = 0
    errors: list[str] = []

    def on_error(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    produce = producer.produce
    cols: dict[str, np.ndarray] = {}
    stamped: _StampedBlock | None = None
    block_start = stamp_start = 0
    while sent < count:
        if stop is not None and stop():
            break
        if sent - block_start >= len(cols.get("event_id", ())):
            block_start = sent
            cols = generate(min(block, count - sent), seed=seed, start=start + sent, drift=drift)
            stamped = None
        lo = sent - block_start
        n = min(chunk, count - sent, len(cols["event_id"]) - lo)
        if batch is not None:
            if stamped is None or sent - stamp_start >= stamped.n:
                stamp_start = sent
                stamped = _StampedBlock({k: v[lo:lo + _STAMP_ROWS] for k, v in cols.items()})
            n = min(n, stamped.n - (sent - stamp_start))
        if rate:
            delay = t0 + sent / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        now_ms = int(time.time() * 1000)
        if batch is not None and stamped is not None:
            buf, starts, lengths, keycol = stamped.stamp(sent - stamp_start, n, now_ms)
            try:
                batch.produce(topic, buf, starts[:-1], lengths[:-1], np.full(n - 1, -1, np.int32), keys=keycol.buf,
                              key_starts=keycol.start[:-1], key_lengths=keycol.length[:-1], poll=producer.poll)
            except RuntimeError as exc:
                raise DeliveryError(f"produce to {topic}: {exc}") from exc
            values = [buf[starts[-1]:starts[-1] + lengths[-1]].tobytes()]
            keys = [keycol.buf[keycol.start[-1]:keycol.start[-1] + keycol.length[-1]].tobytes()]
        else:
            part = {k: v[lo:lo + n] for k, v in cols.items()}
            part["event_time"] = np.full(n, now_ms, dtype=np.int64)
            values = encode_transactions(part, n, fmt)
            keys = [a.encode() for a in part["account_id"].tolist()]
        for v, k in zip(values, keys):
            while True:
                try:
                    produce(topic, v, k, on_delivery=on_error)
                    break
                except BufferError:
                    producer.poll(0.01)
        producer.poll(0)
        sent += n
        if progress is not None:
            progress(sent)
    remaining = producer.flush(60)
    if remaining or errors:
        raise DeliveryError(f"produce to {topic}: {remaining} undelivered, {len(errors)} failed "
                            f"(first: {errors[0] if errors else 'none failed, the broker did not answer in 60 s'})")
    return ProduceResult(events=sent, seconds=time.monotonic() - t0)


_STAMP_ROWS = 4096


class _StampedBlock:
    """Transaction events encoded once; each send chunk gets its ``event_time`` written in place.

    Encoding each 2-ms chunk (a few hundred events) on its own costs mostly per-call overhead,
    and the load generator shares the machine with the broker and the scorer in the bench.
    The encoder reports where ``event_time`` starts in each row; a chunk's send time has the
    same varint width as the block's (for decades at a time, else the block is re-encoded), so
    stamping is one vectorised write per chunk.
    """

    def __init__(self, cols: dict[str, np.ndarray]) -> None:
        from schemas.columns import StrColumn

        self.cols = cols
        self.n = len(cols["event_id"])
        self.keys = StrColumn.from_list(cols["account_id"].tolist())
        self._encode(int(time.time() * 1000))

    def _encode(self, now_ms: int) -> None:
        cols = dict(self.cols)
        cols["event_time"] = np.full(self.n, now_ms, dtype=np.int64)
        self.buf, self.starts, self.lengths, marks = _transaction_encoder().encode_buffer_marked(
            cols, self.n, "event_time")
        self.width = len(long_bytes(now_ms))
        self.pos = marks[:, None] + np.arange(self.width)

    def stamp(self, lo: int, n: int, now_ms: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any]:
        """Rows ``lo..lo+n`` with ``event_time = now_ms``: (buffer, starts, lengths, key column)."""
        raw = long_bytes(now_ms)
        if len(raw) != self.width:
            self._encode(now_ms)
            raw = long_bytes(now_ms)
        self.buf[self.pos[lo:lo + n]] = raw
        k = self.keys
        return (self.buf, self.starts[lo:lo + n], self.lengths[lo:lo + n],
                type(k)(k.buf, k.start[lo:lo + n], k.length[lo:lo + n]))


def label_records(n: int, *, seed: int = 0, start: int = 0, now_ms: int, max_delay_ms: int = 60_000,
                  dup: float = 0.05, missing: float = 0.10, drift: Any = None,
                  concept_from: int | None = None) -> list[tuple[bytes, bytes]]:
    """(key, JSON value) of the demo's true labels (its hidden rule) for events ``start..start+n``:
    each ``now_ms`` + a random delay, sent in label-time order (so out of event order), a share
    ``missing`` never sent and a share ``dup`` sent twice (the duplicate a second later).
    ``concept_from``: events from this global index on follow the drifted rule (``labels``)."""
    from models.demo_data import generate, labels

    cols = generate(n, seed=seed, start=start, drift=drift)
    y = labels(cols, concept=None if concept_from is None else np.arange(start, start + n) >= concept_from)
    rng = np.random.default_rng([seed, start, 15])
    keep = rng.random(n) >= missing
    delay = rng.integers(0, max(max_delay_ms, 1), n)
    rows = [(int(now_ms + delay[i]), i) for i in np.flatnonzero(keep)]
    rows += [(t + 1000, i) for t, i in rows if rng.random() < dup]
    out = []
    for t, i in sorted(rows):
        rec = {"event_id": str(cols["event_id"][i]), "label": bool(y[i]), "label_time": t}
        out.append((str(cols["account_id"][i]).encode(), json.dumps(rec).encode()))
    return out


def produce_labels(conf: dict[str, Any], topic: str, records: list[tuple[bytes, bytes]]) -> int:
    """Write label records (keyed like their events, so they meet their predictions' partition)."""
    producer = make_producer(merged(PRODUCER_DEFAULTS, {"linger.ms": 5}, conf))
    errors: list[str] = []

    def on_error(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    for key, value in records:
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=on_error)
                break
            except BufferError:
                producer.poll(0.01)
    remaining = producer.flush(60)
    if remaining or errors:
        raise DeliveryError(f"produce labels to {topic}: {remaining} undelivered, {len(errors)} failed "
                            f"(first: {errors[0] if errors else 'the broker did not answer in 60 s'})")
    return len(records)
