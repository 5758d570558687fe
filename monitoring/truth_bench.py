"""Records/s of the ground-truth join and quality stages, without Kafka: ``python -m monitoring.truth_bench``.

Every table write is JSON-encoded (what a changelog-backed Faust table does per write) and every row
operation too (the rows topic). ``--pending`` predictions wait for labels first; then each measured
step is one new prediction and one label joining an earlier one, all in one open window. ``--batch``:
records per join batch, as the monitor's ``batch`` setting (one table write per key and batch, the
batch's row operations after it, as ``JoinHandler.handle_batch`` does); 1 is record by record.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from monitoring.truth_core import JoinCore, Label, Prediction, QualityCore, Staged, write
from monitoring.windows import WindowSpec

HOUR = 3_600_000


class EncodingStore(dict[str, Any]):
    """A dict that JSON-encodes each value written, counting the bytes, as the changelog would."""

    written = 0

    def __setitem__(self, key: str, value: Any) -> None:
        self.written += len(json.dumps(value))
        super().__setitem__(key, value)


def _pred(i: int) -> Prediction:
    return Prediction(event_id=f"e{i}", model="m", version="1", variant="primary", score=(i % 97) / 97,
                      decision=i % 97 >= 48, event_time=i)


def run(pending: int, steps: int, batch: int = 1) -> dict[str, float]:
    spec = WindowSpec(size=HOUR)
    join, quality = JoinCore(windows=spec, horizon_ms=7 * 24 * HOUR), QualityCore(windows=spec, sources=1)
    store, qstore = EncodingStore(), EncodingStore()
    records: list[tuple[str, Prediction | Label]] = []
    offset = 1

    def flush() -> None:
        nonlocal offset
        staged, ops = Staged(store), []
        for off, (topic, rec) in enumerate(records, start=offset):
            out = (join.apply_prediction(staged, 0, topic, off, rec) if isinstance(rec, Prediction)
                   else join.apply_label(staged, 0, topic, off, rec))
            if out is not None:
                write(staged, out)
                ops += out.ops
        offset += len(records)
        records.clear()
        update = JoinCore.batch_update(staged, 0, ops)
        if update is None:
            return
        write(store, update)
        for op in update.ops:
            qupdate, _ = quality.apply(qstore, 0, 0, json.loads(json.dumps({**op, "src": 0})))
            write(qstore, qupdate)

    def add(topic: str, rec: Prediction | Label) -> None:
        records.append((topic, rec))
        if len(records) >= batch:
            flush()

    for i in range(pending):
        add("p", _pred(i))
    flush()
    before = store.written + qstore.written
    t0 = time.perf_counter()
    for i in range(steps):
        add("p", _pred(pending + i))
        add("l", Label(f"e{i}", i % 3 == 0, 1_000 + i))
    flush()
    elapsed = time.perf_counter() - t0
    return {"pending": pending, "batch": batch, "records": 2 * steps, "seconds": round(elapsed, 3),
            "records_per_s": round(2 * steps / elapsed), "changelog_bytes_per_record":
            round((store.written + qstore.written - before) / (2 * steps))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pending", type=int, nargs="+", default=[1000, 4000])
    ap.add_argument("--steps", type=int, default=2000, help="measured steps (a prediction and a label each)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 500], help="records per join batch")
    args = ap.parse_args()
    for p in args.pending:
        for b in args.batch:
            print(json.dumps(run(p, args.steps, b)))


if __name__ == "__main__":
    main()
