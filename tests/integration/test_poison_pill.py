"""One oversized record never stops the scorer: it becomes a bounded, deliverable dead letter.

The input topic accepts records of up to 5 MB; the producer of dead letters only 1 MB
(librdkafka's ``message.max.bytes``), the dead-letter topic the broker's default. Records
just over the scorer's ``max_message_bytes`` (and the producer's limit), just under the
broker's default, far over both, and one just under the scorer's limit that does not
decode (its dead letter, value plus headers, would still exceed the producer's limit).
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Callable

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from streamscore.produce import produce_events
from tests.integration.helpers import ScorerProcess, decode_prediction, read_all, write_config

pytestmark = pytest.mark.integration

GOOD = 1_000
OVERSIZED = [1_000_001, 1_048_000, 3_000_000]     # over the scorer's 1,000,000-byte limit
UNDECODABLE = 999_990                              # under it, but garbage


def _make_topics(bootstrap: str, t_in: str, t_out: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([
        NewTopic(t_in, num_partitions=2, replication_factor=-1, config={"max.message.bytes": "5000000"}),
        NewTopic(t_out, num_partitions=2, replication_factor=-1),
        NewTopic(f"{t_in}.dlq", num_partitions=2, replication_factor=-1),
    ])
    for fut in futures.values():
        fut.result(30)


@pytest.mark.parametrize("mode", ["at_least_once", "exactly_once"])
def test_oversized_records_become_bounded_dead_letters_and_the_scorer_goes_on(
        tmp_path: Path, bootstrap: str, names: Callable[[str], str], mode: str) -> None:
    t_in, t_out, group = names("pp-in"), names("pp-out"), names("pp-g")
    _make_topics(bootstrap, t_in, t_out)
    conf = {"bootstrap.servers": bootstrap}
    produce_events(conf, t_in, GOOD // 2, seed=5)
    big = Producer({**conf, "message.max.bytes": 5_000_000})
    for i, size in enumerate([*OVERSIZED, UNDECODABLE]):
        big.produce(t_in, b"\x07" * size, key=f"poison-{i}".encode(), partition=i % 2)
    assert big.flush(30) == 0
    produce_events(conf, t_in, GOOD - GOOD // 2, seed=5, start=GOOD // 2)

    cfg = write_config(tmp_path / "pp.yaml", bootstrap, group,
                       [{"name": "fraud", "input": {"topic": t_in}, "model": {"name": "fraud-mlp"},
                         "output": {"topic": t_out}, "batching": {"max_size": 200}}],
                       delivery=mode)
    scorer = ScorerProcess(cfg, tmp_path / "scorer.log", "--instance", "pp")
    try:
        isolation = "read_committed" if mode == "exactly_once" else "read_uncommitted"
        preds = read_all(bootstrap, t_out, expect=GOOD, timeout=150, isolation=isolation, alive=scorer)
        dead = read_all(bootstrap, f"{t_in}.dlq", expect=4, timeout=60, isolation=isolation, alive=scorer)
        preds = read_all(bootstrap, t_out, expect=len(preds), timeout=30, isolation=isolation, idle=2.0)
        assert scorer.proc.poll() is None, f"the scorer exited:\n{scorer.output()[-3000:]}"
        assert scorer.terminate() == 0, scorer.output()[-3000:]
    finally:
        scorer.close()

    ids = collections.Counter(decode_prediction(m.value())["event_id"] for m in preds)
    assert len(ids) == GOOD, f"{GOOD - len(ids)} good events not scored"
    assert max(ids.values()) == 1, f"duplicates: {[k for k, c in ids.items() if c > 1][:5]}"

    assert len(dead) == 4
    by_key = {m.key().decode(): m for m in dead}
    for i, size in enumerate([*OVERSIZED, UNDECODABLE]):
        m = by_key[f"poison-{i}"]
        h = {k: v.decode() for k, v in m.headers()}
        assert h["error.class"] == ("oversized" if size in OVERSIZED else h["error.class"])
        assert h["dlq.truncated"] == "true", h
        assert int(h["dlq.original.bytes"]) == size
        assert len(m.value()) == int(h["dlq.prefix.bytes"]) <= 65536
        assert m.value() == b"\x07" * len(m.value()), "the prefix is the original's first bytes"
        assert h["source.topic"] == t_in
    reasons = collections.Counter(dict(m.headers())["error.class"].decode() for m in dead)
    assert reasons["oversized"] == 3, reasons
