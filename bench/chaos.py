"""``make chaos``: a bounded chaos run of both delivery modes against a real broker.

For each mode: a 6-partition input topic gets N events (produced at a steady rate so
the chaos happens mid-stream), three ``streamscore serve`` processes share one consumer
group under stable instance names (``slot-0..2``), a seeded RNG SIGKILLs one of them at
each progress milestone and restarts it at once, the broker is stopped and restarted
once, and at the end the output is read with ``isolation.level=read_committed``.

Invariants checked: nothing is lost in either mode; exactly-once shows no duplicates.
Results go to ``bench/results/chaos.json`` and a table on stdout.

    python -m bench.chaos [--events N] [--kills K] [--seed S] [--mode at_least_once|exactly_once|both]
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml
from confluent_kafka import Consumer, KafkaException, TopicPartition

from consumers.kafka_client import ensure_topics
from streamscore.dev.kafka import KafkaBroker, start_kafka
from streamscore.produce import produce_events

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "chaos.json"
MODES = ("at_least_once", "exactly_once")


@dataclass
class ChaosResult:
    mode: str
    events: int
    unique_scored: int
    lost: int
    duplicates: int            # extra committed predictions (sum of count - 1 over events)
    kills: int
    broker_restarts: int
    crashes: int               # scorer processes that exited by themselves (restarted like kills)
    exit_codes: list[int]      # of the final SIGTERM of each slot
    seconds: float
    dead_letters: int = 0
    kill_points: list[int] = field(default_factory=list)   # events committed when each kill happened
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        if self.lost:
            return False
        return self.duplicates == 0 if self.mode == "exactly_once" else True


class ChaosAborted(RuntimeError):
    """The scorers crash by themselves again and again: the run cannot say anything."""


class Broker:
    """A local broker that can be stopped and restarted on the same home and ports."""

    def __init__(self, home: Path, *, heap: str = "512m") -> None:
        self.home = home
        self.heap = heap
        self._broker: KafkaBroker | None = None

    @property
    def bootstrap(self) -> str:
        assert self._broker is not None
        return self._broker.bootstrap

    def start(self) -> None:
        self._broker = start_kafka(self.home, heap=self.heap)

    def restart(self, down_s: float = 1.0) -> None:
        assert self._broker is not None
        self._broker.stop()
        time.sleep(down_s)   # clients see the broker gone, not just a blip
        self._broker = start_kafka(self.home, heap=self.heap)

    def stop(self) -> None:
        if self._broker is not None:
            self._broker.stop()


class Slot:
    """One scorer process slot with a stable instance name (restart = same transactional.id)."""

    def __init__(self, index: int, config: Path, workdir: Path) -> None:
        self.name = f"slot-{index}"
        self.config = config
        self.workdir = workdir
        self.starts = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self) -> None:
        self.starts += 1
        if self._log is None:
            self._log = open(self.log_path, "ab")
        self._log.write(f"\n===== start {self.starts} =====\n".encode())
        self._log.flush()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("KAFKA_BOOTSTRAP", None)   # the config names the broker
        self.proc = subprocess.Popen([sys.executable, "-m", "streamscore", "-v", "serve", "-c", str(self.config),
                                      "--instance", self.name], stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=ROOT, env=env)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def terminate(self, timeout: float = 60.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)
            return -9

    def close(self) -> None:
        self.kill()
        if self._log is not None:
            self._log.close()
            self._log = None


# ---------------------------------------------------------------------------- reading back
def _event_id(value: bytes) -> str:
    """The prediction's first field (event_id, an Avro string) after the 5-byte wire header."""
    pos, shift, raw = 5, 0, 0
    while True:
        b = value[pos]
        raw |= (b & 0x7F) << shift
        pos += 1
        if not b & 0x80:
            break
        shift += 7
    n = (raw >> 1) ^ -(raw & 1)
    return value[pos:pos + n].decode()


def _positions(bootstrap: str, group: str, topic: str, partitions: int) -> tuple[int, int]:
    """(sum of committed offsets of ``group``, sum of high watermarks) over ``topic``."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                  "log_level": 0})
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        done = sum(max(0, tp.offset) for tp in c.committed(tps, timeout=10))
        high = sum(c.get_watermark_offsets(tp, timeout=10)[1] for tp in tps)
        return done, high
    except KafkaException:   # the broker is restarting: no progress known yet
        return -1, -1
    finally:
        c.close()


def _committed_ids(bootstrap: str, topic: str, *, want: int, timeout: float,
                   idle: float = 3.0) -> collections.Counter[str]:
    """Every committed prediction's event id; read until ``want`` distinct ids, then ``idle`` s of quiet."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"chaos-reader-{uuid.uuid4().hex}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "isolation.level": "read_committed"})
    ids: collections.Counter[str] = collections.Counter()
    c.subscribe([topic])
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    try:
        while time.monotonic() < deadline:
            for m in c.consume(10000, 0.5):
                if m.error() is None and m.value():
                    ids[_event_id(m.value())] += 1
                    last = time.monotonic()
            if len(ids) >= want and time.monotonic() - last >= idle:
                break
    finally:
        c.close()
    return ids


def _wait(cond: Callable[[], bool], timeout: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return False


# ---------------------------------------------------------------------------- one mode
def run_chaos(
    broker: Broker,
    workdir: Path,
    *,
    mode: str,
    events: int = 100_000,
    kills: int = 5,
    processes: int = 3,
    partitions: int = 6,
    broker_restarts: int = 1,
    seed: int = 7,
    produce_seconds: float | None = None,
    time_limit: float = 300.0,
    max_crashes: int = 10,
    log: Callable[[str], None] = print,
) -> ChaosResult:
    """One chaos run of ``mode`` against ``broker`` (left running, possibly restarted)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    t0 = time.monotonic()
    deadline = t0 + time_limit
    rng = random.Random(f"{seed}-{mode}")
    run = uuid.uuid4().hex[:8]
    t_in, t_out, group = f"chaos-{mode}-{run}-in", f"chaos-{mode}-{run}-out", f"chaos-{mode}-{run}"
    ensure_topics({"bootstrap.servers": broker.bootstrap},
                  {t_in: partitions, t_out: partitions, f"{t_in}.dlq": partitions})
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / f"{mode}.yaml"
    cfg.write_text(yaml.safe_dump({
        "kafka": {"bootstrap_servers": broker.bootstrap,
                  # the broker's minimum: a killed member's partitions move after ~6 s
                  "consumer": {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000}},
        "group_id": group, "delivery": mode, "commit_interval_ms": 100,
        "pipelines": [{"name": "fraud", "input": {"topic": t_in}, "model": {"name": "fraud-mlp"},
                       "output": {"topic": t_out}, "batching": {"max_size": 500}}],
    }))
    # a steady rate spreads the events over the chaos phase, so every kill is mid-stream
    # (a broker restart stalls everything for ~15-20 s; the scorers then catch up fast)
    produce_seconds = produce_seconds or 5.0 * (kills + 1) + 25.0 * broker_restarts
    rate = events / produce_seconds
    produced: dict[str, Any] = {}

    def produce() -> None:
        try:
            produced["result"] = produce_events({"bootstrap.servers": broker.bootstrap}, t_in, events,
                                                rate=rate, seed=seed)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            produced["error"] = exc

    slots = [Slot(i, cfg, workdir / mode) for i in range(processes)]
    (workdir / mode).mkdir(exist_ok=True)
    producer = threading.Thread(target=produce, name="chaos-producer", daemon=True)
    notes: list[str] = []
    done_kills = done_restarts = crashes = 0
    kill_points: list[int] = []      # committed input offsets (of all partitions) at each kill
    exit_codes: list[int] = []
    # progress milestones: kills and broker restarts interleaved, spread over 10%..85% of the events
    actions = ["kill"] * kills
    for i in range(broker_restarts):
        actions.insert(min(len(actions), (i + 1) * len(actions) // (broker_restarts + 1)), "broker")
    marks = [int(events * (0.10 + 0.75 * i / max(1, len(actions) - 1))) for i in range(len(actions))]
    restarted_at: dict[str, float] = {}

    def supervise() -> None:
        """Restart a slot that exited by itself (as a process supervisor would), with a backoff."""
        nonlocal crashes
        for s in slots:
            if s.alive() or time.monotonic() - restarted_at.get(s.name, 0.0) < 2.0:
                continue
            crashes += 1
            notes.append(f"{s.name} exited by itself with code {s.proc.returncode if s.proc else None}")
            if crashes > max_crashes:
                raise ChaosAborted(f"{crashes} scorer crashes (see {s.log_path})")
            restarted_at[s.name] = time.monotonic()
            s.start()

    try:
        for s in slots:
            s.start()
        producer.start()
        last_done = 0
        for action, mark in zip(actions, marks):
            def reached(mark: int = mark) -> bool:
                nonlocal last_done
                supervise()
                last_done = _positions(broker.bootstrap, group, t_in, partitions)[0]
                return last_done >= mark
            if not _wait(reached, max(1.0, deadline - time.monotonic())):
                notes.append(f"milestone {mark} not reached in time (at {last_done})")
                break
            if action == "kill":
                victim = slots[rng.randrange(processes)]
                victim.kill()
                done_kills += 1
                kill_points.append(last_done)
                log(f"  [{mode}] {time.monotonic() - t0:6.1f}s  committed {last_done:>7,}  SIGKILL {victim.name}")
                victim.start()
            else:
                log(f"  [{mode}] {time.monotonic() - t0:6.1f}s  committed {last_done:>7,}  broker restart")
                t_restart = time.monotonic()
                broker.restart()
                done_restarts += 1
                log(f"  [{mode}] {time.monotonic() - t0:6.1f}s  broker back after {time.monotonic() - t_restart:.1f}s")
        producer.join(max(1.0, deadline - time.monotonic()))
        if "error" in produced:
            notes.append(f"producer failed: {produced['error']}")

        def all_committed() -> bool:
            supervise()
            done, high = _positions(broker.bootstrap, group, t_in, partitions)
            return high >= events and done >= high

        if not _wait(all_committed, max(1.0, deadline - time.monotonic())):
            notes.append("not every input offset was committed before the time limit")
        ids = _committed_ids(broker.bootstrap, t_out, want=events,
                             timeout=max(10.0, min(120.0, deadline - time.monotonic())))
        dead = _positions(broker.bootstrap, group, f"{t_in}.dlq", partitions)[1]
        for s in slots:
            exit_codes.append(s.terminate())
    finally:
        for s in slots:
            s.close()
    from models.demo_data import generate

    want = set(generate(events, seed=seed)["event_id"].tolist())
    got = set(ids)
    return ChaosResult(
        mode=mode, events=events, unique_scored=len(got & want), lost=len(want - got),
        duplicates=sum(c - 1 for c in ids.values()), kills=done_kills, broker_restarts=done_restarts,
        crashes=crashes, exit_codes=exit_codes, seconds=round(time.monotonic() - t0, 1),
        dead_letters=dead, kill_points=kill_points, notes=notes + ([f"{len(got - want)} unexpected event ids"] if got - want else []),
    )


# ---------------------------------------------------------------------------- command line
def format_table(results: list[ChaosResult]) -> str:
    cols = ["mode", "events", "unique_scored", "lost", "duplicates", "kills", "broker_restarts", "crashes", "seconds"]
    rows = [[str(getattr(r, c)) for c in cols] + ["ok" if r.ok else "FAIL"] for r in results]
    head = cols + ["verdict"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    line = lambda xs: "  ".join(x.rjust(w) for x, w in zip(xs, widths))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, rows)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--processes", type=int, default=3)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--broker-restarts", type=int, default=1)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--mode", choices=[*MODES, "both"], default="both")
    ap.add_argument("--time-limit", type=float, default=280.0, help="seconds per mode")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    modes = list(MODES) if args.mode == "both" else [args.mode]
    logging.getLogger("consumers.kafka_client").setLevel(logging.ERROR)   # the producer's reconnect chatter
    home = Path(tempfile.mkdtemp(prefix="streamscore-chaos-"))
    broker = Broker(home / "kafka")
    results: list[ChaosResult] = []
    try:
        print(f"starting a broker in {home} ...", flush=True)
        broker.start()
        for mode in modes:
            print(f"{mode}: {args.events:,} events, {args.processes} processes, {args.kills} kills, "
                  f"{args.broker_restarts} broker restart(s)", flush=True)
            res = run_chaos(broker, home / "runs", mode=mode, events=args.events, kills=args.kills,
                            processes=args.processes, partitions=args.partitions,
                            broker_restarts=args.broker_restarts, seed=args.seed, time_limit=args.time_limit,
                            log=lambda s: print(s, flush=True))
            results.append(res)
            for n in res.notes:
                print(f"  note: {n}", flush=True)
    finally:
        broker.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"results": [asdict(r) for r in results], "seed": args.seed,
                                    "processes": args.processes, "partitions": args.partitions,
                                    "logs": str(home)}, indent=2))
    print()
    print(format_table(results))
    print(f"\nwritten {args.out}; scorer logs under {home / 'runs'}")
    ok = all(r.ok for r in results)
    if ok:
        shutil.rmtree(home / "kafka", ignore_errors=True)   # keep the scorer logs, drop the broker data
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
