"""The I/O ceiling: consume and produce the raw bytes, no decode, no model.

A ceiling has to be as fast as the plain Python client gets, so it has the same fetch
tuning as streamscore (fetch.queue.backoff.ms; see consumers/kafka_client.py)."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, Producer

from bench.peers.common import args


def main() -> None:
    a = args()
    consumer = Consumer({"bootstrap.servers": a.bootstrap, "group.id": a.group, "auto.offset.reset": "earliest",
                         "fetch.wait.max.ms": 10, "fetch.queue.backoff.ms": 10})
    producer = Producer({"bootstrap.servers": a.bootstrap, "acks": "all", "linger.ms": 2, "enable.idempotence": True,
                         "batch.num.messages": 10000, "batch.size": 1048576, "compression.type": "lz4"})
    consumer.subscribe([a.input])
    done = 0
    deadline = time.monotonic() + a.seconds
    produce = producer.produce
    while done < a.count and time.monotonic() < deadline:
        msgs = consumer.consume(2000, a.wait_ms / 1000)
        for m in msgs:
            if m.error() is None:
                while True:
                    try:
                        produce(a.output, m.value(), m.key(), m.partition())
                        break
                    except BufferError:
                        producer.poll(0.005)
        producer.poll(0)
        done += len(msgs)
    producer.flush(60)
    consumer.close()


if __name__ == "__main__":
    main()
