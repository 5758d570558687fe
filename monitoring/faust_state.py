"""Changelog-backed state the monitor's agents can wait on, and the retry loop they share.

A record is acknowledged (and so committable) only when its handler returns, so a handler that
awaits its state's changelog writes before returning never lets a commit pass a state change
that is not on the broker. Faust's own flush before a commit does not guarantee that: it drains
the producer buffer with a 0.1 s timeout, and a record it has dequeued but not yet handed to the
client is in neither queue. A failed changelog write is only logged by Faust, so it is repeated.

The restored state, not the group's committed offset, says where reading resumes: when a
recovery completes, and before Faust seeks the stream partitions to their committed offsets, a
table with a ``resume`` hook commits the offset after the last record its restored state
applied, per source partition (``StateTable.on_recovery_completed``), so a commit that got ahead
of the changelog cannot skip a record and one behind it re-reads nothing; and it holds the
consumer's flow until Faust has finished resuming (records handed over before that were lost).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from typing import Any, Callable, Protocol

import faust
from faust.types import TP

from monitoring.truth_core import Staged, Store, Update, write

log = logging.getLogger(__name__)


Resume = Callable[[Iterable[int]], Mapping[tuple[str, int], int]]
"""Restored partitions -> {(source topic, partition): the offset after the last record their state applied}."""


class StateTable(faust.Table):  # type: ignore[misc]   # faust is untyped
    """A Faust table that remembers its latest changelog write, and with ``keep_writes`` every
    write since the last ``take_writes()`` (a record that writes several keys waits for all);
    with ``resume``, after a recovery it commits where each restored partition's reading resumes."""

    last_write: Awaitable[object] | None = None
    keep_writes = False
    resume: Resume | None = None
    partition_of: Callable[[str], int] | None = None
    recovered: Callable[[list[int]], Awaitable[None]] | None = None
    """Called with the restored partitions when a recovery completes, before reading resumes."""

    def partition_for_key(self, key: Any) -> Any:
        """The changelog partition of a key: ``partition_of(key)`` when set (a batch writes after its
        records were read, so the current event does not name it), else the current event's (Faust's way)."""
        if self.partition_of is not None:
            return self.partition_of(key)
        return super().partition_for_key(key)

    async def on_recovery_completed(self, active_tps: Any, standby_tps: Any) -> None:
        """Runs after the state is restored and before Faust seeks the stream partitions to their
        committed offsets (``active_tps``: this table's changelog partitions, numbered as its
        source partitions): committing the restored states' positions makes that seek land on them.

        The consumer's flow is stopped here too: Faust resumes the stream partitions, seeks, and
        only then resumes its flow control, which empties every stream's queue; records the fetch
        loop handed over in between (with the flow still on from reading the changelogs) were
        dropped from the queue yet counted as read, so they were never processed nor
        acknowledged: lost, or, when they were replays, a committed offset stuck behind them for
        good. With the flow stopped the fetch loop hands over nothing until Faust resumes it,
        after its flow control (``Recovery.on_recovery_completed``)."""
        await super().on_recovery_completed(active_tps, standby_tps)
        parts = sorted({tp.partition for tp in active_tps})
        if self.resume is not None:
            self.app.consumer.stop_flow()
        if self.recovered is not None:
            await self.recovered(parts)
        if self.resume is None:
            return
        positions = self.resume(parts)
        if not positions:
            return
        offsets = {TP(topic, p): o for (topic, p), o in positions.items()}
        # the client's own commit of given offsets (Faust's public commit only commits acked records)
        if await self.app.consumer._commit(offsets):  # type: ignore[attr-defined]
            log.info("%s: resuming at the restored states' offsets %s", self.name, dict(positions))
        else:
            log.warning("%s: could not commit the restored states' offsets %s", self.name, dict(positions))

    def send_changelog(self, *args: Any, **kwargs: Any) -> Any:
        fut = super().send_changelog(*args, **kwargs)
        self.last_write = fut
        if self.keep_writes:
            self.__dict__.setdefault("_writes", []).append(fut)
        return fut

    def take_writes(self) -> list[Awaitable[object]]:
        """The changelog writes since the last call (their delivery futures)."""
        writes: list[Awaitable[object]] = self.__dict__.pop("_writes", [])
        return writes


def state_table(app: faust.App, name: str, parts: int, *, keep_writes: bool = False,
                resume: Callable[[Any], Resume] | None = None, partition_of: Callable[[str], int] | None = None
                ) -> Any:
    """A ``StateTable`` of JSON values (the app default), registered with the app; ``resume``
    makes its hook from the table (see ``StateTable``)."""
    table = StateTable(app, name=name, default=None, beacon=app.tables.beacon, partitions=parts)
    table.keep_writes = keep_writes
    table.resume = None if resume is None else resume(table)
    table.partition_of = partition_of
    return app.tables.add(table)


class DurableStore(Store, Protocol):
    """A ``Store`` whose writes go to a changelog and can be waited for."""

    def take_writes(self) -> list[Awaitable[object]]: ...


async def until_done(attempt: Callable[[], Awaitable[object]], what: str,
                     on_error: Callable[[], None] = lambda: None) -> None:
    """Await ``attempt()`` until it succeeds, logging each failure and backing off (0.2 s doubling to 5 s)."""
    delay = 0.2
    while True:
        try:
            await attempt()
            return
        except Exception as exc:  # Redis or the broker down, restarting, timing out: try again
            on_error()
            log.warning("%s failed (%s); retrying in %.1fs", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def persist(store: DurableStore, update: Update | Sequence[Update], what: str) -> None:
    """Write ``update`` (or several, in order; ``truth_core.write``: meta first) and wait until every
    changelog write since the last ``take_writes()`` -- the record's settling writes included -- is on
    the broker. A retry writes every key again, deletes included (``again``), so a lost changelog
    write is repeated."""
    updates = [update] if isinstance(update, Update) else list(update)
    tries = 0

    async def attempt() -> None:
        nonlocal tries
        for u in updates:
            write(store, u, again=tries > 0)
        tries += 1
        await asyncio.gather(*store.take_writes())

    await until_done(attempt, what)


async def persist_staged(store: DurableStore, staged: Staged, what: str) -> None:
    """Write a batch's writes to ``store`` (its base) in their order (so a crash leaves a prefix of its
    records' writes, as when each record is written alone) and wait once until all are on the broker.
    A retry writes every key again, deletes included (a delete of an absent key: a set, then the delete)."""
    tries = 0

    async def attempt() -> None:
        nonlocal tries
        store.take_writes()
        for key, value in staged.log:
            if value is not Staged.GONE:
                store[key] = value
                continue
            if store.get(key) is None:
                if not tries:
                    continue
                store[key] = 0
            del store[key]
        tries += 1
        await asyncio.gather(*store.take_writes())

    await until_done(attempt, what)
