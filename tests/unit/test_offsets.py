import threading

import pytest

from consumers.offsets import OffsetTracker

TP0 = ("t", 0)
TP1 = ("t", 1)


def test_commit_position_is_one_past_the_last_done_prefix() -> None:
    tr = OffsetTracker()
    tr.begin(1, {TP0: (0, 9)})
    tr.begin(2, {TP0: (10, 19)})
    tr.begin(3, {TP0: (20, 29)})
    tr.complete(2)
    assert tr.to_commit() == {}, "batch 2 done but batch 1 is not: nothing is committable"
    tr.complete(1)
    assert tr.to_commit() == {TP0: 20}
    assert tr.to_commit() == {}, "a position is handed out once"
    tr.complete(3)
    assert tr.to_commit() == {TP0: 30}


def test_partitions_advance_independently() -> None:
    tr = OffsetTracker()
    tr.begin(1, {TP0: (0, 4), TP1: (100, 104)})
    tr.begin(2, {TP1: (105, 109)})
    tr.complete(2)
    assert tr.to_commit() == {}
    tr.complete(1)
    assert tr.to_commit() == {TP0: 5, TP1: 110}


def test_offsets_never_move_backwards() -> None:
    tr = OffsetTracker()
    tr.begin(1, {TP0: (10, 19)})
    with pytest.raises(ValueError, match="backwards"):
        tr.begin(2, {TP0: (5, 12)})
    tr.complete(1)
    with pytest.raises(ValueError, match="backwards"):
        tr.begin(3, {TP0: (19, 25)})
    tr.begin(4, {TP1: (0, 1)})
    with pytest.raises(ValueError, match="twice"):
        tr.begin(4, {TP1: (2, 3)})


def test_revoked_partition_ignores_late_acks() -> None:
    tr = OffsetTracker()
    tr.begin(1, {TP0: (0, 9), TP1: (0, 9)})
    tr.revoke([TP0])
    tr.complete(1)
    assert tr.to_commit() == {TP1: 10}
    assert TP0 not in tr.positions()


def test_wait_drained_blocks_until_complete() -> None:
    tr = OffsetTracker()
    tr.begin(1, {TP0: (0, 9)})
    assert not tr.wait_drained([TP0], 0.05)
    assert tr.wait_drained([TP1], 0.05), "nothing pending on another partition"
    t = threading.Timer(0.05, tr.complete, args=(1,))
    t.start()
    assert tr.wait_drained([TP0], 5)
    assert tr.in_flight() == 0


def test_discard_pending_keeps_committed_positions() -> None:
    tr = OffsetTracker()
    tr.begin(1, {TP0: (0, 9)})
    tr.complete(1)
    tr.begin(2, {TP0: (10, 19)})
    tr.discard_pending()
    tr.complete(2)
    assert tr.positions() == {TP0: 10}
