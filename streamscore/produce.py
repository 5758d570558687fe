"""The demo event generator behind ``streamscore produce``: Transaction events, flat out or at a rate."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from consumers.kafka_client import PRODUCER_DEFAULTS, make_producer, merged


@dataclass
class ProduceResult:
    events: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def encode_transactions(cols: dict[str, np.ndarray], n: int, fmt: str = "avro") -> list[bytes]:
    from schemas.columnar import BatchEncoder
    from schemas.registry import SchemaRegistry

    if fmt == "json":
        names = list(cols)
        out = []
        for i in range(n):
            rec = {k: _jsonable(cols[k][i]) for k in names}
            out.append(json.dumps(rec).encode())
        return out
    reg = SchemaRegistry.default()
    enc = _encoder_cache.get("transaction")
    if enc is None:
        enc = _encoder_cache["transaction"] = BatchEncoder(reg.schema("transaction"), reg.id_for("transaction"))
    return enc.encode(cols, n)  # type: ignore[no-any-return]


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
    """Write ``count`` events (global indices ``start..start+count``); ``rate`` events/s or flat out."""
    from models.demo_data import generate

    producer = make_producer(merged(PRODUCER_DEFAULTS, conf, {"linger.ms": 5}))
    if rate:
        chunk = max(1, min(chunk, int(rate * 0.005)))
    t0 = time.monotonic()
    sent = 0
    errors: list[str] = []

    def on_error(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    while sent < count:
        if stop is not None and stop():
            break
        n = min(chunk, count - sent)
        if rate:
            due = t0 + sent / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        cols = generate(n, seed=seed, start=start + sent, drift=drift, now_ms=int(time.time() * 1000))
        values = encode_transactions(cols, n, fmt)
        keys = [a.encode() for a in cols["account_id"].tolist()]
        for v, k in zip(values, keys):
            while True:
                try:
                    producer.produce(topic, v, k, on_delivery=on_error)
                    break
                except BufferError:
                    producer.poll(0.01)
        producer.poll(0)
        sent += n
        if progress is not None:
            progress(sent)
    remaining = producer.flush(60)
    if remaining or errors:
        raise RuntimeError(f"produce: {remaining} undelivered, {len(errors)} failed (first: {errors[:1]})")
    return ProduceResult(events=sent, seconds=time.monotonic() - t0)
