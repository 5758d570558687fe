"""Parts of the chaos harness: scorer process slots, the output watcher, a CPU hog, offsets.

Every process started here is bounded: a slot is SIGTERMed (then SIGKILLed) by its owner,
the CPU hog ends by itself after its time limit and is stopped by its owner before that.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import IO, Callable

from confluent_kafka import Consumer, KafkaException, TopicPartition

ROOT = Path(__file__).resolve().parents[1]


class Slot:
    """One ``streamscore serve`` process slot with a stable instance name (restart = same transactional.id)."""

    def __init__(self, index: int, config: Path, workdir: Path) -> None:
        self.name = f"slot-{index}"
        self.config = config
        self.workdir = workdir
        self.starts = 0
        self.wanted = False                  # a supervisor restarts a wanted slot that exited by itself
        self.frozen = False
        self.proc: subprocess.Popen[bytes] | None = None
        self.stop_s: list[float] = []        # SIGTERM-to-exit of every stop
        self.exit_codes: list[int] = []      # of every stop by SIGTERM
        self._log: IO[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self) -> None:
        self.starts += 1
        self.wanted = True
        self.frozen = False
        if self._log is None:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")
        self._log.write(f"\n===== start {self.starts} at {time.strftime('%H:%M:%S')} =====\n".encode())
        self._log.flush()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("KAFKA_BOOTSTRAP", None)   # the config names the brokers
        self.proc = subprocess.Popen([sys.executable, "-m", "streamscore", "-v", "serve", "-c", str(self.config),
                                      "--instance", self.name], stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=ROOT, env=env)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
        self.frozen = False

    def freeze(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGSTOP)
            self.frozen = True

    def thaw(self) -> None:
        if self.alive() and self.frozen:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGCONT)
        self.frozen = False

    def signal_stop(self) -> float:
        """SIGTERM (the slot is no longer wanted); returns when it was sent."""
        self.wanted = False
        self.thaw()
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
        return time.monotonic()

    def wait_stopped(self, sent_at: float, limit: float = 60.0) -> int:
        """Wait for the exit after ``signal_stop``; a slot still alive after ``limit`` s is SIGKILLed (-9)."""
        if self.proc is None:
            return 0
        try:
            code = self.proc.wait(max(0.1, sent_at + limit - 5.0 - time.monotonic()))
        except subprocess.TimeoutExpired:
            # still alive: every thread's stack into its log (faulthandler, needs no GIL), then the kill
            self.proc.send_signal(signal.SIGUSR1)
            try:
                code = self.proc.wait(5.0)
            except subprocess.TimeoutExpired:
                code = None
        if code is None:
            self.proc.kill()
            self.proc.wait(30)
            code = -9
        self.stop_s.append(round(time.monotonic() - sent_at, 2))
        self.exit_codes.append(code)
        return code

    def close(self) -> None:
        self.wanted = False
        self.kill()
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def stop_all(slots: list[Slot], limit: float = 60.0) -> list[int]:
    """SIGTERM every live slot at once (as a deployment stops), then wait for each; exit codes in order."""
    live = [s for s in slots if s.alive()]
    sent = [(s, s.signal_stop()) for s in live]
    for s in slots:
        s.wanted = False
    return [s.wait_stopped(t, limit) for s, t in sent]


# ---------------------------------------------------------------------------- reading back
def event_id(value: bytes) -> str:
    """The prediction's first field (event_id, an Avro string) after the 5-byte wire header."""
    return event_id_bytes(value).decode()


def event_id_bytes(value: bytes) -> bytes:
    """``event_id``'s UTF-8 bytes, not decoded (a read-back of every record checks millions)."""
    if value[5] < 0x80:         # a one-byte length (ids under 64 bytes): zigzag n is 2n
        return value[6:6 + (value[5] >> 1)]
    pos, shift, raw = 5, 0, 0
    while True:
        b = value[pos]
        raw |= (b & 0x7F) << shift
        pos += 1
        if not b & 0x80:
            break
        shift += 7
    n = (raw >> 1) ^ -(raw & 1)
    return value[pos:pos + n]


class StallClock:
    """The longest time no output arrived while input waited (pending > 0), from the first output on.

    Start-up (no output yet) is not a stall: the first scorer process is still loading.
    """

    def __init__(self) -> None:
        self.max_stall_s = 0.0
        self._since: float | None = None     # when the current quiet stretch began

    def tick(self, now: float, outputs: int, pending: int) -> None:
        """One observation: ``outputs`` new predictions since the last tick, ``pending`` events waiting."""
        if outputs > 0:
            self._since = now
        elif self._since is None:
            return
        elif pending <= 0:
            self._since = now          # nothing waits: quiet is not a stall
        else:
            self.max_stall_s = max(self.max_stall_s, now - self._since)


class OutputWatcher(threading.Thread):
    """A downstream reader (``read_committed``) of the output topic from the beginning, in the background.

    Counts every prediction's event id and clocks stalls against ``produced()`` (events sent so far).
    """

    def __init__(self, bootstrap: str, topic: str, produced: Callable[[], int]) -> None:
        super().__init__(name=f"watch-{topic}", daemon=True)
        self.bootstrap, self.topic, self.produced = bootstrap, topic, produced
        self.ids: collections.Counter[str] = collections.Counter()
        self.stalls = StallClock()
        self.error: BaseException | None = None
        self._halt = threading.Event()

    @property
    def unique(self) -> int:
        return len(self.ids)

    def run(self) -> None:
        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"chaos-reader-{uuid.uuid4().hex}",
                      "auto.offset.reset": "earliest", "enable.auto.commit": False,
                      "isolation.level": "read_committed", "log_level": 0})
        c.subscribe([self.topic])
        try:
            while not self._halt.is_set():
                new = 0
                for m in c.consume(10000, 0.2):
                    if m.error() is None and m.value():
                        self.ids[event_id(m.value())] += 1
                        new += 1
                self.stalls.tick(time.monotonic(), new, self.produced() - len(self.ids))
        except BaseException as exc:  # noqa: BLE001 - reported by the owner
            self.error = exc
        finally:
            c.close()

    def stop(self, timeout: float = 30.0) -> None:
        self._halt.set()
        self.join(timeout)

    def wait_unique(self, n: int, timeout: float, *, poll: Callable[[], None] = lambda: None) -> bool:
        """Until ``n`` distinct events were seen (``poll`` runs between checks), or the deadline."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            poll()
            if self.unique >= n:
                return True
            if self.error is not None:
                return False
            time.sleep(0.25)
        return False

    def wait_quiet(self, idle: float, timeout: float) -> None:
        """Until no new prediction arrived for ``idle`` s (late duplicates are counted), or the deadline."""
        deadline = time.monotonic() + timeout
        last, seen = time.monotonic(), sum(self.ids.values())
        while time.monotonic() < deadline and time.monotonic() - last < idle:
            time.sleep(0.25)
            now = sum(self.ids.values())
            if now != seen:
                last, seen = time.monotonic(), now


def lag_by_partition(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """high watermark - committed offset of ``group`` per partition ({} while the cluster does not answer)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False, "log_level": 0})
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        done = {tp.partition: max(0, tp.offset) for tp in c.committed(tps, timeout=10)}
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] - done[p]
                for p in range(partitions)}
    except KafkaException:
        return {}
    finally:
        c.close()


def busiest(lags: dict[int, int]) -> int:
    """The partition with the most input waiting (the lowest id on a tie; 0 when nothing is known)."""
    return max(sorted(lags), key=lambda p: lags[p]) if lags else 0


# ---------------------------------------------------------------------------- a noisy machine
class CpuHog:
    """One core kept busy: Debian's ``stress-ng --cpu 1`` if installed, else a busy-loop Python process.

    Bounded twice: the process ends by itself after ``seconds``, and ``stop()`` ends it sooner.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = max(1, int(seconds))
        self.proc: subprocess.Popen[bytes] | None = None
        self.kind = ""

    def start(self) -> "CpuHog":
        stress = shutil.which("stress-ng")
        if stress:
            cmd = [stress, "--cpu", "1", "--timeout", f"{self.seconds}s", "--quiet"]
            self.kind = "stress-ng --cpu 1"
        else:
            loop = f"import time\nend = time.monotonic() + {self.seconds}\nwhile time.monotonic() < end:\n    pass\n"
            cmd = [sys.executable, "-c", loop]
            self.kind = "busy loop"
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)   # stress-ng forks its workers into the group
        except ProcessLookupError:
            return
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
