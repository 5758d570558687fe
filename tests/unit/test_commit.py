"""The commit protocol against a fake producer and consumer: every outcome is bounded.

The fakes block the way librdkafka does when the cluster does not answer: a call with a
timeout waits that long, then fails with a retriable ``_TIMED_OUT``.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from consumers.commit import AtLeastOnce, ExactlyOnce
from schemas.errors import DeliveryError
from sinks.kafka_sink import KafkaSink

TP0 = ("in", 0)
TP1 = ("in", 1)


def _timed_out(timeout: float) -> None:
    time.sleep(timeout)
    raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "timed out", retriable=True))


class FakeProducer:
    """Records calls; each transactional call does what ``behaviour[name]`` says (default: succeed)."""

    def __init__(self, behaviour: dict[str, Callable[[float], None]] | None = None) -> None:
        self.behaviour = behaviour or {}
        self.calls: list[str] = []

    def _do(self, name: str, timeout: float) -> None:
        self.calls.append(name)
        fn = self.behaviour.get(name)
        if fn is not None:
            fn(timeout)

    def init_transactions(self, timeout: float) -> None:
        self._do("init", timeout)

    def begin_transaction(self) -> None:
        self.calls.append("begin")

    def send_offsets_to_transaction(self, offsets: list[TopicPartition], meta: Any, timeout: float) -> None:
        self._do("send_offsets", timeout)

    def commit_transaction(self, timeout: float) -> None:
        self._do("commit", timeout)

    def abort_transaction(self, timeout: float) -> None:
        self._do("abort", timeout)

    def poll(self, timeout: float = 0) -> int:
        fn = self.behaviour.pop("poll", None)         # raises once, as a client raising its fatal error
        if fn is not None:
            fn(timeout)
        return 0

    def flush(self, timeout: float = 0) -> int:
        self._do("flush", timeout)
        return 0

    def purge(self, **_kw: Any) -> None:
        self.calls.append("purge")


class FakeConsumer:
    def __init__(self, committed: dict[tuple[str, int], int]) -> None:
        self._committed = committed
        self.seeks: list[tuple[str, int, int]] = []
        self.stored: list[tuple[str, int, int]] = []
        self.commits: list[tuple[str, int, int]] = []

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in self._committed]

    def committed(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self._committed[(tp.topic, tp.partition)]) for tp in tps]

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.topic, tp.partition, tp.offset))

    def consumer_group_metadata(self) -> object:
        return object()

    def store_offsets(self, offsets: list[TopicPartition]) -> None:
        self.stored += [(o.topic, o.partition, o.offset) for o in offsets]

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        self.commits += [(o.topic, o.partition, o.offset) for o in offsets]


class Harness:
    """An ExactlyOnce protocol whose sink thread ticks in the background, as the scorer's does."""

    def __init__(self, producer: FakeProducer, *, committed: dict[tuple[str, int], int] | None = None) -> None:
        self.consumer = FakeConsumer(committed or {TP0: 100, TP1: 200})
        self.producer = producer
        self.made: list[FakeProducer] = []
        self.failures: list[BaseException] = []
        self.sink = KafkaSink(producer, batch_produce=False)  # type: ignore[arg-type]
        self.eos = ExactlyOnce(consumer=self.consumer, sink=self.sink, make_producer=self._make,  # type: ignore[arg-type]
                               fail=self.failures.append, interval_s=0.0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _make(self) -> FakeProducer:
        p = FakeProducer()
        self.made.append(p)
        return p

    def batch(self, batch_id: int, ranges: dict[tuple[str, int], tuple[int, int]], generation: int = 0) -> None:
        ack = self.eos.open_batch(batch_id)
        self.eos.close_batch(ranges, ack, generation)

    def start_ticking(self) -> None:
        def loop() -> None:
            while not self._stop.is_set():
                self.eos.tick()
                time.sleep(0.01)
        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop_ticking(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(20)


def test_partitions_lost_while_send_offsets_hangs_aborts_and_rewinds_within_seconds() -> None:
    h = Harness(FakeProducer({"send_offsets": _timed_out}))
    h.batch(1, {TP0: (100, 149)})
    h.start_ticking()
    try:
        time.sleep(0.3)                       # the sink thread is inside send_offsets now
        t0 = time.monotonic()
        h.eos.on_lost([TP1])
        took = time.monotonic() - t0
    finally:
        h.stop_ticking()
    assert took < 3.0, f"on_lost waited {took:.1f}s for the sink"
    assert "abort" in h.producer.calls and "commit" not in h.producer.calls
    assert h.eos.source_tick() is True, "the source is told to drop what it holds"
    assert sorted(h.consumer.seeks) == [("in", 0, 100), ("in", 1, 200)], "every owned partition rewinds"
    assert h.failures == []


@pytest.mark.parametrize("path", ["delivery_report", "produce_call", "commit", "poll"])
def test_a_fenced_producer_is_recreated_and_partitions_rewound_whichever_path_reports_it(path: str) -> None:
    fenced = KafkaError(KafkaError._FENCED, "fenced by a newer epoch", fatal=True)

    def raise_fenced(_t: float) -> None:
        raise KafkaException(fenced)

    h = Harness(FakeProducer({path: raise_fenced} if path in ("commit", "poll") else {}))
    ack = h.eos.open_batch(1)
    if path == "delivery_report":
        ack.expect(1)
        ack(fenced, None)
        h.eos.close_batch({TP0: (100, 109)}, ack, 0)
    elif path == "produce_call":
        h.eos.produce_failed(DeliveryError("producing failed", kafka_error=fenced))
    else:
        h.eos.close_batch({TP0: (100, 109)}, ack, 0)
    h.eos.tick()
    assert len(h.made) == 1 and h.sink.producer is h.made[0], "a new producer replaces the fenced one"
    assert h.made[0].calls[:1] == ["init"], "the new producer fences the old epoch first"
    assert h.eos.source_tick() is True
    assert ("in", 0, 100) in h.consumer.seeks
    assert h.failures == [], "a fenced producer does not stop the scorer"
    assert h.eos.producer_restarts == 1


def test_transaction_timed_out_aborts_and_rewinds() -> None:
    def timed_out_abortable(_t: float) -> None:
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "transaction timed out", txn_requires_abort=True))

    h = Harness(FakeProducer({"commit": timed_out_abortable}))
    h.batch(1, {TP0: (100, 119)})
    h.eos.tick()
    assert h.producer.calls[-1] == "abort" and h.made == []
    assert h.eos.committed_positions() == {}
    assert h.eos.source_tick() is True and ("in", 0, 100) in h.consumer.seeks
    assert h.failures == []


def test_a_commit_that_never_answers_is_given_up_and_the_producer_recreated() -> None:
    h = Harness(FakeProducer({"commit": _timed_out, "abort": _timed_out}))
    h.eos._call_timeout_s = 1.5
    h.batch(1, {TP0: (100, 119)})
    t0 = time.monotonic()
    h.eos.tick()
    took = time.monotonic() - t0
    assert took < 6.0, f"commit + abort took {took:.1f}s"
    assert len(h.made) == 1, "an abort that cannot finish ends in a new producer"
    assert h.eos.source_tick() is True


def test_stop_while_blocked_returns_within_the_budget() -> None:
    h = Harness(FakeProducer({"send_offsets": _timed_out, "abort": _timed_out}))
    h.batch(1, {TP0: (100, 119)})
    t0 = time.monotonic()
    h.eos.finish(time.monotonic() + 2.0)
    took = time.monotonic() - t0
    assert took < 4.0, f"finish took {took:.1f}s with a 2-s budget"
    assert h.eos.committed_positions() == {}, "nothing is claimed committed"
    assert h.made == [], "no new producer while stopping"
    assert h.failures == []


def test_a_transaction_holding_work_of_an_earlier_generation_is_aborted_not_committed() -> None:
    h = Harness(FakeProducer())
    h.batch(1, {TP0: (100, 119)}, generation=0)
    h.eos.rewinder.request()                 # e.g. a revoke raced with this batch
    h.eos.tick()
    assert "commit" not in h.producer.calls and "abort" in h.producer.calls
    assert h.eos.committed_positions() == {}


def test_a_clean_transaction_commits_offsets_one_past_the_last() -> None:
    h = Harness(FakeProducer())
    h.batch(1, {TP0: (100, 119), TP1: (200, 204)})
    h.eos.tick()
    assert h.producer.calls[-2:] == ["send_offsets", "commit"]
    assert h.eos.committed_positions() == {TP0: 120, TP1: 205}


def _alo(producer: FakeProducer, consumer: FakeConsumer, made: list[FakeProducer],
         failures: list[BaseException]) -> AtLeastOnce:
    def make() -> FakeProducer:
        p = FakeProducer()
        made.append(p)
        return p
    return AtLeastOnce(consumer=consumer, sink=KafkaSink(producer, batch_produce=False),  # type: ignore[arg-type]
                       make_producer=make, fail=failures.append, store_interval_s=0.0,  # type: ignore[arg-type]
                       max_recoveries=2)


def test_at_least_once_fatal_delivery_error_recreates_and_replays_from_the_stored_position() -> None:
    consumer = FakeConsumer({TP0: 100})
    made: list[FakeProducer] = []
    failures: list[BaseException] = []
    alo = _alo(FakeProducer(), consumer, made, failures)
    alo.register(1, {TP0: (100, 109)})
    ack = alo.open_batch(1)
    ack.expect(1)
    ack(None, None)
    alo.close_batch({TP0: (100, 109)}, ack, 0)
    alo.tick()
    assert consumer.stored == [("in", 0, 110)]
    alo.register(2, {TP0: (110, 119)})
    ack = alo.open_batch(2)
    ack.expect(1)
    ack(KafkaError(KafkaError._FATAL, "idempotence broken", fatal=True), None)
    alo.close_batch({TP0: (110, 119)}, ack, 0)
    alo.tick()
    assert len(made) == 1 and failures == []
    assert alo.current(0) is False, "work in flight is dropped"
    assert alo.source_tick() is True
    assert consumer.seeks == [("in", 0, 110)], "replay starts after the last done batch"
    alo.register(3, {TP0: (110, 119)})       # the replayed range registers cleanly


def test_at_least_once_stops_when_delivery_keeps_failing() -> None:
    failures: list[BaseException] = []
    alo = _alo(FakeProducer(), FakeConsumer({TP0: 0}), [], failures)
    for i in range(3):
        alo.produce_failed(DeliveryError(f"failure {i}", kafka_error=KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)))
    assert len(failures) == 1 and "within a minute" in str(failures[0])


def test_at_least_once_finish_is_bounded_when_acks_never_come() -> None:
    def never(timeout: float) -> None:
        time.sleep(timeout)

    consumer = FakeConsumer({TP0: 0})
    alo = _alo(FakeProducer({"flush": never}), consumer, [], [])
    alo.register(1, {TP0: (0, 9)})
    t0 = time.monotonic()
    alo.finish(time.monotonic() + 1.0)
    assert time.monotonic() - t0 < 3.0
    assert consumer.commits == [], "nothing unacknowledged is committed"


def test_outage_errors_never_stop_the_scorer_however_many() -> None:
    h = Harness(FakeProducer())
    timeout = KafkaError(KafkaError._MSG_TIMED_OUT, "message timed out")
    for _ in range(30):
        h.eos.produce_failed(DeliveryError("delivery timed out", kafka_error=timeout))
    assert h.failures == [], "a broker outage is waited out, not a reason to exit"


def test_exactly_once_stops_when_a_persistent_error_keeps_coming() -> None:
    h = Harness(FakeProducer())
    for i in range(12):
        h.eos.produce_failed(DeliveryError(f"record too large {i}"))     # no client error: not transient
    assert h.failures and "11 delivery failures within a minute" in str(h.failures[0])


def test_outputs_purged_by_our_own_abort_do_not_trigger_another_recovery() -> None:
    h = Harness(FakeProducer())
    ack = h.eos.open_batch(1)
    ack.expect(1)
    h.eos.close_batch({TP0: (100, 109)}, ack, 0)
    h.eos._abort("test")                               # as a revoke does
    ack(KafkaError(KafkaError._PURGE_QUEUE, "purged by the abort"), None)
    late = h.eos.open_batch(2)                         # a new transaction; a late error of the old one
    late.expect(1)
    h.eos.tick()
    assert h.made == [], "no producer re-created for the purge our abort caused"


def test_a_client_call_that_ignores_its_timeout_is_abandoned_and_the_producer_replaced() -> None:
    def hangs(_timeout: float) -> None:
        time.sleep(30)                       # as send_offsets_to_transaction did after a leader kill

    h = Harness(FakeProducer({"send_offsets": hangs}))
    h.eos._call_timeout_s = 1.0
    h.batch(1, {TP0: (100, 119)})
    t0 = time.monotonic()
    h.eos.tick()
    took = time.monotonic() - t0
    assert took < 8.0, f"the sink waited {took:.1f}s on a hung call"
    assert len(h.made) == 1 and h.sink.producer is h.made[0], "the hung producer is replaced"
    assert h.eos.source_tick() is True and ("in", 0, 100) in h.consumer.seeks
    assert h.failures == []


def test_at_least_once_fatal_error_raised_from_poll_recreates_and_replays() -> None:
    """Seen in make test's chaos: OUT_OF_ORDER_SEQUENCE_NUMBER raised by producer.poll after a leader
    kill ended the scorer ('scorer failing'); it is recovered from like a fatal delivery report."""
    def raise_oos(_t: float) -> None:
        raise KafkaException(KafkaError(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, "sequence desync", fatal=True))

    consumer = FakeConsumer({TP0: 100})
    made: list[FakeProducer] = []
    failures: list[BaseException] = []
    alo = _alo(FakeProducer({"poll": raise_oos}), consumer, made, failures)
    alo.tick()
    assert len(made) == 1 and failures == [], "a new producer, and the scorer goes on"
    assert alo.source_tick() is True
    assert consumer.seeks == [("in", 0, 100)]
