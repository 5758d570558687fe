"""The ``features_online`` contender: one Redis lookup and three per-key aggregates over 100,000
distinct accounts (docs/online-features.md), on the demo events keyed by account.

Its input is its own topic (the demo events with ``account_id`` drawn uniformly from 100,000
accounts, keyed by it), every account has a hash in Redis, and the model is a sigmoid-linear
ONNX graph over log1p(amount), the two looked-up fields and the three aggregates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

KEYS = 100_000
AGGREGATES = [{"name": "n_10m", "key": "account_id", "op": "count", "window": "10m"},
              {"name": "amt_sum_1h", "key": "account_id", "op": "sum", "field": "amount", "window": "1h"},
              {"name": "countries_24h", "key": "account_id", "op": "distinct_count", "field": "country",
               "window": "24h"}]
FEATURES = [{"name": "amount", "transforms": ["log1p"]},
            {"name": "limit", "field": "acct.limit", "transforms": [{"standardize": {"mean": 500.0, "std": 300.0}}]},
            {"name": "risk", "field": "acct.risk"},
            *[{"name": a["name"]} for a in AGGREGATES]]


def model_registry(work: Path) -> Path:
    from models.base import InputSpec
    from models.registry import ModelRegistry
    from models.testing import write_linear_onnx

    root = work / "online-registry"
    if not (root / "fraud-online").is_dir():
        spec = InputSpec.from_dict({"features": FEATURES})
        artifact = write_linear_onnx(work / "online.onnx", np.linspace(-0.01, 0.01, spec.inputs["features"][1]))
        ModelRegistry(root).register("fraud-online", artifact, format="onnx", input_spec=spec, output_spec={},
                                     stage="production")
    return root


def produce(bootstrap: str, topic: str, count: int, *, chunk: int = 50_000) -> None:
    """The demo events with uniformly drawn accounts, keyed by account (one account, one partition)."""
    from confluent_kafka import Producer

    from models.demo_data import generate
    from streamscore.produce import encode_transactions

    rng = np.random.default_rng(7)
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "batch.num.messages": 10000,
                  "queue.buffering.max.messages": 1_000_000, "compression.type": "lz4"})
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        cols = generate(n, seed=11, start=start)
        cols["account_id"] = np.array([f"acct-{k:06d}" for k in rng.integers(0, KEYS, n)], dtype=object)
        for value, acct in zip(encode_transactions(cols, n), cols["account_id"].tolist()):
            while True:
                try:
                    p.produce(topic, value, acct.encode())
                    break
                except BufferError:
                    p.poll(0.01)
        p.poll(0)
    assert p.flush(120) == 0


def load_redis(url: str) -> None:
    """A hash per account (limit, risk), as a feature job would write them."""
    import redis

    r = redis.Redis.from_url(url)
    rng = np.random.default_rng(3)
    pipe = r.pipeline(transaction=False)
    for k in range(KEYS):
        pipe.hset(f"acct:acct-{k:06d}", mapping={"limit": int(rng.integers(100, 1000)), "risk": float(rng.random())})
        if k % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()


def pipeline(t_in: str, t_out: str, redis_url: str) -> dict[str, Any]:
    lookup = {"name": "acct", "redis": {"url": redis_url, "key": "acct:{account_id}", "fields": ["limit", "risk"]},
              "defaults": {"limit": 50.0, "risk": 0.5}, "cache_ttl_s": 60.0, "cache_max_keys": KEYS}
    return {"name": "fraud", "input": {"topic": t_in}, "model": {"name": "fraud-online"}, "output": {"topic": t_out},
            "lookups": [lookup], "aggregates": AGGREGATES}


def state_rss(keys: int = KEYS, per_key: int = 20, batch: int = 8192) -> dict[str, float]:
    """RSS growth of one process holding the three aggregates' state for ``keys`` accounts with
    ``per_key`` events each (all inside the windows), and the state's own byte estimate."""
    import resource

    from models.aggregates import AggregateEngine
    from streamscore.config import AggregateConfig

    def rss_mb() -> float:
        with open("/proc/self/status") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return kb / 1024

    engine = AggregateEngine([AggregateConfig.model_validate(a).spec() for a in AGGREGATES])
    states = {p: engine.new_state() for p in range(4)}
    rng = np.random.default_rng(5)
    n = keys * per_key
    acct = rng.permutation(np.repeat(np.arange(keys), per_key))
    countries = np.array(["DE", "FR", "GB", "US", "NL", "ES", "IT", "PL"], dtype=object)
    before = rss_mb()
    t0 = 1_764_600_000_000
    for lo in range(0, n, batch):
        rows = np.arange(lo, min(n, lo + batch))
        a = acct[rows]
        cols = {"account_id": np.array([f"acct-{k:06d}" for k in a.tolist()], dtype=object),
                "amount": rng.gamma(2.0, 20.0, len(rows)), "country": countries[rng.integers(0, 8, len(rows))]}
        engine.apply(states, cols, {}, {}, (a % 4).astype(np.int32), rows.astype(np.int64), t0 + rows // 10)
    after = rss_mb()
    held = sum(s.keys() for s in states.values())
    return {"keys": held, "events": n, "rss_growth_mb": round(after - before, 1),
            "state_bytes_estimate_mb": round(sum(s.nbytes() for s in states.values()) / 2**20, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def micro(redis_url: str | None, events: int = 400_000, batch: int = 8192) -> dict[str, float]:
    """The two stages in process, no broker: ``events`` events over ``KEYS`` accounts (4 partitions, keyed),
    in batches of ``batch``, through the three aggregates (their changelog records' buffer included) and (with
    ``redis_url``, its hashes loaded by ``load_redis``) the lookup; microseconds per event of wall and of this
    process's CPU time."""
    import threading
    import time

    from consumers.changelog import Changelog
    from models.aggregates import AggregateEngine
    from models.lookups import Lookup, RedisHashStore
    from schemas.columns import StrColumn
    from streamscore.config import AggregateConfig, LookupConfig

    class Quiet:
        def lookup_wait(self, pipeline: str, lookup: str, seconds: float) -> None: ...
        def lookup_keys(self, pipeline: str, lookup: str, fetched: int, cached: int, missing: int) -> None: ...

    engine = AggregateEngine([AggregateConfig.model_validate(a).spec() for a in AGGREGATES])
    states = {p: engine.new_state() for p in range(4)}
    lookup = None
    if redis_url:
        load_redis(redis_url)
        spec = LookupConfig.model_validate(pipeline("in", "out", redis_url)["lookups"][0]).spec()
        lookup = Lookup(spec, RedisHashStore(redis_url), pipeline="p", metrics=Quiet(), stop=threading.Event())
    rng = np.random.default_rng(1)
    countries = np.array([b"DE", b"FR", b"GB", b"US", b"NL", b"ES", b"IT", b"PL"], dtype=object)
    next_offset = np.zeros(4, np.int64)
    spent = {"aggregates": [0.0, 0.0], "lookup": [0.0, 0.0]}
    for lo in range(0, events, batch):
        acct = rng.integers(0, KEYS, min(batch, events - lo))
        acct = acct[np.argsort(acct % 4, kind="stable")]               # rows in partition order
        parts = (acct % 4).astype(np.int32)
        offsets = next_offset[parts] + np.arange(len(acct)) - np.searchsorted(parts, parts)
        next_offset += np.bincount(parts, minlength=4)
        cols = {"account_id": StrColumn.from_bytes([b"acct-%06d" % k for k in acct.tolist()]),
                "amount": np.round(rng.gamma(2.0, 20.0, len(acct)), 2),       # cents, as the demo events
                "country": StrColumn.from_bytes(countries[rng.integers(0, 8, len(acct))].tolist())}
        times = 1_764_600_000_000 + (lo + np.arange(len(acct))) // 50
        for stage, run in (("aggregates", lambda: Changelog.of("changelog", engine.apply(states, cols, {}, {}, parts,
                                                                                          offsets, times))),
                           ("lookup", None if lookup is None else lambda: lookup.join(cols, {}, {}, len(acct)))):
            if run is not None:
                w, c = time.perf_counter(), time.process_time()
                run()
                spent[stage][0] += time.perf_counter() - w
                spent[stage][1] += time.process_time() - c
    return {f"{stage}_{kind}_us": round(v[i] / events * 1e6, 2)
            for stage, v in spent.items() for i, kind in enumerate(("wall", "cpu"))}


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["micro"]:      # python -m bench.online micro [REDIS_URL [EVENTS [BATCH]]]
        import redis

        args = sys.argv[2:]
        try:
            print(micro(args[0] if args else None, *(int(a) for a in args[1:3])))
        except ValueError as exc:
            sys.exit(f"usage: python -m bench.online micro [REDIS_URL [EVENTS [BATCH]]]: {exc}")
        except redis.exceptions.ConnectionError as exc:
            sys.exit(f"bench.online micro: Redis at {args[0]} does not answer ({exc}); start one, e.g. "
                     "redis-server --port 6399 --save '' --daemonize yes")
    else:
        print(state_rss())
