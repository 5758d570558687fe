"""Backfill's pure parts: times, model references, state files, progress lines, Parquet parts."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from schemas.errors import ConfigError
from streamscore.backfill import FileRows, Progress, State, concat_parts, parse_model, parse_time, terminal_progress


def test_parse_time_accepts_iso_and_epoch_ms() -> None:
    assert parse_time("1764547200000", "--from") == 1764547200000
    assert parse_time("2025-12-01T00:00:00Z", "--from") == 1764547200000
    assert parse_time("2025-12-01T01:00:00+01:00", "--from") == 1764547200000
    assert parse_time("2025-12-01T00:00:00", "--from") == 1764547200000      # naive = UTC
    assert parse_time("2025-12-01", "--to") == 1764547200000
    for bad in ("yesterday", "", "2025-13-01", "-5"):
        with pytest.raises(ConfigError, match="--from"):
            parse_time(bad, "--from")


def test_parse_model() -> None:
    assert parse_model("fraud-mlp@3") == ("fraud-mlp", "3")
    assert parse_model("fraud-mlp:3") == ("fraud-mlp", "3")
    assert parse_model("fraud-mlp") == ("fraud-mlp", None)
    for bad in ("@3", "m@", ""):
        with pytest.raises(ConfigError):
            parse_model(bad)


def test_state_round_trip_and_unreadable_state(tmp_path: Path) -> None:
    s = State(fingerprint="f", group="g", ranges={0: (5, 10), 3: (0, 7)}, positions={0: 8}, parts=["part-00000.parquet"], rows=3)
    s.save(tmp_path / "state.json")
    assert State.load(tmp_path / "state.json") == s
    assert not list(tmp_path.glob("*.tmp"))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="unreadable"):
        State.load(tmp_path / "bad.json")


def test_progress_lines() -> None:
    lines: list[tuple[str, bool]] = []
    p = Progress(total=1000, done=200, emit=lambda line, final: lines.append((line, final)))
    p.add(300)
    p.finish()
    assert lines[-1][1] is True and "500/1,000 events" in lines[-1][0] and "events/s" in lines[-1][0]
    assert "ETA" in lines[-1][0]
    out = io.StringIO()          # not a terminal: plain lines, the final one always
    terminal_progress(out)("x", True)
    assert out.getvalue() == "x\n"


def test_file_rows_csv_and_missing_columns(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("event_id,amount\ne1,1.5\ne2,2.5\ne3,3\n")
    rows = FileRows(tmp_path / "a.csv", position=1)
    assert rows.total == 3 and rows.already == 1
    chunks = list(rows.chunks(10))
    assert [m.offset() for m in chunks[0]] == [1, 2] and chunks[0][0].value() == b'{"event_id": "e2", "amount": 2.5}'
    (tmp_path / "a.txt.gz").write_text("x")
    with pytest.raises(ConfigError, match="neither .parquet nor .csv"):
        FileRows(tmp_path / "a.txt.gz", position=0)


def test_concat_parts_keeps_order_and_an_empty_range_is_an_empty_file(tmp_path: Path) -> None:
    import pyarrow as pa

    for i in range(3):
        pq.write_table(pa.table({"event_id": [f"e{i}a", f"e{i}b"], "score": np.array([i, i], np.float64)}),
                       tmp_path / f"part-{i:05d}.parquet")
    assert concat_parts(tmp_path, [f"part-{i:05d}.parquet" for i in range(3)], tmp_path / "out.parquet") == 6
    assert pq.read_table(tmp_path / "out.parquet").column("event_id").to_pylist() == ["e0a", "e0b", "e1a", "e1b", "e2a", "e2b"]
    assert concat_parts(tmp_path, [], tmp_path / "empty.parquet") == 0
    assert "score" in pq.read_table(tmp_path / "empty.parquet").column_names
