"""bench/gpu_stage.py smoke test: --quick on CPU writes a complete result table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import gpu_stage


@pytest.mark.timeout(300)
def test_gpu_stage_quick_runs_on_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gpu_stage.json"
    assert gpu_stage.main(["--quick", "--device", "cpu", "--iters", "2", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["info"]["device"] == "cpu" and data["info"]["quick"] is True
    rows = {(r["workload"], r["path"]): r for r in data["results"]}
    assert set(rows) == {("minilm-l6 seq16", "bare"), ("minilm-l6 seq16", "worker"),
                         ("mlp 256-1024-1024-512-1", "bare"), ("mlp 256-1024-1024-512-1", "worker")}
    for r in rows.values():
        assert r["rows_per_s"] > 0 and r["s_per_batch"] > 0 and r["dtype"] == "float32"
        assert r["rows_per_s"] == pytest.approx(r["batch"] / r["s_per_batch"])
    assert rows[("minilm-l6 seq16", "bare")]["note"] in ("real weights", "random weights")
    table = capsys.readouterr().out
    assert "vs bare" in table and "mlp 256-1024-1024-512-1" in table
