"""A Faust agent that does nothing with its records: the floor under any Faust stage's cost.

Reads ``--count`` records of ``--input`` (raw bytes, ``stream.take(1000)``, as the monitor's
stages take their batches), then prints one JSON line: records, wall seconds and CPU seconds
(user + system of this process) from its first batch to its last, and exits. ``--seconds`` is
a hard stop (exit 3, nothing printed)."""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import threading
import time

import faust

from bench.peers.common import args


def main() -> None:
    a = args()
    app = faust.App(f"bench-{a.group}", broker=f"kafka://{a.bootstrap}", store="memory://",
                    value_serializer="raw", key_serializer="raw", web_enabled=False,
                    datadir=tempfile.mkdtemp(prefix="bench-faust-noop-"), consumer_auto_offset_reset="earliest")
    src = app.topic(a.input, value_type=bytes, key_type=bytes)
    seen: dict[str, float] = {"n": 0}
    threading.Timer(a.seconds, lambda: os._exit(3)).start()

    @app.agent(src)
    async def drop(stream):  # type: ignore[no-untyped-def]
        async for values in stream.take(1000, within=1.0):
            if "t0" not in seen:
                seen["t0"], seen["c0"] = time.monotonic(), _cpu()
            seen["n"] += len(values)
            if seen["n"] >= a.count:
                print(json.dumps({"records": int(seen["n"]), "seconds": time.monotonic() - seen["t0"],
                                  "cpu_seconds": _cpu() - seen["c0"]}), flush=True)
                os._exit(0)

    logging.getLogger("faust").setLevel(logging.WARNING)
    sys.argv = [sys.argv[0], "worker", "-l", "warn", "--without-web"]
    app.main()


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


if __name__ == "__main__":
    main()
