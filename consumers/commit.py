"""The commit protocol: every offset decision of both delivery modes, one class per mode.

The scorer's stages call it and never ask which mode runs:

    source thread  register(batch_id, ranges) -> generation    a batch was dispatched
                   source_tick() -> bool                        after each consume(): True = drop
                                                                what was consumed and held so far
                   on_revoke(tps) / on_lost(tps)                group callbacks
    any stage      current(generation) -> bool                  is work of this generation wanted?
    sink thread    open_batch(batch_id) / close_batch(...)      around one batch's outputs
                   produce_failed(exc)                          a produce call raised
                   tick()                                       every turn of the sink loop
                   finish(deadline)                             at shutdown, bounded

Shared by both modes (``Rewinder``): every piece of work carries the *generation* it was
consumed in. Recovery (a failed or fenced producer, an aborted transaction, lost
partitions) raises the minimum generation the stages accept at once, so work in flight is
dropped, and asks the source to seek every owned partition back to the last position
known to be done; the source starts the next generation when it has. A rewind that cannot
reach the broker is retried, and until it succeeds whatever is consumed is dropped.

Every blocking client call is made in short slices (``_sliced``), bounded by a deadline
that fits inside the session timeout and by the stop budget, and a slice loop gives up
at once when an abort is requested: no call here can hang the scorer.

At-least-once, in order:
 1. the source registers each batch's offset ranges with the OffsetTracker, in
    consumption order;
 2. every output of the batch carries (a share of) one BatchAck;
 3. when the ack fires without error the batch is complete in the tracker;
 4. every ``store_interval`` the advanced positions are stored
    (``enable.auto.offset.store=false``) and librdkafka's committer commits them;
 5. revoke and shutdown wait (bounded) for in-flight batches and commit synchronously;
 6. a failed delivery or produce re-creates the producer when it is fatally failed and
    rewinds to the stored positions: the batch is replayed (duplicates, never a gap). More
    than ``max_recoveries`` failures within a minute stop the scorer: the error persists.

Exactly-once, in order:
 1. a transaction is open while batches are produced; each closed batch adds its ranges
    (last offset + 1 per partition) and its generation to the transaction;
 2. every ``interval`` the positions are sent with ``send_offsets_to_transaction`` and
    the consumer's group metadata, then the transaction commits: outputs and offsets
    become visible together or not at all. A transaction holding work of a generation
    that is no longer current is aborted instead;
 3. an abortable error aborts the transaction; a fatal one (fenced, timed out), a failed
    abort, or a produce call that raised re-creates the producer (the new one fences the
    old epoch); either way every partition rewinds to its committed offset;
 4. a revoke or lost partitions abort the open transaction (the source thread waits a
    bounded time for the sink thread to do it) and rewind, so no output for a partition
    this process no longer owns is ever committed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable, Protocol, TypeVar

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition

from consumers.offsets import TP, OffsetTracker
from schemas.errors import DeliveryError
from sinks.kafka_sink import BatchAck, KafkaSink

log = logging.getLogger(__name__)
T = TypeVar("T")

SLICE_S = 1.0            # one blocking client call at most; then stop/abort requests are looked at
CALL_TIMEOUT_S = 8.0     # one transactional or group call in all: inside the 10-s session timeout
REVOKE_WAIT_S = 5.0      # exactly-once: a revoke waits this long for the sink to abort
DRAIN_WAIT_S = 20.0      # at-least-once: a graceful revoke waits this long for in-flight batches (else
                         # the next owner replays them); heartbeats go on meanwhile, the stop budget caps it


class CommitProtocol(Protocol):
    """What the scorer's stages call (see the module docstring for which thread calls what)."""

    def register(self, batch_id: int, ranges: dict[TP, tuple[int, int]]) -> int: ...
    def source_tick(self) -> bool: ...
    def on_revoke(self, tps: list[TP]) -> None: ...
    def on_lost(self, tps: list[TP]) -> None: ...
    def current(self, generation: int) -> bool: ...
    def open_batch(self, batch_id: int) -> BatchAck: ...
    def close_batch(self, ranges: dict[TP, tuple[int, int]], ack: BatchAck, generation: int) -> None: ...
    def produce_failed(self, exc: DeliveryError) -> None: ...
    def tick(self) -> None: ...
    def finish(self, deadline: float) -> None: ...
    def committed_positions(self) -> dict[TP, int]: ...
    def abandon(self) -> None: ...


def _serve(sink: KafkaSink, timeout: float = 0.0) -> KafkaError | None:
    """Serve the producer's callbacks. A producer without an error_cb raises its fatal error
    (fenced, out-of-order sequence after a leader change) from poll or flush: returned here,
    so the protocol recovers from it as from the same error met on any other path."""
    try:
        if timeout > 0:
            sink.flush(timeout)
        else:
            sink.poll(0)
    except KafkaException as exc:
        err = exc.args[0] if exc.args else None
        return err if isinstance(err, KafkaError) else KafkaError(KafkaError._FATAL, str(exc), fatal=True)
    return None


class _Interrupted(Exception):
    """A sliced call gave up because an abort was requested."""


HANG_GRACE_S = 2.0       # a client call still running this long past its bound is abandoned


def _sliced(fn: Callable[[float], T], *, deadline: float, interrupt: threading.Event | None = None) -> T:
    """Call ``fn(timeout)`` in slices of at most SLICE_S until it succeeds or ``deadline`` passes.

    librdkafka's transactional calls may be retried after a timeout (the operation goes on
    in the background), so slicing changes nothing but how soon we can give up. A
    non-retriable error is raised at once; ``interrupt`` set between slices raises
    ``_Interrupted``. The slices run on a thread of their own: a call that outlives its own
    timeout (seen: send_offsets_to_transaction blocked for minutes after a leader kill) is
    abandoned ``HANG_GRACE_S`` past the deadline and reported as a fatal timeout, so the
    caller replaces the producer instead of hanging with it.
    """
    box: list[tuple[bool, object]] = []
    done = threading.Event()

    def work() -> None:
        try:
            box.append((True, _slices(fn, deadline, interrupt)))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box.append((False, exc))
        finally:
            done.set()

    threading.Thread(target=work, name="client-call", daemon=True).start()
    if not done.wait(max(0.0, deadline - time.monotonic()) + HANG_GRACE_S):
        log.error("a client call did not return %.0fs past its bound: abandoning it", HANG_GRACE_S)
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "client call did not return within its bound",
                                        fatal=True))
    ok, value = box[0]
    if not ok:
        raise value  # type: ignore[misc]
    return value  # type: ignore[return-value]


def _slices(fn: Callable[[float], T], deadline: float, interrupt: threading.Event | None) -> T:
    while True:
        left = deadline - time.monotonic()
        try:
            return fn(max(0.05, min(SLICE_S, left)))
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            if not err.retriable() or time.monotonic() >= deadline:
                raise
        if interrupt is not None and interrupt.is_set():
            raise _Interrupted()


class Rewinder:
    """Generations and rewinds, shared by both modes (see the module docstring).

    ``request`` may be called from any thread; ``tick`` runs on the source thread only,
    after a consume() call, so no message fetched before a seek is ever accepted after it.
    """

    def __init__(self, consumer: Consumer, known_positions: Callable[[], dict[TP, int]]) -> None:
        self.consumer = consumer
        self._known = known_positions      # positions known done here (at-least-once: stored)
        self.generation = 0
        self.min_generation = 0
        self._requested = threading.Event()
        self.rewinds = 0

    def request(self) -> None:
        self.min_generation = self.generation + 1
        self._requested.set()

    def current(self, generation: int) -> bool:
        return generation >= self.min_generation

    def tick(self) -> bool:
        """Perform a requested rewind; True when one was requested (done now, or still pending)."""
        if not self._requested.is_set():
            return False
        self._requested.clear()
        self.generation = max(self.generation + 1, self.min_generation)
        self.min_generation = self.generation
        try:
            self._seek_all()
        except KafkaException as exc:
            log.warning("rewind failed (%s): retrying; consumed records are dropped until it succeeds", exc)
            self.request()
            time.sleep(0.2)        # the source thread only: a bounded back-off before the next try
            return True
        self.rewinds += 1
        return True

    def _seek_all(self) -> None:
        assignment = self.consumer.assignment()
        if not assignment:
            return
        known = self._known()
        unknown = [tp for tp in assignment if (tp.topic, tp.partition) not in known]
        targets = {(tp.topic, tp.partition): known[(tp.topic, tp.partition)] for tp in assignment
                   if (tp.topic, tp.partition) in known}
        if unknown:
            for tp in self.consumer.committed(unknown, timeout=CALL_TIMEOUT_S):
                targets[(tp.topic, tp.partition)] = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
        for (topic, part), offset in targets.items():
            try:
                self.consumer.seek(TopicPartition(topic, part, offset))
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError._STATE:
                    raise
                # its fetcher is stopped: a revoke is under way. It fetches nothing more, and a
                # later assignment starts at the committed offset.
                log.warning("not rewinding %s[%d]: %s (being revoked)", topic, part, exc)
        log.info("rewound %d partitions (generation %d)", len(targets), self.generation)


_TRANSIENT = frozenset(getattr(KafkaError, n) for n in (
    "_TIMED_OUT", "_MSG_TIMED_OUT", "_TIMED_OUT_QUEUE", "REQUEST_TIMED_OUT", "_TRANSPORT", "_ALL_BROKERS_DOWN",
    "NETWORK_EXCEPTION", "_RESOLVE", "_WAIT_COORD", "_PURGE_QUEUE", "_PURGE_INFLIGHT", "_STATE", "_CONFLICT",
    "_PREV_IN_PROGRESS", "_FENCED", "_FATAL", "INVALID_PRODUCER_EPOCH", "PRODUCER_FENCED",
    "TRANSACTION_COORDINATOR_FENCED", "INVALID_TXN_STATE", "CONCURRENT_TRANSACTIONS", "NOT_ENOUGH_REPLICAS",
    "NOT_ENOUGH_REPLICAS_AFTER_APPEND", "NOT_LEADER_FOR_PARTITION", "LEADER_NOT_AVAILABLE",
    "COORDINATOR_NOT_AVAILABLE", "NOT_COORDINATOR", "COORDINATOR_LOAD_IN_PROGRESS"))


def transient(err: object) -> bool:
    """Whether an error is one a cluster outage, a failover or a fence produces: recovery fixes
    those however often they come. Anything else (authorization, a record too large, an
    unknown topic) persists, and repeated ones stop the scorer."""
    if not isinstance(err, KafkaError):
        return False
    return err.code() in _TRANSIENT or err.retriable() or err.fatal() or err.txn_requires_abort()


def _dispose_in_background(holder: list[Producer]) -> None:
    """Drop the last reference to a discarded producer on a thread of its own: destroying a
    client whose brokers do not answer can block for as long as its socket timeouts."""
    threading.Thread(target=holder.clear, name="producer-dispose", daemon=True).start()


class _Recovery:
    """Re-creates a failed producer; stops the scorer when non-transient failures keep coming."""

    def __init__(self, *, sink: KafkaSink, make_producer: Callable[[], Producer], rewinder: Rewinder,
                 fail: Callable[[BaseException], None], max_recoveries: int, transactional: bool) -> None:
        self.sink = sink
        self._make_producer = make_producer
        self._rewinder = rewinder
        self._fail = fail
        self._max = max_recoveries
        self._transactional = transactional
        self._recent: deque[float] = deque()
        self.producer_restarts = 0

    def allowed(self, err: object) -> bool:
        """Count one failure; False (and the scorer stops) when a non-transient error persists."""
        if transient(err):
            return True
        now = time.monotonic()
        self._recent.append(now)
        while self._recent and now - self._recent[0] > 60.0:
            self._recent.popleft()
        if len(self._recent) > self._max:
            self._fail(DeliveryError(f"{len(self._recent)} delivery failures within a minute, the last: {err}"))
            return False
        return True

    def recreate(self, err: object, deadline: float) -> bool:
        """A new producer in place of a fenced or fatally failed one."""
        try:
            self.sink.producer.purge(in_queue=True, in_flight=False, blocking=False)
        except Exception:  # noqa: BLE001 - it is being discarded
            pass
        try:
            new = self._make_producer()
            if self._transactional:
                _sliced(new.init_transactions, deadline=deadline)
        except KafkaException as exc:
            log.warning("re-creating the producer after %s failed: %s; retried on the next failure", err, exc)
            return False
        old = [self.sink.producer]
        self.sink.producer = new
        _dispose_in_background(old)
        self.producer_restarts += 1
        log.warning("producer re-created after %s", err)
        return True


class AtLeastOnce:
    """Offsets stored after every output of a batch is acknowledged; replay on failure.

    Owns the OffsetTracker; never produces a record itself (the OutputWriter does).
    """

    mode = "at_least_once"

    def __init__(self, *, consumer: Consumer, sink: KafkaSink, make_producer: Callable[[], Producer],
                 fail: Callable[[BaseException], None], store_interval_s: float = 0.05,
                 on_error: Callable[[], None] | None = None, max_recoveries: int = 5) -> None:
        self.consumer = consumer
        self.sink = sink
        self.tracker = OffsetTracker()
        self._fail = fail
        self._store_interval_s = store_interval_s
        self._last_store = time.monotonic()
        self._stored: dict[TP, int] = {}
        self._on_error = on_error
        self._errors: deque[BaseException] = deque()     # acks fire on the sink thread, via poll
        self._deadline: float | None = None
        self.failed = False
        self.rewinder = Rewinder(consumer, self.tracker.positions)
        self._recovery = _Recovery(sink=sink, make_producer=make_producer, rewinder=self.rewinder, fail=fail,
                                   max_recoveries=max_recoveries, transactional=False)

    # -- source thread ---------------------------------------------------------------
    def register(self, batch_id: int, ranges: dict[TP, tuple[int, int]]) -> int:
        self.tracker.begin(batch_id, ranges)
        return self.rewinder.generation

    def source_tick(self) -> bool:
        if not self.rewinder.tick():
            return False
        self.tracker.discard_pending()
        return True

    def on_revoke(self, tps: list[TP]) -> None:
        if self.failed:                   # the next owner replays whatever was not stored
            self.tracker.revoke(tps)
            return
        wait = DRAIN_WAIT_S if self._deadline is None else max(0.0, self._deadline - time.monotonic())
        if not self.tracker.wait_drained(tps, wait):
            log.warning("revoke: in-flight batches for %s did not finish in %.0fs; the next owner replays them",
                        tps, wait)
        self._commit_sync(tps)
        self.tracker.revoke(tps)

    def on_lost(self, tps: list[TP]) -> None:
        self.tracker.revoke(tps)          # another member owns them already: commit nothing

    # -- every stage ---------------------------------------------------------------
    def current(self, generation: int) -> bool:
        return self.rewinder.current(generation)

    # -- sink thread -----------------------------------------------------------------
    def open_batch(self, batch_id: int) -> BatchAck:
        return BatchAck(batch_id, self._on_done)

    def _on_done(self, ack: BatchAck) -> None:
        if ack.error is not None:
            if self._on_error is not None:
                self._on_error()
            self._errors.append(KafkaException(ack.error))
            return
        self.tracker.complete(ack.batch_id)

    def close_batch(self, ranges: dict[TP, tuple[int, int]], ack: BatchAck, generation: int) -> None:
        ack.seal()

    def produce_failed(self, exc: DeliveryError) -> None:
        self._recover(exc, exc.kafka_error)

    def _recover(self, exc: BaseException, err: KafkaError | None) -> None:
        log.warning("delivery failed (%s): replaying from the last stored offsets", exc)
        if not self._recovery.allowed(err if err is not None else exc):
            self.failed = True
            return
        if err is None or err.fatal():
            self._recovery.recreate(exc, time.monotonic() + CALL_TIMEOUT_S)
        self.rewinder.request()

    def tick(self) -> None:
        err = _serve(self.sink)
        if err is not None:
            self._errors.append(KafkaException(err))
        while self._errors:
            exc = self._errors.popleft()
            self._recover(exc, exc.args[0] if isinstance(exc, KafkaException) else None)
        now = time.monotonic()
        if now - self._last_store >= self._store_interval_s:
            self._last_store = now
            self._store()

    def _store(self) -> None:
        if self.failed:
            return
        advanced = self.tracker.to_commit()
        if not advanced:
            return
        try:
            self.consumer.store_offsets(offsets=[TopicPartition(t, p, o) for (t, p), o in advanced.items()])
            self._stored.update(advanced)
        except KafkaException as exc:  # a partition revoked meanwhile: its new owner replays
            log.warning("store_offsets failed: %s", exc)

    def finish(self, deadline: float) -> None:
        self._deadline = deadline
        if self.failed:
            return
        try:
            remaining = self.sink.flush(max(0.1, deadline - time.monotonic()))
        except KafkaException as exc:       # fatally failed while stopping: the next owner replays
            log.warning("flush failed while stopping (%s): unacknowledged batches are replayed", exc)
            remaining = 0
        err = _serve(self.sink)
        if err is not None:
            log.warning("producer failed while stopping (%s): unacknowledged batches are replayed", err)
        if remaining:
            log.warning("%d outputs unacknowledged at the stop deadline: their batches are replayed", remaining)
        self._store()
        self._commit_sync(None)

    def _commit_sync(self, tps: list[TP] | None) -> None:
        positions = self.tracker.positions()
        if tps is not None:
            wanted = set(tps)
            positions = {tp: o for tp, o in positions.items() if tp in wanted}
        if not positions:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in positions.items()]
        try:
            # store first: librdkafka auto-commits the *stored* offsets of revoked partitions after
            # this callback, and a stale stored offset would move the commit backwards (duplicates)
            self.consumer.store_offsets(offsets=offsets)
        except KafkaException as exc:
            log.warning("store_offsets before commit failed: %s", exc)
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
            self._stored.update(positions)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                log.warning("commit failed: %s", exc)

    def committed_positions(self) -> dict[TP, int]:
        return dict(self._stored)

    @property
    def producer_restarts(self) -> int:
        return self._recovery.producer_restarts

    def abandon(self) -> None:
        self.failed = True


class ExactlyOnce:
    """Outputs and input offsets committed in one transaction per interval.

    Owns the transactional producer's lifecycle (begin / send offsets / commit / abort /
    re-create); never produces a record itself (the OutputWriter does).
    """

    mode = "exactly_once"

    def __init__(self, *, consumer: Consumer, sink: KafkaSink, make_producer: Callable[[], Producer],
                 fail: Callable[[BaseException], None], interval_s: float = 0.1,
                 call_timeout_s: float = CALL_TIMEOUT_S, max_recoveries: int = 10) -> None:
        self.consumer = consumer
        self.sink = sink
        self._fail = fail
        self._interval_s = interval_s
        self._call_timeout_s = call_timeout_s
        self._open = False
        self._started = 0.0
        self._positions: dict[TP, int] = {}
        self._generations: set[int] = set()         # generations of the batches in the open transaction
        self._committed: dict[TP, int] = {}
        self._batch_error: KafkaError | None = None
        self._txn = 0                                # which transaction an ack belongs to
        self._abort_request = threading.Event()
        self._abort_done = threading.Event()
        self._closed = False
        self._deadline: float | None = None          # set by finish(): shutdown gets a bounded time
        self.commits = 0
        self.aborts = 0
        self.rewinder = Rewinder(consumer, lambda: {})
        self._recovery = _Recovery(sink=sink, make_producer=make_producer, rewinder=self.rewinder, fail=fail,
                                   max_recoveries=max_recoveries, transactional=True)
        try:
            _sliced(self.sink.producer.init_transactions, deadline=time.monotonic() + 3 * call_timeout_s)
        except KafkaException as exc:
            raise DeliveryError(f"cannot initialise the transactional producer: {exc.args[0].str()}",
                                kafka_error=exc.args[0]) from exc

    def _call_deadline(self) -> float:
        """Deadline of one transactional call: the usual bound, or what is left of the stop budget."""
        d = time.monotonic() + self._call_timeout_s
        return d if self._deadline is None else min(d, self._deadline)

    # -- source thread ---------------------------------------------------------------
    def register(self, batch_id: int, ranges: dict[TP, tuple[int, int]]) -> int:
        return self.rewinder.generation

    def source_tick(self) -> bool:
        return self.rewinder.tick()

    def on_revoke(self, tps: list[TP]) -> None:
        """On the source thread, inside consume(): the sink thread aborts; we wait (bounded) until it has."""
        if self._closed:      # after shutdown everything is committed and the sink is gone
            return
        if self._deadline is None:
            self.rewinder.request()      # the partitions we keep go back to their committed offsets
        self._abort_done.clear()
        self._abort_request.set()
        if not self._abort_done.wait(REVOKE_WAIT_S):
            # Safe all the same: the sink aborts before it commits anything (the request stays
            # set), and the broker refuses offsets sent with a stale group generation.
            log.warning("revoke: the sink did not abort the open transaction within %.0fs", REVOKE_WAIT_S)

    def on_lost(self, tps: list[TP]) -> None:
        self.on_revoke(tps)

    # -- every stage ---------------------------------------------------------------
    def current(self, generation: int) -> bool:
        return self.rewinder.current(generation)

    # -- sink thread -----------------------------------------------------------------
    def open_batch(self, batch_id: int) -> BatchAck:
        if not self._open:
            self.sink.producer.begin_transaction()
            self._open = True
            self._started = time.monotonic()
        txn = self._txn
        return BatchAck(batch_id, lambda ack: self._on_done(ack, txn))

    def _on_done(self, ack: BatchAck, txn: int) -> None:
        # An aborted transaction's outputs fail with _PURGE_QUEUE / _PURGE_INFLIGHT once the
        # abort purges them: expected, and no reason for a second recovery.
        if ack.error is not None and txn == self._txn and self._batch_error is None \
                and ack.error.code() not in (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT):
            self._batch_error = ack.error

    def close_batch(self, ranges: dict[TP, tuple[int, int]], ack: BatchAck, generation: int) -> None:
        for tp, (_first, last) in ranges.items():
            if last + 1 > self._positions.get(tp, -1):
                self._positions[tp] = last + 1
        self._generations.add(generation)
        ack.seal()

    def produce_failed(self, exc: DeliveryError) -> None:
        """A produce call raised (e.g. the producer was fenced): this producer is done for."""
        err = exc.kafka_error if isinstance(exc.kafka_error, KafkaError) else None
        self._handle(err or KafkaError(KafkaError._FATAL, str(exc), fatal=True), "produce", recreate=True,
                     counted=err if err is not None else exc)

    def tick(self) -> None:
        err = _serve(self.sink)
        if err is not None:
            self._handle(err, "poll", recreate=True)
            return
        if self._abort_request.is_set():
            self._abort("revoke")
            self._abort_request.clear()
            self._abort_done.set()
            return
        if self._batch_error is not None:
            err, self._batch_error = self._batch_error, None
            self._handle(err, "delivery")
            return
        if self._open and time.monotonic() - self._started >= self._interval_s:
            self._commit()

    def _commit(self) -> None:
        if not all(self.rewinder.current(g) for g in self._generations):
            self._abort("work of an earlier generation")   # its rewind replays it
            return
        try:
            if self._positions:
                offsets = [TopicPartition(t, p, o) for (t, p), o in self._positions.items()]
                _sliced(lambda t: self.sink.producer.send_offsets_to_transaction(
                    offsets, self.consumer.consumer_group_metadata(), t),
                    deadline=self._call_deadline(), interrupt=self._abort_request)
            _sliced(self.sink.producer.commit_transaction, deadline=self._call_deadline(),
                    interrupt=self._abort_request)
        except _Interrupted:
            self._abort("revoke during commit")     # tick() answers the request next
            return
        except KafkaException as exc:
            self._handle(exc.args[0], "commit")
            return
        self._committed.update(self._positions)
        self._forget()
        self.commits += 1

    def _handle(self, err: KafkaError, where: str, *, recreate: bool = False, counted: object = None) -> None:
        if self._deadline is not None:
            # stopping: nothing more is consumed, so no rewind and no new producer. What is not
            # committed is replayed by the next owner; an abort that fails or runs out of time
            # is done by the broker (transaction timeout) or the next producer with this id.
            log.warning("transaction %s failed while stopping (%s): aborting, not rewinding", where, err)
            self._abort("stopping", recreate_on_failure=False)
            return
        log.warning("transaction %s failed (%s): aborting and rewinding", where, err)
        if not self._recovery.allowed(err if counted is None else counted):
            return
        if recreate or err.fatal() or not err.txn_requires_abort() and not err.retriable():
            self._reset(err)
        else:
            self._abort(where)
        self.rewinder.request()

    def _abort(self, why: str, *, recreate_on_failure: bool = True) -> None:
        if self._open:
            try:
                _sliced(self.sink.producer.abort_transaction, deadline=self._call_deadline())
                self.aborts += 1
                log.info("transaction aborted (%s)", why)
            except KafkaException as exc:
                if recreate_on_failure:
                    log.warning("abort_transaction failed (%s): re-creating the producer", exc)
                    self._reset(exc.args[0])
                    self.rewinder.request()
                else:
                    log.warning("abort_transaction failed (%s)", exc)
        self._forget()

    def _reset(self, err: KafkaError) -> None:
        """Fenced or fatally failed: a new producer with the same transactional.id fences the old epoch."""
        self.aborts += 1
        self._forget()
        self._recovery.recreate(err, self._call_deadline())

    def _forget(self) -> None:
        self._txn += 1                 # acks of the transaction being dropped are ignored from here on
        self._batch_error = None
        self._open = False
        self._positions = {}
        self._generations = set()

    def finish(self, deadline: float) -> None:
        self._deadline = deadline
        if self._abort_request.is_set():
            self._abort("revoke")
        elif self._open:
            self._commit()
        err = _serve(self.sink, max(0.1, min(10.0, deadline - time.monotonic())))
        if err is not None:
            log.warning("producer failed while stopping (%s): what is not committed is replayed", err)
        self._closed = True
        self._abort_done.set()

    def committed_positions(self) -> dict[TP, int]:
        return dict(self._committed)

    @property
    def producer_restarts(self) -> int:
        return self._recovery.producer_restarts

    def abandon(self) -> None:
        """The sink stopped on a failure: revokes must not wait for it to abort anything."""
        self._closed = True
        self._abort_done.set()
