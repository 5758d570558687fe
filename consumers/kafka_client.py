"""The thin layer over confluent-kafka: client settings and construction, nothing else.

Every non-default librdkafka setting we use is here with the reason for it; a pipeline
file's ``kafka.consumer`` / ``kafka.producer`` maps are merged over these.
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from schemas.errors import ConfigError

log = logging.getLogger(__name__)

ClientConf = dict[str, Any]     # librdkafka settings: values are str, int, bool or callbacks

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
    # Once the prefetch queue is over its thresholds, librdkafka waits this long before the
    # next fetch (default 1000 ms). We drain 2,000-row batches in ~10 ms, so the default
    # emptied the queue and stalled the scorer ~0.3 s of every second: 115k -> 179k events/s.
    "fetch.queue.backoff.ms": 10,
}
# librdkafka statistics (consumer lag, fetch and reply queues per partition) every this many ms,
# while metrics are served; a pipeline file's kafka.consumer setting wins.
STATS_INTERVAL_MS = 5000

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
    return _client(Consumer, {**conf, "logger": log}, "consumer")


def make_producer(conf: dict[str, Any]) -> Producer:
    return _client(Producer, {**conf, "logger": log}, "producer")


def make_admin(conf: dict[str, Any]) -> AdminClient:
    return _client(AdminClient, conf, "admin client")


_C = TypeVar("_C", Consumer, Producer, AdminClient)


def _client(cls: type[_C], conf: dict[str, Any], what: str) -> _C:
    """librdkafka refuses bad settings (an unknown property, a missing CA file) when a client is
    made; that is a configuration error, reported in one line naming the problem."""
    try:
        return cls(conf)
    except KafkaException as exc:
        err = exc.args[0] if exc.args else exc
        raise ConfigError(f"Kafka {what} settings refused: {err.str() if hasattr(err, 'str') else err}") from exc


def ensure_topics(admin_conf: dict[str, Any], topics: dict[str, int], *, timeout: float = 30.0,
                  configs: dict[str, dict[str, str]] | None = None) -> dict[str, int]:
    """Create missing topics with the given partition counts (the broker's default replication)
    and topic ``configs`` (e.g. ``{"cleanup.policy": "compact"}``).

    Returns every requested topic's partition count: an existing topic keeps its own. The one
    place topics are created; a topic that cannot be raises ``ConfigError`` naming it.
    """
    admin = make_admin(admin_conf)
    md = admin.list_topics(timeout=timeout).topics
    counts = {t: len(md[t].partitions) for t in topics if t in md and md[t].error is None and md[t].partitions}
    new = [NewTopic(t, num_partitions=n, replication_factor=-1, config=(configs or {}).get(t, {}))
           for t, n in topics.items() if t not in counts]
    if not new:
        return counts
    for topic, fut in admin.create_topics(new, operation_timeout=timeout).items():
        try:
            fut.result()
            counts[topic] = topics[topic]
        except Exception as exc:  # noqa: BLE001 - already exists (a racing creator) is fine
            if "already_exists" not in str(exc).lower().replace(" ", "_"):
                raise ConfigError(f"cannot create topic {topic!r}: {exc}") from exc
            counts[topic] = partition_count(admin, topic, timeout) or topics[topic]
    return counts


def partition_count(client: Consumer | Producer | AdminClient, topic: str, timeout: float = 10.0) -> int:
    md = client.list_topics(topic, timeout=timeout)
    tmd = md.topics.get(topic)
    if tmd is None or tmd.error is not None or not tmd.partitions:
        return 0
    return len(tmd.partitions)


def topic_max_message_bytes(admin: AdminClient, topic: str, *, timeout: float = 10.0) -> int | None:
    """The topic's ``max.message.bytes`` (what the broker accepts in one record batch), or None if unknown."""
    from confluent_kafka.admin import ConfigResource

    try:
        futures = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)],
                                         request_timeout=timeout)
        for fut in futures.values():
            entry = fut.result(timeout=timeout).get("max.message.bytes")
            if entry is not None and entry.value is not None:
                return int(entry.value)
    except Exception as exc:  # noqa: BLE001 - the producer's own limit still applies
        log.warning("cannot read max.message.bytes of %s: %s", topic, exc)
    return None


def connection_error(conf: dict[str, Any], *, timeout: float = 15.0) -> str | None:
    """None when the cluster answers with these settings, else one line saying why not.

    Bounded: a refused login (SASL) or an untrusted certificate ends the wait at once;
    anything else is retried until ``timeout``. The message never contains a secret.
    """
    import time

    from confluent_kafka import KafkaError, KafkaException

    seen: list[KafkaError] = []
    quiet = logging.getLogger(f"{__name__}.probe")
    quiet.propagate = False          # the one line returned replaces librdkafka's retry chatter
    if not quiet.handlers:
        quiet.addHandler(logging.NullHandler())
    admin = make_admin({**conf, "error_cb": seen.append, "logger": quiet})
    where = conf.get("bootstrap.servers")
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            admin.list_topics(timeout=min(2.0, max(0.1, deadline - time.monotonic())))
            return None
        except KafkaException as exc:
            last = str(exc.args[0].str())
        admin.poll(0)                # serves error_cb
        for err in seen:
            if err.code() == KafkaError._AUTHENTICATION:
                who = conf.get("sasl.username")
                mech = conf.get("sasl.mechanism", conf.get("security.protocol", "PLAINTEXT"))
                return (f"Kafka authentication failed at {where} ({mech}{f' as {who!r}' if who else ''}): "
                        f"{err.str()}; check kafka.sasl_username / kafka.sasl_password "
                        f"(or KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD / STREAMSCORE_SECRETS_FILE)")
            if err.code() == KafkaError._SSL:
                return f"TLS handshake with Kafka at {where} failed: {err.str()}; check kafka.ssl_ca_location"
    return f"Kafka at {where} did not answer within {timeout:.0f}s: {last}"
