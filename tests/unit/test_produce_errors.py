"""``produce_events`` fails with a StreamscoreError (one CLI line), not a bare RuntimeError."""

from __future__ import annotations

import pytest

from schemas.errors import DeliveryError, StreamscoreError
from streamscore.produce import produce_events


@pytest.mark.parametrize("fmt", ["avro", "json"])
def test_undeliverable_events_raise_delivery_error(fmt: str) -> None:
    # nothing listens on port 1; the short message timeout fails every message at once
    conf = {"bootstrap.servers": "127.0.0.1:1", "message.timeout.ms": 300, "socket.connection.setup.timeout.ms": 1000}
    with pytest.raises(DeliveryError, match="produce to nowhere") as info:
        produce_events(conf, "nowhere", 20, fmt=fmt)
    assert isinstance(info.value, StreamscoreError)
