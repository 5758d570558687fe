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


def test_event_id_read_from_the_frame_of_a_transaction_and_a_prediction() -> None:
    import io
    import json
    import struct
    from pathlib import Path

    import fastavro

    from bench.chaos_kit import event_id

    cols = generate(3, seed=4, start=123_456_789)     # ids long enough for a 2-byte length
    values = encode_transactions(cols, 3)
    assert [event_id(v) for v in values] == list(cols["event_id"])
    # a prediction's first field is its event_id too: a record written from its schema
    schema = fastavro.parse_schema(json.loads((Path(__file__).parents[2] / "schemas" / "prediction.avsc").read_text()))
    eid = "e" * 70                                     # a length past one varint byte
    rec = {"event_id": eid, "key": "k", "model": "m", "version": "1", "variant": "primary", "score": 0.5,
           "decision": False, "event_time": 1, "scored_at": 2}
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, rec)
    assert event_id(b"\x00" + struct.pack(">I", 9) + buf.getvalue()) == eid



def test_append_latency_joins_ids_and_slices_by_input_second() -> None:
    from bench.run import append_latency_summary

    # 3 s of inputs, 1,000 a second; the first second's outputs take 50 ms, the rest 5 ms,
    # and 10 inputs never got an output
    t_in = {f"e{i}": 1_000_000 + i for i in range(3_000)}
    t_out = {k: t + (50 if t < 1_001_000 else 5) for k, t in t_in.items()}
    for i in range(2_990, 3_000):
        del t_out[f"e{i}"]
    s = append_latency_summary(t_in, t_out)
    assert s["p99_ms_by_second"] == [50.0, 5.0, 5.0]
    assert s["first_second_p99_ms"] == 50.0
    assert s["p50_ms"] == 5.0 and s["max_ms"] == 50
    assert s["samples"] == 2_990 and s["missing"] == 10


def test_append_latency_of_nothing_joined() -> None:
    from bench.run import append_latency_summary

    assert append_latency_summary({"a": 1}, {"b": 2})["samples"] == 0
