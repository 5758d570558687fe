import pytest

from consumers.batcher import AdaptiveBatcher


def test_closes_on_size() -> None:
    b = AdaptiveBatcher(max_size=100, max_wait_s=1.0, latency_target_s=None)
    b.add(60, 0.0)
    assert b.should_close(0.0) is None
    b.add(40, 0.001)
    assert b.should_close(0.001) == "size"
    assert b.close(0.001, "size") == 100
    assert b.rows == 0 and b.stats.batches == 1 and b.stats.closed_by["size"] == 1


def test_wait_deadline_starts_at_first_row() -> None:
    b = AdaptiveBatcher(max_size=1000, max_wait_s=0.010, latency_target_s=None)
    assert b.should_close(5.0) is None, "empty batch never closes"
    b.add(1, 10.0)
    assert b.should_close(10.009) is None
    b.add(5, 10.009)   # later arrivals do not extend the deadline
    assert b.should_close(10.0101) == "wait"
    assert b.time_left(10.005) == pytest.approx(0.005)


def test_latency_rule_closes_before_max_wait_when_model_is_slow() -> None:
    b = AdaptiveBatcher(max_size=10_000, max_wait_s=0.050, latency_target_s=0.020, overhead_s=0.001)
    for _ in range(20):
        b.observe_model(1000, 0.010)       # ~10 ms per 1000-row call
    b.add(1000, 0.0)
    assert b.should_close(0.0) is None
    # 8 ms later: 8 + 1 (slice) + ~10 (model) + 1 (overhead) > 20 -> close now
    assert b.should_close(0.0085) == "latency"


def test_latency_rule_counts_age_of_oldest_row() -> None:
    b = AdaptiveBatcher(max_size=10_000, max_wait_s=0.050, latency_target_s=0.020)
    b.add(10, 0.0, oldest_age_s=0.025)      # already older than the target
    assert b.should_close(0.0) == "latency"
    assert b.time_left(0.0) == 0.0


def test_fast_model_lets_batches_grow_to_max_wait() -> None:
    b = AdaptiveBatcher(max_size=10_000, max_wait_s=0.005, latency_target_s=0.020)
    for _ in range(20):
        b.observe_model(1000, 0.0002)
    b.add(100, 0.0)
    assert b.should_close(0.004) is None
    assert b.should_close(0.0051) == "wait"


def test_model_cost_estimate_tracks_observations() -> None:
    b = AdaptiveBatcher(max_size=10_000, max_wait_s=0.005)
    for _ in range(200):
        b.observe_model(100, 0.0011)
        b.observe_model(1000, 0.0020)
    assert b.model_cost(1000) == pytest.approx(0.0020, rel=0.35)
    assert b.model_cost(100) < b.model_cost(1000)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        AdaptiveBatcher(max_size=0, max_wait_s=0.1)
    with pytest.raises(ValueError):
        AdaptiveBatcher(max_size=1, max_wait_s=-1)


def test_closes_by_need_only_when_drained_and_the_model_stage_is_idle() -> None:
    b = AdaptiveBatcher(max_size=1000, max_wait_s=0.010, latency_target_s=None, close_by_need=True)
    b.add(50, 0.0)
    assert b.should_close(0.001, drained=True, next_idle=False) is None, "model busy: keep growing"
    assert b.should_close(0.001, drained=False, next_idle=True) is None, "more already fetched: take it first"
    assert b.should_close(0.001) is None, "callers that cannot tell keep the clock rules"
    assert b.should_close(0.001, drained=True, next_idle=True) == "need"
    assert b.close(0.001, "need") == 50 and b.stats.closed_by["need"] == 1
    assert b.should_close(0.002, drained=True, next_idle=True) is None, "an empty batch never closes"


def test_close_by_need_is_off_by_default() -> None:
    b = AdaptiveBatcher(max_size=1000, max_wait_s=0.010, latency_target_s=None)
    b.add(50, 0.0)
    assert b.should_close(0.001, drained=True, next_idle=True) is None
    assert b.should_close(0.011, drained=True, next_idle=True) == "wait"
