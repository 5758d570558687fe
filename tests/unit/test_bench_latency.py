"""The bench's latency arithmetic: percentiles, 5-s slices, warm-up cut, event_time decode."""

from __future__ import annotations

import numpy as np

from bench.run import decode_event_time, latency_summary
from models.demo_data import generate
from streamscore.produce import encode_transactions


def test_summary_percentiles_slices_and_warmup() -> None:
    # 20 s of sends, one per ms; the first 5 s are slow (100 ms), the rest 10 ms, with
    # one 500-ms outlier in every 1,000 records after the warm-up
    sent = list(range(1_000_000, 1_020_000))
    lat = [100.0 if t < 1_005_000 else 10.0 for t in sent]
    for i in range(5_000, 20_000, 1_000):
        lat[i] = 500.0
    s = latency_summary(lat, sent, warmup_s=5.0)
    assert s["p50_ms"] == 10.0
    assert s["p99_ms"] == 100.0                      # a quarter of the window is 100 ms
    assert s["p99_ms_by_5s"] == [100.0, 10.0, 10.0, 10.0]
    assert s["p50_ms_after_warmup"] == 10.0
    assert s["p99_ms_after_warmup"] == 10.0          # 1 in 1,000 is above the 99th percentile
    assert s["warmup_s"] == 5.0


def test_summary_of_nothing() -> None:
    assert latency_summary([], [], 5.0) == {"p50_ms": None, "p99_ms": None}


def test_event_time_decoded_from_transaction_bytes() -> None:
    cols = generate(3, seed=1)
    cols["event_time"] = np.array([1_700_000_000_123, 5, 1_800_000_000_000], dtype=np.int64)
    values = encode_transactions(cols, 3)
    got = [decode_event_time(v) for v in values]
    assert [t for _, t in got] == [1_700_000_000_123, 5, 1_800_000_000_000]
    assert [e for e, _ in got] == list(cols["event_id"])
