"""``make chaos``: the faults users meet, on a local 3-broker cluster, in both delivery modes.

Each scenario runs once per mode on a 3-node KRaft cluster (replication factor 3,
``min.insync.replicas=2``): events are produced at a fixed rate into a 6-partition topic
while ``streamscore serve`` processes (one consumer group, stable instance names
``slot-0..2``) score them, a CPU hog takes one of the machine's cores, and at progress
milestones (a fraction of the events seen scored by a ``read_committed`` reader):

- ``leader_kill``    the leader of the busiest input partition is SIGKILLed, kept down, restarted; 3 times
- ``broker_freeze``  that leader is frozen with SIGSTOP for 15 s, then SIGCONT (a network stall)
- ``scale``          1 -> 3 -> 1 scorer processes (the two extra stopped with SIGTERM)
- ``scorer_chaos``   3 scorer SIGKILLs (restarted at once), then one scorer frozen past the session
                     and transaction timeouts and thawed (it must be fenced and keep scoring)
- ``smoke``          one leader kill and one scorer SIGKILL (the size ``make test`` runs)

A scorer that exits by itself is restarted (as a supervisor would) and counted as a crash.
Each (mode, scenario) is a row of ``bench/results/chaos.json``; ``--table`` prints the
README's table from that file and ``--write-readme`` puts it there.

    python -m bench.chaos [--scenario NAME[,NAME]] [--mode at_least_once|exactly_once|both] [--rate R] [--no-hog]
    python -m bench.chaos --table [--write-readme]
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import random
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from bench.chaos_kit import ROOT, CpuHog, OutputWatcher, Slot, busiest, lag_by_partition, stop_all
from consumers.kafka_client import ensure_topics
from streamscore.dev.cluster import KafkaCluster, start_cluster
from streamscore.produce import produce_events

RESULTS = ROOT / "bench" / "results" / "chaos.json"
README = ROOT / "README.md"
MODES = ("at_least_once", "exactly_once")
STOP_LIMIT_S = 30.0          # every SIGTERM must end a scorer within this (issue 17)
SESSION_TIMEOUT_MS = 10000   # our default: longer than the cluster fences a dead broker (6 s), so a coordinator failover costs no session
TRANSACTION_TIMEOUT_MS = 10000   # what streamscore.app gives the transactional producer
HARD_STOP_LINE = "stop took longer than stop_timeout_s"   # streamscore.cli's stop backstop


@dataclass(frozen=True)
class Scenario:
    name: str
    start: int                               # scorer processes at the start (slots 0..start-1)
    actions: tuple[tuple[float, str], ...]   # (fraction of the events scored, action)
    seconds: float                           # how long events flow at the fixed rate
    slots: int = 3


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("leader_kill", 3, ((0.15, "leader_kill"), (0.45, "leader_kill"), (0.75, "leader_kill")), 120.0),
    Scenario("broker_freeze", 3, ((0.3, "broker_freeze"),), 60.0),
    Scenario("scale", 1, ((0.25, "scale_up"), (0.6, "scale_down")), 60.0),
    Scenario("scorer_chaos", 3, ((0.15, "scorer_kill"), (0.3, "scorer_kill"), (0.45, "scorer_kill"),
                                 (0.6, "scorer_freeze")), 80.0),
    Scenario("smoke", 3, ((0.3, "leader_kill"), (0.6, "scorer_kill")), 20.0),
)}
FULL = ("leader_kill", "broker_freeze", "scale", "scorer_chaos")


@dataclass
class ChaosResult:
    mode: str
    scenario: str
    events: int
    unique_scored: int
    lost: int
    duplicates: int            # extra committed predictions (sum of count - 1 over events)
    kills: int                 # scorer SIGKILLs
    broker_kills: int
    max_stall_s: float         # longest time no prediction arrived while input waited
    stop_s_max: float          # slowest SIGTERM-to-exit of any scorer
    broker_freezes: int = 0
    scorer_freezes: int = 0
    crashes: int = 0           # scorer processes that exited by themselves (restarted)
    hard_stops: int = 0        # stops that hit the stop_timeout_s backstop (stacks in the slot's log)
    exit_codes: list[int] = field(default_factory=list)   # of every SIGTERM
    cpu_hog: str = ""
    seconds: float = 0.0
    ran_at: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        if self.lost or self.crashes or any(self.exit_codes) or self.stop_s_max > STOP_LIMIT_S:
            return False
        return self.duplicates == 0 if self.mode == "exactly_once" else True


class ChaosAborted(RuntimeError):
    """The scorers crash by themselves again and again: the run cannot say anything."""


def _config(path: Path, bootstrap: str, group: str, mode: str, t_in: str, t_out: str) -> Path:
    path.write_text(yaml.safe_dump({
        "kafka": {"bootstrap_servers": bootstrap,
                  "consumer": {"session.timeout.ms": SESSION_TIMEOUT_MS, "heartbeat.interval.ms": 1000}},
        "group_id": group, "delivery": mode, "commit_interval_ms": 100,
        "pipelines": [{"name": "fraud", "input": {"topic": t_in}, "model": {"name": "fraud-mlp"},
                       "output": {"topic": t_out}, "batching": {"max_size": 500}}],
    }))
    return path


def heal(cluster: KafkaCluster, timeout: float = 120.0) -> None:
    """Every node running and unfrozen, every partition fully in sync (the state a scenario starts from)."""
    for n in cluster.nodes:
        n.thaw()
        if not n.alive():
            cluster.start_node(n.node_id)
    cluster.wait_in_sync(timeout=timeout)


class Run:
    """One (mode, scenario) run: its processes, counters and fault actions."""

    def __init__(self, cluster: KafkaCluster, workdir: Path, mode: str, scenario: Scenario, *,
                 rate: float, partitions: int, seed: int, broker_down_s: float, freeze_s: float,
                 scorer_freeze_s: float, log: Callable[[str], None]) -> None:
        self.cluster, self.mode, self.sc = cluster, mode, scenario
        self.rate, self.partitions, self.seed = rate, partitions, seed
        self.broker_down_s, self.freeze_s, self.scorer_freeze_s = broker_down_s, freeze_s, scorer_freeze_s
        self.log = log
        self.rng = random.Random(f"{seed}-{mode}-{scenario.name}")
        self.events = int(rate * scenario.seconds)
        tag = uuid.uuid4().hex[:8]
        self.t_in, self.t_out = f"chaos-{scenario.name}-{mode}-{tag}-in", f"chaos-{scenario.name}-{mode}-{tag}-out"
        self.group = f"chaos-{scenario.name}-{mode}-{tag}"
        self.workdir = workdir / f"{scenario.name}-{mode}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = _config(self.workdir / "scorer.yaml", cluster.bootstrap, self.group, mode, self.t_in, self.t_out)
        self.slots = [Slot(i, cfg, self.workdir) for i in range(scenario.slots)]
        self.sent = 0
        self.counts = {"kills": 0, "broker_kills": 0, "broker_freezes": 0, "scorer_freezes": 0, "crashes": 0}
        self.notes: list[str] = []
        self.t0 = time.monotonic()
        self._restarted_at: dict[str, float] = {}

    def say(self, what: str) -> None:
        self.log(f"  [{self.sc.name}/{self.mode}] {time.monotonic() - self.t0:6.1f}s  {what}")

    # ------------------------------------------------------------------ supervision
    def supervise(self, max_crashes: int = 10) -> None:
        """Restart a wanted slot that exited by itself (with a 2-s backoff), as a process supervisor would."""
        for s in self.slots:
            if not s.wanted or s.alive() or time.monotonic() - self._restarted_at.get(s.name, 0.0) < 2.0:
                continue
            self.counts["crashes"] += 1
            code = s.proc.returncode if s.proc else None
            self.notes.append(f"{s.name} exited by itself with code {code}")
            self.say(f"{s.name} exited by itself ({code}); restarting\n{s.log_tail(15)}")
            if self.counts["crashes"] > max_crashes:
                raise ChaosAborted(f"{self.counts['crashes']} scorer crashes (see {s.log_path})")
            self._restarted_at[s.name] = time.monotonic()
            s.start()

    def _wait(self, seconds: float) -> None:
        """``seconds`` of wall time, supervising meanwhile."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.supervise()
            time.sleep(min(0.25, max(0.0, end - time.monotonic())))

    # ------------------------------------------------------------------ faults
    def _busiest_leader(self) -> tuple[int, int]:
        p = busiest(lag_by_partition(self.cluster.bootstrap, self.group, self.t_in, self.partitions))
        return p, self.cluster.leader_of(self.t_in, p)

    def _heal(self) -> None:
        try:
            heal(self.cluster)
        except Exception as exc:  # noqa: BLE001 - the run goes on; the row says so
            self.notes.append(f"cluster not back in sync: {exc}")

    def leader_kill(self) -> None:
        p, leader = self._busiest_leader()
        if leader < 0:
            self.notes.append(f"partition {p} had no leader to kill")
            return
        self.cluster.node(leader).kill()
        self.counts["broker_kills"] += 1
        self.say(f"SIGKILL broker {leader} (leader of busiest partition {p}); down {self.broker_down_s:.0f}s")
        self._wait(self.broker_down_s)
        t = time.monotonic()
        self.cluster.start_node(leader)
        self.say(f"broker {leader} back after {time.monotonic() - t:.1f}s")
        self._heal()

    def broker_freeze(self) -> None:
        p, leader = self._busiest_leader()
        if leader < 0:
            self.notes.append(f"partition {p} had no leader to freeze")
            return
        node = self.cluster.node(leader)
        node.freeze()
        self.counts["broker_freezes"] += 1
        self.say(f"SIGSTOP broker {leader} (leader of busiest partition {p}) for {self.freeze_s:.0f}s")
        try:
            self._wait(self.freeze_s)
        finally:
            node.thaw()
        self.say(f"SIGCONT broker {leader}")
        self._heal()

    def scorer_kill(self) -> None:
        victim = self.rng.choice([s for s in self.slots if s.wanted])
        victim.kill()
        self.counts["kills"] += 1
        self.say(f"SIGKILL {victim.name}; restarted at once")
        victim.start()

    def scorer_freeze(self) -> None:
        victim = self.rng.choice([s for s in self.slots if s.wanted])
        victim.freeze()
        self.counts["scorer_freezes"] += 1
        self.say(f"SIGSTOP {victim.name} for {self.scorer_freeze_s:.0f}s "
                 f"(session {SESSION_TIMEOUT_MS / 1000:.0f}s, transaction {TRANSACTION_TIMEOUT_MS / 1000:.0f}s)")
        try:
            self._wait(self.scorer_freeze_s)
        finally:
            victim.thaw()
        self.say(f"SIGCONT {victim.name}")

    def scale_up(self) -> None:
        for s in self.slots:
            if not s.wanted:
                s.start()
        self.say(f"scaled up to {sum(s.wanted for s in self.slots)} scorers")

    def scale_down(self) -> None:
        extra = [s for s in self.slots[self.sc.start:] if s.wanted]
        sent = [(s, s.signal_stop()) for s in extra]
        codes = [s.wait_stopped(t, 60.0) for s, t in sent]
        self.say(f"scaled down to {sum(s.wanted for s in self.slots)} (SIGTERM exits {codes}, "
                 f"{[s.stop_s[-1] for s in extra]} s)")

    # ------------------------------------------------------------------ the run
    def execute(self, time_limit: float, tail_s: float = 5.0) -> ChaosResult:
        """Produce at the fixed rate until every action is done (and at least the nominal events), plus ``tail_s``."""
        deadline = self.t0 + time_limit
        ensure_topics({"bootstrap.servers": self.cluster.bootstrap},
                      {self.t_in: self.partitions, self.t_out: self.partitions, f"{self.t_in}.dlq": self.partitions})
        produced: dict[str, Any] = {}
        actions_done: list[float] = []      # when the last action ended
        cap = int(self.rate * time_limit)   # the producer is bounded even if an action never returns

        def progress(n: int) -> None:
            self.sent = n

        def enough() -> bool:
            if time.monotonic() > deadline:
                return True
            return bool(actions_done) and self.sent >= self.events and time.monotonic() - actions_done[0] >= tail_s

        def produce() -> None:
            try:
                produced["result"] = produce_events({"bootstrap.servers": self.cluster.bootstrap}, self.t_in,
                                                    cap, rate=self.rate, seed=self.seed, progress=progress,
                                                    stop=enough)
            except BaseException as exc:  # noqa: BLE001 - reported in the row
                produced["error"] = exc

        watcher = OutputWatcher(self.cluster.bootstrap, self.t_out, lambda: self.sent)
        producer = threading.Thread(target=produce, name="chaos-producer", daemon=True)
        try:
            for s in self.slots[:self.sc.start]:
                s.start()
            watcher.start()
            producer.start()
            for frac, action in self.sc.actions:
                mark = int(self.events * frac)
                if not watcher.wait_unique(mark, max(1.0, deadline - time.monotonic()), poll=self.supervise):
                    self.notes.append(f"milestone {mark} ({action}) not reached in time (at {watcher.unique})")
                    break
                self.say(f"{watcher.unique:>7,} scored, {self.sent:>7,} sent: {action}")
                getattr(self, action)()
            actions_done.append(time.monotonic())
            producer.join(max(1.0, deadline + 60.0 - time.monotonic()))
            if "error" in produced:
                self.notes.append(f"producer failed: {produced['error']}")
            self.events = self.sent
            self.say(f"{self.events:,} events sent; waiting for every prediction")
            if not watcher.wait_unique(self.events, max(1.0, deadline - time.monotonic()), poll=self.supervise):
                self.notes.append(f"not every event scored before the time limit ({watcher.unique:,})")
            watcher.wait_quiet(idle=3.0, timeout=30.0)
            self.supervise()
            stop_all(self.slots, limit=60.0)
        finally:
            actions_done.append(time.monotonic())
            for s in self.slots:
                s.close()
            watcher.stop()
        if watcher.error is not None:
            self.notes.append(f"the output reader failed: {watcher.error}")
        return self._result(watcher)

    def _result(self, watcher: OutputWatcher) -> ChaosResult:
        from models.demo_data import generate

        want = set(generate(self.events, seed=self.seed)["event_id"].tolist())
        got = set(watcher.ids)
        stops = [t for s in self.slots for t in s.stop_s]
        codes = [c for s in self.slots for c in s.exit_codes]
        for s in self.slots:
            for t, c in zip(s.stop_s, s.exit_codes):
                if c != 0 or t > STOP_LIMIT_S:
                    self.notes.append(f"{s.name}: SIGTERM -> exit {c} after {t:.1f}s (log {s.log_path})")
        hard = sum(s.log_path.read_text(errors="replace").count(HARD_STOP_LINE) for s in self.slots
                   if s.log_path.exists())
        if hard:
            self.notes.append(f"{hard} stop(s) hit the stop_timeout_s backstop (see the slot logs)")
        if got - want:
            self.notes.append(f"{len(got - want)} unexpected event ids")
        return ChaosResult(
            mode=self.mode, scenario=self.sc.name, events=self.events, unique_scored=len(got & want),
            lost=len(want - got), duplicates=sum(c - 1 for c in watcher.ids.values()),
            kills=self.counts["kills"], broker_kills=self.counts["broker_kills"],
            max_stall_s=round(watcher.stalls.max_stall_s, 1), stop_s_max=max(stops, default=0.0),
            broker_freezes=self.counts["broker_freezes"], scorer_freezes=self.counts["scorer_freezes"],
            crashes=self.counts["crashes"], hard_stops=hard, exit_codes=codes, seconds=round(time.monotonic() - self.t0, 1),
            ran_at=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), notes=self.notes)


def run_scenario(cluster: KafkaCluster, workdir: Path, *, mode: str, scenario: str, rate: float = 1000.0,
                 partitions: int = 6, seed: int = 7, hog: bool = True, broker_down_s: float = 8.0,
                 freeze_s: float = 15.0, scorer_freeze_s: float = 16.0, time_limit: float | None = None,
                 log: Callable[[str], None] = print) -> ChaosResult:
    """One (mode, scenario) on ``cluster`` (healed first, left running); a CPU hog beside it unless ``hog`` is off."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {sorted(SCENARIOS)}, not {scenario!r}")
    sc = SCENARIOS[scenario]
    limit = time_limit or sc.seconds * 2 + 120.0
    heal(cluster)
    run = Run(cluster, workdir, mode, sc, rate=rate, partitions=partitions, seed=seed, broker_down_s=broker_down_s,
              freeze_s=freeze_s, scorer_freeze_s=scorer_freeze_s, log=log)
    cpu = CpuHog(limit + 60).start() if hog else None
    try:
        res = run.execute(limit)
    finally:
        if cpu is not None:
            cpu.stop()
    res.cpu_hog = cpu.kind if cpu is not None else ""
    return res


# ---------------------------------------------------------------------------- results and the README table
TABLE_BEGIN = "<!-- chaos-table: generated by `python -m bench.chaos --table --write-readme` -->"
TABLE_END = "<!-- /chaos-table -->"
_COLUMNS = (("mode", "mode"), ("scenario", "scenario"), ("events", "events"), ("unique_scored", "unique scored"),
            ("lost", "lost"), ("duplicates", "duplicates"), ("kills", "scorer kills"),
            ("broker_kills", "broker kills"), ("max_stall_s", "max stall s"), ("stop_s_max", "slowest stop s"))


def load_results(path: Path = RESULTS) -> list[ChaosResult]:
    data = json.loads(path.read_text())
    names = {f for f in ChaosResult.__dataclass_fields__}
    return [ChaosResult(**{k: v for k, v in row.items() if k in names}) for row in data.get("results", [])]


def save_results(results: list[ChaosResult], path: Path = RESULTS, **meta: Any) -> None:
    """Merge ``results`` into ``path`` by (mode, scenario): a partial rerun replaces only its rows."""
    old = load_results(path) if path.exists() else []
    new_keys = {(r.mode, r.scenario) for r in results}
    rows = [r for r in old if (r.mode, r.scenario) not in new_keys] + results
    order = {name: i for i, name in enumerate(SCENARIOS)}
    rows.sort(key=lambda r: (order.get(r.scenario, 99), MODES.index(r.mode) if r.mode in MODES else 9))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"results": [{**asdict(r), "ok": r.ok} for r in rows], **meta}, indent=2) + "\n")


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def markdown_table(results: list[ChaosResult]) -> str:
    head = [title for _k, title in _COLUMNS] + ["CPU hog", "verdict"]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join("---" if k in ("mode", "scenario") else "---:" for k, _t in _COLUMNS) + "|---|---|"]
    for r in results:
        cells = [_cell(getattr(r, k)) for k, _t in _COLUMNS] + [r.cpu_hog or "off", "ok" if r.ok else "FAIL"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def readme_with_table(readme: str, table: str) -> str:
    """``readme`` with the text between the chaos-table markers replaced by ``table``."""
    if TABLE_BEGIN not in readme or TABLE_END not in readme:
        raise ValueError(f"the README has no chaos table markers ({TABLE_BEGIN} ... {TABLE_END})")
    head, rest = readme.split(TABLE_BEGIN, 1)
    _old, tail = rest.split(TABLE_END, 1)
    return f"{head}{TABLE_BEGIN}\n{table}\n{TABLE_END}{tail}"


# ---------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", default=",".join(FULL), help=f"comma-separated, of {', '.join(SCENARIOS)}")
    ap.add_argument("--mode", choices=[*MODES, "both"], default="both")
    ap.add_argument("--rate", type=float, default=1000.0, help="events/s produced while the faults happen")
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-hog", action="store_true", help="no CPU hog beside the run")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--table", action="store_true", help="print the README table from --out and exit")
    ap.add_argument("--write-readme", action="store_true", help="with --table: put it in README.md")
    args = ap.parse_args(argv)
    if args.table:
        if not args.out.exists():
            ap.error(f"{args.out} does not exist: run python -m bench.chaos first")
        table = markdown_table(load_results(args.out))
        if args.write_readme:
            README.write_text(readme_with_table(README.read_text(), table))
            print(f"README.md: chaos table updated from {args.out}")
        else:
            print(table)
        return 0
    scenarios = [s.strip() for s in args.scenario.split(",") if s.strip()]
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown or not scenarios:
        ap.error(f"unknown scenario(s) {unknown}: choose from {', '.join(SCENARIOS)}")
    modes = list(MODES) if args.mode == "both" else [args.mode]
    logging.getLogger("consumers.kafka_client").setLevel(logging.CRITICAL)   # the producer's "broker down" chatter
    home = Path(tempfile.mkdtemp(prefix="streamscore-chaos-"))
    results: list[ChaosResult] = []
    print(f"starting a 3-broker cluster in {home} ...", flush=True)
    cluster = start_cluster(home / "cluster", brokers=3)
    try:
        for scenario in scenarios:
            for mode in modes:
                print(f"{scenario} / {mode}: {int(args.rate * SCENARIOS[scenario].seconds):,} events at "
                      f"{args.rate:,.0f}/s", flush=True)
                res = run_scenario(cluster, home / "runs", mode=mode, scenario=scenario, rate=args.rate,
                                   partitions=args.partitions, seed=args.seed, hog=not args.no_hog,
                                   log=lambda s: print(s, flush=True))
                results.append(res)
                for n in res.notes:
                    print(f"  note: {n}", flush=True)
                save_results([res], args.out, seed=args.seed, partitions=args.partitions, rate=args.rate)
    finally:
        cluster.stop()
    print()
    print(markdown_table(results))
    print(f"\nwritten {args.out}; scorer logs under {home / 'runs'}")
    ok = all(r.ok for r in results)
    if ok:
        shutil.rmtree(home / "cluster", ignore_errors=True)   # keep the scorer logs, drop the broker data
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
