"""The native drain's checks: it attaches only to a plain Consumer, and an empty call round-trips."""

from __future__ import annotations

import logging

import pytest
from confluent_kafka import Consumer

from consumers.native_consume import NativeDrain


class _Sub(Consumer):  # type: ignore[misc]
    pass


def _conf() -> dict[str, object]:
    return {"bootstrap.servers": "127.0.0.1:1", "group.id": "g", "log_level": 0}


def test_refuses_what_it_cannot_verify_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "consumers.native_consume")
    assert NativeDrain.attach(object()) is None
    sub = _Sub(_conf())
    try:
        assert NativeDrain.attach(sub) is None, "a subclass may hold the handle elsewhere"
    finally:
        sub.close()
    assert "native consume unavailable" in caplog.text


def test_attaches_to_a_consumer_and_an_idle_call_returns_nothing() -> None:
    c = Consumer(_conf())
    drain = NativeDrain.attach(c)
    try:
        assert drain is not None
        batch = drain.consume(100, 0.05)
        assert len(batch) == 0 and batch.values == b""
        drain.close()
        with pytest.raises(RuntimeError, match="closed"):
            drain.consume(1, 0)
    finally:
        if drain is not None:
            drain.close()
        c.close()
