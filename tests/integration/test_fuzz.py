"""Fuzz the scoring process: >= 10,000 malformed payloads, drawn by hypothesis, mixed with good ones.

A real ``streamscore serve`` process must survive all of them, dead-letter every bad one
with its original bytes and the error headers, and score every good one exactly once.
"""

from __future__ import annotations

import collections
import io
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import fastavro
import pytest
from confluent_kafka import Producer
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from models.demo_data import generate
from schemas.wire import frame
from streamscore.produce import encode_transactions
from tests.integration.helpers import ROOT, ScorerProcess, decode_prediction, read_all, write_config

pytestmark = pytest.mark.integration

MAX_BYTES = 600            # input.max_message_bytes in this test (a good record is ~175 bytes)
AMOUNT_RANGE = (0.0, 1.0e9)
FEATURES = ["amount"] + [f"f{i:02d}" for i in range(1, 16)]
REGISTERED_IDS = set(json.loads((ROOT / "schemas" / "ids.json").read_text()).values())
HEADERS = ("error.class", "error.message", "source.topic", "source.partition", "source.offset", "pipeline", "time")

# kind -> the dead-letter reason the scorer must give it (None: a good event, to be scored)
REASON: dict[str, str | None] = {
    "good": None,
    "random_bytes": "wire_format",      # arbitrary bytes, first byte not the magic 0
    "short": "wire_format",             # shorter than the 5-byte header
    "empty": "wire_format",             # b""
    "none": "wire_format",              # a null value (tombstone)
    "bad_magic": "wire_format",         # a good body behind a non-zero magic byte
    "unknown_schema": "unknown_schema",  # a good body under an id nobody registered
    "truncated": "decode",              # a good record cut short
    "trailing": "decode",               # a good record with bytes after its end
    "wrong_type": "schema_resolution",  # a Prediction record under its own (registered) id
    "oversized": "oversized",           # a valid record larger than max_message_bytes
    "huge_amount": "validation",        # amount outside the configured range
    "non_finite": "validation",         # NaN / inf in a model feature
}
# "good" appears 4 times among 16 choices: about a quarter of the payloads are good
KIND_CHOICES = ["good"] * 4 + [k for k in REASON if k != "good"]

_PRED_SCHEMA = fastavro.parse_schema(json.loads((ROOT / "schemas" / "prediction.avsc").read_text()))
_PRED_ID = json.loads((ROOT / "schemas" / "ids.json").read_text())["prediction"]


def _prediction_records() -> st.SearchStrategy[dict[str, Any]]:
    text = st.text(max_size=20)
    return st.fixed_dictionaries({
        "event_id": text, "key": text, "model": text, "version": text,
        "variant": st.sampled_from(["primary", "canary", "shadow"]),
        "score": st.floats(allow_nan=True, allow_infinity=True), "decision": st.booleans(),
        "event_time": st.integers(0, 2**62), "scored_at": st.integers(0, 2**62),
    })


@st.composite
def payload_spec(draw: st.DrawFn) -> tuple[str, Any]:
    """(kind, parameter): the parameter is all hypothesis decides about this payload."""
    kind = draw(st.sampled_from(KIND_CHOICES))
    param: Any = None
    if kind == "random_bytes":
        param = bytes([draw(st.integers(1, 255))]) + draw(st.binary(max_size=300))
    elif kind == "short":
        param = draw(st.binary(min_size=1, max_size=4))
    elif kind == "bad_magic":
        param = draw(st.integers(1, 255))
    elif kind == "unknown_schema":
        param = draw(st.integers(0, 2**32 - 1).filter(lambda i: i not in REGISTERED_IDS))
    elif kind == "truncated":
        param = draw(st.floats(0.0, 1.0, exclude_max=True))      # where to cut, as a fraction of the body
    elif kind == "trailing":
        param = draw(st.binary(min_size=1, max_size=16))
    elif kind == "wrong_type":
        param = draw(_prediction_records())
    elif kind == "oversized":
        param = draw(st.integers(MAX_BYTES, 20 * MAX_BYTES))       # padding of event_id
    elif kind == "huge_amount":
        param = draw(st.floats(min_value=AMOUNT_RANGE[1], exclude_min=True, allow_infinity=False)
                     | st.floats(max_value=AMOUNT_RANGE[0], exclude_max=True, allow_infinity=False))
    elif kind == "non_finite":
        param = (draw(st.sampled_from(FEATURES)), draw(st.sampled_from([math.nan, math.inf, -math.inf])))
    return kind, param


def draw_specs(total: int) -> list[tuple[str, Any]]:
    """``total`` payload specs from hypothesis, reproducibly (derandomized: same list every run)."""
    per_example = 100
    pool: list[tuple[str, Any]] = []

    # hypothesis bounds one example's size, so the payloads come as many examples of 100
    @settings(max_examples=-(-total // per_example), derandomize=True, database=None, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(st.lists(payload_spec(), min_size=per_example, max_size=per_example))
    def collect(specs: list[tuple[str, Any]]) -> None:
        pool.extend(specs)

    collect()
    return pool[:total]


def materialize(specs: list[tuple[str, Any]], seed: int) -> tuple[list[bytes | None], list[str | None]]:
    """Payload bytes for each spec; row i of the generator backs spec i (unique event ids)."""
    n = len(specs)
    cols = generate(n, seed=seed)
    cols = {k: v.copy() for k, v in cols.items()}
    for i, (kind, param) in enumerate(specs):
        if kind == "oversized":
            cols["event_id"][i] = f"{cols['event_id'][i]}-{'x' * param}"
        elif kind == "huge_amount":
            cols["amount"][i] = param
        elif kind == "non_finite":
            cols[param[0]][i] = param[1]
    encoded = encode_transactions(cols, n)
    values: list[bytes | None] = []
    for i, (kind, param) in enumerate(specs):
        good = encoded[i]
        if kind in ("good", "oversized", "huge_amount", "non_finite"):
            v: bytes | None = good
        elif kind in ("random_bytes", "short"):
            v = param
        elif kind == "empty":
            v = b""
        elif kind == "none":
            v = None
        elif kind == "bad_magic":
            v = bytes([param]) + good[1:]
        elif kind == "unknown_schema":
            v = frame(param, good[5:])
        elif kind == "truncated":
            v = good[: 5 + int(param * (len(good) - 5))]
        elif kind == "trailing":
            v = good + param
        elif kind == "wrong_type":
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, _PRED_SCHEMA, param)
            v = frame(_PRED_ID, buf.getvalue())
        else:
            raise AssertionError(kind)
        values.append(v)
    event_ids = [str(e) for e in cols["event_id"].tolist()]
    return values, [event_ids[i] if kind == "good" else None for i, (kind, _) in enumerate(specs)]


def test_fuzzed_payloads_are_dead_lettered_and_good_ones_scored_once(
        tmp_path: Path, bootstrap: str, names: Callable[[str], str], topics: Callable[..., None]) -> None:
    specs = draw_specs(16_000)
    kinds = collections.Counter(k for k, _ in specs)
    n_bad = sum(c for k, c in kinds.items() if k != "good")
    assert n_bad >= 10_000 and kinds["good"] >= 1_000, kinds
    assert set(kinds) == set(REASON), f"hypothesis drew no {set(REASON) - set(kinds)}"
    values, good_ids = materialize(specs, seed=31)
    sizes = [(k, 0 if v is None else len(v)) for v, (k, _) in zip(values, specs)]
    assert all((size > MAX_BYTES) == (k == "oversized") for k, size in sizes), "payload sizes do not match kinds"

    t_in, t_out = names("fz"), names("pred")
    dlq = f"{t_in}.dlq"
    topics({t_in: 3, t_out: 3, dlq: 3})
    where: dict[tuple[int, int], int] = {}          # (partition, offset) -> payload index
    failures: list[str] = []

    def delivered(i: int) -> Callable[[Any, Any], None]:
        def cb(err: Any, msg: Any) -> None:
            if err is not None:
                failures.append(str(err))
            else:
                where[(msg.partition(), msg.offset())] = i
        return cb

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    for i, v in enumerate(values):
        producer.produce(t_in, v, f"k{i}".encode(), partition=i % 3, on_delivery=delivered(i))
        if i % 1000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0 and not failures, failures[:3]
    assert len(where) == len(values)

    cfg = write_config(tmp_path / "p.yaml", bootstrap, names("g"), [{
        "name": "fraud", "model": {"name": "fraud-mlp"}, "output": {"topic": t_out},
        "input": {"topic": t_in, "max_message_bytes": MAX_BYTES, "validate_finite": True,
                  "ranges": {"amount": list(AMOUNT_RANGE)}},
    }])
    started_ms = int(time.time() * 1000)
    scorer = ScorerProcess(cfg, tmp_path / "scorer.log")
    try:
        dead = read_all(bootstrap, dlq, expect=n_bad, timeout=180, idle=2.0)
        preds = read_all(bootstrap, t_out, expect=kinds["good"], timeout=120, idle=2.0)
        assert scorer.proc.poll() is None, f"the scorer died:\n{scorer.output()[-3000:]}"
        assert scorer.terminate() == 0, scorer.output()[-3000:]
    finally:
        scorer.close()
    log = scorer.output()
    assert "Traceback" not in log, log[-3000:]

    # every good payload scored exactly once, nothing else scored
    scored = collections.Counter(decode_prediction(m.value())["event_id"] for m in preds)
    want = {e for e in good_ids if e is not None}
    assert set(scored) == want, f"{len(want - set(scored))} good events unscored, {len(set(scored) - want)} extra"
    assert max(scored.values()) == 1, "a good event was scored twice"

    # every bad payload dead-lettered once, with its original bytes and complete headers
    assert len(dead) == n_bad, f"{len(dead)} dead letters for {n_bad} bad payloads"
    seen: set[int] = set()
    by_reason: collections.Counter[str] = collections.Counter()
    for m in dead:
        h = {k: v.decode() for k, v in (m.headers() or [])}
        assert set(HEADERS) <= set(h), f"missing headers {set(HEADERS) - set(h)}"
        i = where[(int(h["source.partition"]), int(h["source.offset"]))]
        kind = specs[i][0]
        assert i not in seen, f"payload {i} dead-lettered twice"
        seen.add(i)
        assert h["error.class"] == REASON[kind], f"{kind} payload {i}: reason {h['error.class']}: {h['error.message']}"
        assert h["error.message"].strip()
        assert h["source.topic"] == t_in and h["pipeline"] == "fraud"
        assert started_ms - 60_000 <= int(h["time"]) <= int(time.time() * 1000)
        assert m.value() == values[i], f"{kind} payload {i}: the dead letter is not the original bytes"
        assert m.key() == f"k{i}".encode()
        by_reason[h["error.class"]] += 1
    expected_reasons = collections.Counter(REASON[k] for k, _ in specs if REASON[k] is not None)
    assert by_reason == expected_reasons
    assert set(by_reason) == {"wire_format", "unknown_schema", "decode", "schema_resolution", "oversized",
                              "validation"}
