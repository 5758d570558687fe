"""Exactly-once: transactional consume-score-produce, checked with read_committed readers."""

from __future__ import annotations

import collections
import threading
from pathlib import Path
from typing import Any, Callable

import pytest

from models.demo_data import generate
from streamscore.produce import produce_events
from tests.integration.helpers import ScorerProcess, committed, decode_prediction, read_all, wait_for, write_config

pytestmark = pytest.mark.integration


def _cfg(tmp_path: Path, bootstrap: str, group: str, t_in: str, t_out: str) -> Path:
    return write_config(tmp_path / "eos.yaml", bootstrap, group,
                        [{"name": "fraud", "input": {"topic": t_in}, "model": {"name": "fraud-mlp"},
                          "output": {"topic": t_out}, "batching": {"max_size": 500}}],
                        delivery="exactly_once", commit_interval_ms=100)


def _ids(msgs: list[Any]) -> collections.Counter[str]:
    return collections.Counter(decode_prediction(m.value())["event_id"] for m in msgs)


def test_exactly_once_across_sigkills(tmp_path: Path, bootstrap: str, names: Callable[[str], str],
                                      topics: Callable[..., None]) -> None:
    n = 40_000
    t_in, t_out, group = names("tx"), names("pred"), names("g")
    topics({t_in: 4, t_out: 4})
    cfg = _cfg(tmp_path, bootstrap, group, t_in, t_out)
    producer = threading.Thread(target=produce_events, args=({"bootstrap.servers": bootstrap}, t_in, n),
                                kwargs={"seed": 21, "rate": 8_000})
    producer.start()
    kills = 0
    for round_ in range(2):   # kill twice while events are still arriving
        proc = ScorerProcess(cfg, tmp_path / f"s{round_}.log", "--instance", "slot-0")
        try:
            before = sum(max(0, o) for o in committed(bootstrap, group, t_in, 4).values())
            wait_for(lambda: sum(max(0, o) for o in committed(bootstrap, group, t_in, 4).values()) > before + 2_000,
                     120, "transactions committing")
            proc.kill()
            kills += 1
        finally:
            proc.close()
    producer.join(60)
    last = ScorerProcess(cfg, tmp_path / "final.log", "--instance", "slot-0")
    try:
        msgs = read_all(bootstrap, t_out, expect=lambda xs: len(_ids(xs)) >= n, timeout=180,
                        isolation="read_committed")
        # keep reading a little: a duplicate would show up as an extra committed record
        msgs = read_all(bootstrap, t_out, expect=len(msgs), timeout=60, isolation="read_committed", idle=3.0)
        assert last.terminate() == 0, last.output()
    finally:
        last.close()
    ids = _ids(msgs)
    want = set(generate(n, seed=21)["event_id"].tolist())
    assert kills == 2
    assert set(ids) == want, f"lost {len(want - set(ids))}"
    dupes = {k: c for k, c in ids.items() if c > 1}
    assert not dupes, f"{len(dupes)} events have more than one committed prediction"
    # aborted work really was written and hidden: read_uncommitted sees at least as many records
    raw = read_all(bootstrap, t_out, expect=len(msgs), timeout=30)
    assert len(raw) >= len(msgs)


def test_exactly_once_graceful_run_commits_all_offsets(tmp_path: Path, bootstrap: str,
                                                       names: Callable[[str], str],
                                                       topics: Callable[..., None]) -> None:
    n = 10_000
    t_in, t_out, group = names("tx"), names("pred"), names("g")
    topics({t_in: 2, t_out: 2})
    produce_events({"bootstrap.servers": bootstrap}, t_in, n, seed=22)
    proc = ScorerProcess(_cfg(tmp_path, bootstrap, group, t_in, t_out), tmp_path / "s.log")
    try:
        msgs = read_all(bootstrap, t_out, expect=n, timeout=120, isolation="read_committed", idle=1.0)
        assert proc.terminate() == 0, proc.output()
    finally:
        proc.close()
    assert len(msgs) == n and len(_ids(msgs)) == n
    assert sum(committed(bootstrap, group, t_in, 2).values()) == n
