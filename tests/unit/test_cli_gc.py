"""``streamscore serve`` keeps the cyclic GC out of the latency tail (streamscore.cli.quiet_gc)."""

import gc

from streamscore.cli import quiet_gc


def test_quiet_gc_freezes_startup_objects_and_raises_the_young_threshold() -> None:
    before = gc.get_threshold()
    try:
        quiet_gc()
        assert gc.get_threshold() == (50_000, 50, 1_000)
        assert gc.get_freeze_count() > 1_000, "startup objects moved to the permanent generation"
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
