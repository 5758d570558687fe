"""Throughput of the batch codec vs fastavro per record: ``python -m bench.codec``."""

from __future__ import annotations

import io
import time
from typing import Any, Callable

import fastavro
import numpy as np

from schemas.codec.types import strip_logical
from schemas.columnar import BatchDecoder, BatchEncoder
from schemas.registry import SchemaRegistry
from schemas.wire import frame

BATCH = 1000


def _rate(fn: Callable[[], Any], rows: int, seconds: float = 1.0) -> float:
    """Rows per second over the fastest fifth of repeated calls (the box is shared,
    so slow outliers measure the neighbours, not the code)."""
    fn()
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    best = times[: max(1, len(times) // 5)]
    return rows * len(best) / sum(best)


def _transactions(n: int, schema: Any) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        rec: dict[str, Any] = {
            "event_id": f"evt-{i:012d}", "event_time": 1_700_000_000_000 + i, "account_id": f"acct-{i % 5000:06d}",
            "amount": float(rng.gamma(2.0, 40.0)), "currency": "EUR", "merchant_category": "5411", "country": "DE",
            "channel": ["POS", "ECOM", "ATM", "MOTO"][i % 4],
        }
        rec.update({f"f{k:02d}": float(x) for k, x in enumerate(rng.normal(size=15), 1)})
        fo = io.BytesIO()
        fastavro.schemaless_writer(fo, schema, rec)
        out.append(frame(1, fo.getvalue()))
    return out


def _predictions(n: int) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    return {
        "event_id": [f"evt-{i:012d}" for i in range(n)], "key": [f"acct-{i % 5000:06d}" for i in range(n)],
        "model": ["fraud-gbm"] * n, "version": ["3"] * n, "variant": np.zeros(n, np.int32), "score": rng.random(n),
        "decision": rng.random(n) > 0.9, "event_time": np.arange(n, dtype=np.int64) + 1_700_000_000_000,
        "scored_at": np.arange(n, dtype=np.int64) + 1_700_000_000_500,
    }


def main() -> dict[str, float]:
    reg = SchemaRegistry.default()
    tx = fastavro.parse_schema(strip_logical(reg.schema("transaction")))
    pred = fastavro.parse_schema(strip_logical(reg.schema("prediction")))
    values = _transactions(BATCH, tx)
    decoder = BatchDecoder(reg.schema("transaction"), reg)
    encoder = BatchEncoder(reg.schema("prediction"), reg.id_for("prediction"))
    cols = _predictions(BATCH)
    records = [dict(zip(cols, row)) for row in zip(*(np.asarray(c).tolist() for c in cols.values()))]
    records = [{**r, "variant": "primary"} for r in records]

    def fa_decode() -> None:
        for v in values:
            fastavro.schemaless_reader(io.BytesIO(v[5:]), tx, None)

    def fa_encode() -> None:
        for r in records:
            fo = io.BytesIO()
            fastavro.schemaless_writer(fo, pred, r)
            frame(2, fo.getvalue())

    res = {
        "decode_columnar": _rate(lambda: decoder.decode(values), BATCH),
        "decode_fastavro": _rate(fa_decode, BATCH, 0.5),
        "encode_columnar": _rate(lambda: encoder.encode(cols, BATCH), BATCH),
        "encode_fastavro": _rate(fa_encode, BATCH, 0.5),
    }
    for what in ("decode", "encode"):
        ours, ref = res[f"{what}_columnar"], res[f"{what}_fastavro"]
        print(f"{what}: columnar {ours:,.0f} rec/s  fastavro {ref:,.0f} rec/s  ratio {ours / ref:.1f}x  (batch {BATCH})")
    return res


if __name__ == "__main__":
    main()
