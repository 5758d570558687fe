"""A competent hand-written batched loop: consume 1000, decode each to a dict, one model call,
produce each, flush, commit."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, Producer

from bench.peers.common import args, decode_tx, encode_prediction, features, model_session


def main() -> None:
    a = args()
    sess, names = model_session()
    inp = sess.get_inputs()[0].name
    consumer = Consumer({"bootstrap.servers": a.bootstrap, "group.id": a.group, "auto.offset.reset": "earliest",
                         "enable.auto.commit": False})
    producer = Producer({"bootstrap.servers": a.bootstrap, "acks": "all", "linger.ms": 5,
                         "enable.idempotence": True})
    consumer.subscribe([a.input])
    done = 0
    deadline = time.monotonic() + a.seconds
    while done < a.count and time.monotonic() < deadline:
        msgs = [m for m in consumer.consume(1000, 0.1) if m.error() is None]
        if not msgs:
            continue
        recs = [decode_tx(m.value()) for m in msgs]
        scores = sess.run(None, {inp: features(recs, names)})[0].reshape(-1)
        for m, rec, s in zip(msgs, recs, scores):
            producer.produce(a.output, encode_prediction(rec, float(s), rec["account_id"]), key=m.key())
        producer.flush(60)
        consumer.commit(asynchronous=False)
        done += len(msgs)
    consumer.close()


if __name__ == "__main__":
    main()
