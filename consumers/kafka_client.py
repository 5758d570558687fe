"""The thin layer over confluent-kafka: client settings and construction, nothing else.

Every non-default librdkafka setting we use is here with the reason for it; a pipeline
file's ``kafka.consumer`` / ``kafka.producer`` maps are merged over these.
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

log = logging.getLogger(__name__)

CONSUMER_DEFAULTS: dict[str, Any] = {
    # At-least-once: an offset is stored only after every output of its batch is acked;
    # the background committer then commits stored offsets on its interval.
    "enable.auto.offset.store": False,
    "enable.auto.commit": True,
    "auto.offset.reset": "earliest",
    # Incremental rebalances: partitions that stay assigned keep flowing during a rebalance.
    "partition.assignment.strategy": "cooperative-sticky",
    # A SIGKILLed member's partitions move after ~10 s instead of the 45 s default.
    "session.timeout.ms": 10000,
    "heartbeat.interval.ms": 2000,
    # Low latency at low load, big fetches at high load.
    "fetch.wait.max.ms": 5,
    "fetch.min.bytes": 1,
    "queued.max.messages.kbytes": 65536,
    "statistics.interval.ms": 0,
}

PRODUCER_DEFAULTS: dict[str, Any] = {
    # No duplicates or reordering from retries; implies acks=all.
    "enable.idempotence": True,
    "acks": "all",
    # Batching: wait up to 1 ms to fill large batches, compress them cheaply.
    "linger.ms": 1,
    "batch.num.messages": 10000,
    "batch.size": 1048576,
    "compression.type": "lz4",
    # Never fail a message on time alone: with idempotence and an unbounded timeout a
    # partition's messages succeed or fail in order, so one ack per partition and batch
    # (the last message) proves the whole batch in that partition (see sinks.kafka_sink).
    "message.timeout.ms": 0,
    "queue.buffering.max.messages": 1000000,
    "queue.buffering.max.kbytes": 262144,
}


def merged(defaults: dict[str, Any], base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    conf = dict(defaults)
    conf.update(base)
    conf.update(overrides)
    return conf


def make_consumer(conf: dict[str, Any]) -> Consumer:
    return Consumer(conf, logger=log)


def make_producer(conf: dict[str, Any]) -> Producer:
    return Producer(conf, logger=log)


def ensure_topics(admin_conf: dict[str, Any], topics: dict[str, int], *, timeout: float = 30.0) -> None:
    """Create missing topics with the given partition counts (replication 1 on a dev broker)."""
    admin = AdminClient(admin_conf)
    existing = set(admin.list_topics(timeout=timeout).topics)
    new = [NewTopic(t, num_partitions=n, replication_factor=-1) for t, n in topics.items() if t not in existing]
    if not new:
        return
    for topic, fut in admin.create_topics(new, operation_timeout=timeout).items():
        try:
            fut.result()
        except Exception as exc:  # already exists (raced) is fine
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise


def partition_count(client: Consumer | Producer | AdminClient, topic: str, timeout: float = 10.0) -> int:
    md = client.list_topics(topic, timeout=timeout)
    tmd = md.topics.get(topic)
    if tmd is None or tmd.error is not None or not tmd.partitions:
        return 0
    return len(tmd.partitions)
