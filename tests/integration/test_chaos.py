"""Chaos at test size: SIGKILLs and a broker restart under three scorer processes, both modes.

The broker here is this module's own (it is restarted), not the session broker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from bench.chaos import Broker, run_chaos

pytestmark = pytest.mark.integration

EVENTS = 20_000
KILLS = 3


@pytest.fixture(scope="module")
def chaos_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    broker = Broker(tmp_path_factory.mktemp("chaos-kafka") / "kafka")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.mark.parametrize("mode", ["at_least_once", "exactly_once"])
def test_chaos_kills_and_broker_restart_lose_nothing(tmp_path: Path, chaos_broker: Broker, mode: str) -> None:
    res = run_chaos(chaos_broker, tmp_path, mode=mode, events=EVENTS, kills=KILLS, processes=3, partitions=6,
                    broker_restarts=1, seed=13, time_limit=150.0)
    detail = f"{res} (scorer logs in {tmp_path / mode})"
    assert res.kills == KILLS and res.broker_restarts == 1, detail
    # every kill happened mid-stream: some events committed, not all
    assert all(0 < k < EVENTS for k in res.kill_points), detail
    assert res.lost == 0 and res.unique_scored == EVENTS, detail
    if mode == "exactly_once":
        assert res.duplicates == 0, detail
    assert res.crashes == 0, detail
    assert res.exit_codes == [0, 0, 0], detail
