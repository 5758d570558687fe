"""The commit protocol, written once for both delivery modes.

The sink stage drives it: ``open_batch`` before a batch's outputs are produced,
``close_batch`` after, ``tick`` on every loop, ``finish`` at shutdown. Revokes arrive on
the source thread through ``on_revoke``.

At-least-once, in order:
 1. each batch's offset ranges were registered with the OffsetTracker by the source, in
    consumption order;
 2. every output of the batch carries (a share of) one BatchAck;
 3. when the ack fires without error the batch is complete in the tracker;
 4. every ``store_interval`` the advanced positions are stored
    (``enable.auto.offset.store=false``) and librdkafka's committer commits them;
 5. revoke and shutdown wait for in-flight batches and commit synchronously.
 A failed delivery stops the scorer with nothing further stored: the batch is replayed.

Exactly-once, in order:
 1. a transaction is open while batches are produced; each closed batch adds its ranges
    (last offset + 1 per partition) to the transaction's positions;
 2. every ``interval`` the positions are sent with ``send_offsets_to_transaction`` and
    the consumer's group metadata, then the transaction commits: outputs and offsets
    become visible together or not at all;
 3. an abortable error aborts the transaction, a fatal one (fenced, timed out) also
    re-creates the producer; either way the scorer rewinds every partition to its
    committed offset and drops in-flight work of the aborted generation;
 4. a revoke aborts the open transaction and rewinds, so no output for a partition this
    process no longer owns is ever committed.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from consumers.offsets import OffsetTracker
from schemas.errors import DeliveryError
from sinks.kafka_sink import BatchAck, KafkaSink

log = logging.getLogger(__name__)
TP = tuple[str, int]


class CommitProtocol(Protocol):
    mode: str

    def open_batch(self, batch_id: int) -> BatchAck: ...
    def close_batch(self, ranges: dict[TP, tuple[int, int]], ack: BatchAck) -> None: ...
    def tick(self) -> None: ...
    def finish(self) -> None: ...
    def on_revoke(self, tps: list[TP]) -> None: ...
    def committed_positions(self) -> dict[TP, int]: ...
    def abandon(self) -> None: ...


class AtLeastOnce:
    mode = "at_least_once"

    def __init__(self, *, consumer: Consumer, sink: KafkaSink, tracker: OffsetTracker,
                 fail: Callable[[BaseException], None], store_interval_s: float = 0.05,
                 revoke_timeout_s: float = 30.0, on_error: Callable[[], None] | None = None) -> None:
        self.consumer = consumer
        self.sink = sink
        self.tracker = tracker
        self._fail = fail
        self._store_interval_s = store_interval_s
        self._revoke_timeout_s = revoke_timeout_s
        self._last_store = time.monotonic()
        self._stored: dict[TP, int] = {}
        self._on_error = on_error
        self.failed = False

    def open_batch(self, batch_id: int) -> BatchAck:
        return BatchAck(batch_id, self._on_done)

    def _on_done(self, ack: BatchAck) -> None:
        if ack.error is not None:
            self.failed = True
            if self._on_error is not None:
                self._on_error()
            self._fail(DeliveryError(f"batch {ack.batch_id}: delivery failed: {ack.error}"))
            return
        self.tracker.complete(ack.batch_id)

    def close_batch(self, ranges: dict[TP, tuple[int, int]], ack: BatchAck) -> None:
        ack.seal()

    def tick(self) -> None:
        self.sink.poll(0)
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

    def finish(self) -> None:
        if self.failed:
            return
        remaining = self.sink.flush(60.0)
        if remaining:
            self.failed = True
            self._fail(DeliveryError(f"{remaining} outputs still unacknowledged at shutdown"))
            return
        self.sink.poll(0)
        self._store()
        self.commit_sync(None)

    def on_revoke(self, tps: list[TP]) -> None:
        if not self.tracker.wait_drained(tps, self._revoke_timeout_s):
            log.warning("revoke: in-flight batches for %s did not finish in %.0fs", tps, self._revoke_timeout_s)
        if not self.failed:
            self.commit_sync(tps)
        self.tracker.revoke(tps)

    def commit_sync(self, tps: list[TP] | None) -> None:
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

    def abandon(self) -> None:
        self.failed = True


class ExactlyOnce:
    mode = "exactly_once"

    def __init__(self, *, consumer: Consumer, sink: KafkaSink, make_producer: Callable[[], Producer],
                 fail: Callable[[BaseException], None], request_rewind: Callable[[], None],
                 interval_s: float = 0.1, timeout_s: float = 30.0, stop_timeout_s: float = 20.0) -> None:
        self.consumer = consumer
        self.sink = sink
        self._make_producer = make_producer
        self._fail = fail
        self._request_rewind = request_rewind
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._open = False
        self._started = 0.0
        self._positions: dict[TP, int] = {}
        self._committed: dict[TP, int] = {}
        self._batch_error: KafkaError | None = None
        self._abort_request = threading.Event()
        self._abort_done = threading.Event()
        self._closed = False
        self._stop_timeout_s = stop_timeout_s
        self._deadline: float | None = None    # set by finish(): shutdown gets a bounded time
        self.commits = 0
        self.aborts = 0
        self.producer_restarts = 0
        self.sink.producer.init_transactions(self._timeout_s)

    def _t(self) -> float:
        """Timeout for one transactional call: the usual one, or what is left of the shutdown budget."""
        if self._deadline is None:
            return self._timeout_s
        return max(0.1, min(self._timeout_s, self._deadline - time.monotonic()))

    # -- batches ---------------------------------------------------------------------
    def open_batch(self, batch_id: int) -> BatchAck:
        if not self._open:
            self.sink.producer.begin_transaction()
            self._open = True
            self._started = time.monotonic()
        return BatchAck(batch_id, self._on_done)

    def _on_done(self, ack: BatchAck) -> None:
        if ack.error is not None and self._batch_error is None:
            self._batch_error = ack.error

    def close_batch(self, ranges: dict[TP, tuple[int, int]], ack: BatchAck) -> None:
        for tp, (_first, last) in ranges.items():
            if last + 1 > self._positions.get(tp, -1):
                self._positions[tp] = last + 1
        ack.seal()

    # -- the sink loop ---------------------------------------------------------------
    def tick(self) -> None:
        self.sink.poll(0)
        if self._abort_request.is_set():
            self._abort("revoke")
            self._abort_request.clear()
            self._abort_done.set()
            return
        if self._batch_error is not None:
            err, self._batch_error = self._batch_error, None
            self._handle(KafkaException(err), "delivery")
            return
        if self._open and time.monotonic() - self._started >= self._interval_s:
            self._commit()

    def _commit(self) -> None:
        try:
            if self._positions:
                offsets = [TopicPartition(t, p, o) for (t, p), o in self._positions.items()]
                self.sink.producer.send_offsets_to_transaction(
                    offsets, self.consumer.consumer_group_metadata(), self._t())
            self._commit_with_retry()
        except KafkaException as exc:
            self._handle(exc, "commit")
            return
        self._committed.update(self._positions)
        self._positions = {}
        self._open = False
        self.commits += 1

    def _commit_with_retry(self) -> None:
        for attempt in range(5):
            try:
                self.sink.producer.commit_transaction(self._t())
                return
            except KafkaException as exc:
                late = self._deadline is not None and time.monotonic() >= self._deadline
                if not exc.args[0].retriable() or attempt == 4 or late:
                    raise
                log.warning("commit_transaction retry %d: %s", attempt + 1, exc)

    def _handle(self, exc: KafkaException, where: str) -> None:
        err: KafkaError = exc.args[0]
        if self._deadline is not None:
            # shutting down: nothing more is consumed, so no rewind and no new producer. What
            # is not committed is replayed by the next owner; an abort that fails or runs out
            # of time is done by the broker (transaction timeout) or the next producer with
            # the same transactional.id.
            log.warning("transaction %s failed while stopping (%s): aborting, not rewinding", where, err)
            try:
                if self._open:
                    self.sink.producer.abort_transaction(self._t())
            except KafkaException as exc:
                log.warning("abort_transaction while stopping failed: %s", exc)
            self._open = False
            self._positions = {}
            return
        log.warning("transaction %s failed (%s): aborting and rewinding", where, err)
        if err.fatal() or not err.txn_requires_abort() and not err.retriable():
            self._recreate_producer(err)
        else:
            self._abort(where)
        self._request_rewind()

    def _abort(self, why: str) -> None:
        if self._open:
            try:
                self.sink.producer.abort_transaction(self._t())
            except KafkaException as exc:
                log.warning("abort_transaction failed (%s): re-creating the producer", exc)
                self._recreate_producer(exc.args[0])
                return
            self.aborts += 1
            log.info("transaction aborted (%s)", why)
        self._open = False
        self._positions = {}

    def _recreate_producer(self, err: KafkaError) -> None:
        """Fenced or fatally failed: a new producer with the same transactional.id fences the old epoch."""
        self.aborts += 1
        self.producer_restarts += 1
        old = self.sink.producer
        try:
            old.flush(0)
        except Exception:  # noqa: BLE001 - it is being discarded
            pass
        self._open = False
        self._positions = {}
        try:
            new = self._make_producer()
            new.init_transactions(self._timeout_s)
        except KafkaException as exc:
            self._fail(DeliveryError(f"cannot re-create the transactional producer after {err}: {exc}"))
            return
        self.sink.producer = new
        log.warning("transactional producer re-created after %s", err)

    def finish(self) -> None:
        self._deadline = time.monotonic() + self._stop_timeout_s
        if self._open:
            self._commit()
        self.sink.flush(max(0.1, min(10.0, self._deadline - time.monotonic())))
        self._closed = True

    def on_revoke(self, tps: list[TP]) -> None:
        """Called on the source thread: the sink thread aborts; we wait until it has."""
        if self._closed:      # after shutdown everything is committed and the sink is gone
            return
        self._abort_done.clear()
        self._abort_request.set()
        if not self._abort_done.wait(self._timeout_s):
            log.warning("revoke: the sink did not abort the open transaction in time")

    def committed_positions(self) -> dict[TP, int]:
        return dict(self._committed)

    def abandon(self) -> None:
        """The sink stopped on a failure: revokes must not wait for it to abort anything."""
        self._closed = True
