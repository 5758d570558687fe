"""The chaos harness's pure parts: the stall clock, the busiest partition, results and the README table."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import (README, RESULTS, TABLE_BEGIN, TABLE_END, ChaosResult, load_results, markdown_table,
                         readme_with_table, save_results)
from bench.chaos_kit import StallClock, busiest, event_id


def test_stall_clock_counts_only_quiet_while_input_waits() -> None:
    c = StallClock()
    c.tick(0.0, 0, 50)          # start-up: no output yet, not a stall
    c.tick(5.0, 0, 50)
    assert c.max_stall_s == 0.0
    c.tick(6.0, 10, 40)         # first output
    c.tick(9.0, 0, 40)          # 3 s quiet with 40 waiting
    c.tick(10.0, 5, 35)
    assert c.max_stall_s == pytest.approx(3.0)
    c.tick(11.0, 0, 0)          # nothing waits: idle, not stalled
    c.tick(20.0, 0, 0)
    c.tick(21.0, 0, 3)          # input arrives at 20..21: the clock runs from the last idle tick
    c.tick(23.5, 0, 3)
    assert c.max_stall_s == pytest.approx(3.5)


def test_busiest_partition_is_the_one_with_most_waiting() -> None:
    assert busiest({0: 5, 1: 90, 2: 90, 3: 1}) == 1
    assert busiest({}) == 0


def test_event_id_reads_the_avro_string_after_the_wire_header() -> None:
    name = "evt-000123".encode()
    value = b"\x00\x00\x00\x00\x07" + bytes([len(name) * 2]) + name + b"rest"
    assert event_id(value) == "evt-000123"


def _row(mode: str, scenario: str, **kw: object) -> ChaosResult:
    base = dict(mode=mode, scenario=scenario, events=1000, unique_scored=1000, lost=0, duplicates=0, kills=1,
                broker_kills=1, max_stall_s=4.25, stop_s_max=1.5, exit_codes=[0, 0, 0])
    base.update(kw)
    return ChaosResult(**base)  # type: ignore[arg-type]


def test_verdict_fails_on_loss_duplicates_slow_stops_and_crashes() -> None:
    assert _row("at_least_once", "smoke", duplicates=7).ok
    assert not _row("exactly_once", "smoke", duplicates=1).ok
    assert not _row("at_least_once", "smoke", lost=1).ok
    assert not _row("at_least_once", "smoke", stop_s_max=31.0).ok
    assert not _row("at_least_once", "smoke", crashes=1).ok
    assert not _row("at_least_once", "smoke", exit_codes=[0, -9]).ok


def test_partial_rerun_replaces_only_its_rows(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    save_results([_row("at_least_once", "scale"), _row("exactly_once", "scale")], out)
    save_results([_row("exactly_once", "scale", duplicates=0, events=5), _row("at_least_once", "leader_kill")], out)
    rows = [(r.mode, r.scenario, r.events) for r in load_results(out)]
    assert rows == [("at_least_once", "leader_kill", 1000), ("at_least_once", "scale", 1000),
                    ("exactly_once", "scale", 5)]


def test_table_rows_and_readme_splice() -> None:
    table = markdown_table([_row("exactly_once", "leader_kill", events=100_000, unique_scored=100_000)])
    assert "| exactly_once | leader_kill | 100,000 | 100,000 | 0 | 0 | 1 | 1 | 4.2 | 1.5 | off | ok |" in table
    doc = f"intro\n{TABLE_BEGIN}\nold\n{TABLE_END}\nafter\n"
    assert readme_with_table(doc, "NEW") == f"intro\n{TABLE_BEGIN}\nNEW\n{TABLE_END}\nafter\n"
    with pytest.raises(ValueError):
        readme_with_table("no markers", "NEW")


def test_readme_chaos_table_is_generated_from_the_results_file() -> None:
    readme = README.read_text()
    assert readme_with_table(readme, markdown_table(load_results(RESULTS))) == readme, \
        "README's chaos table differs from bench/results/chaos.json: run python -m bench.chaos --table --write-readme"
