"""The tutorial loop: poll one message, score it, produce one prediction."""

from __future__ import annotations

import time

import numpy as np
from confluent_kafka import Consumer, Producer

from bench.peers.common import args, decode_tx, encode_prediction, model_session


def main() -> None:
    a = args()
    sess, names = model_session()
    inp = sess.get_inputs()[0].name
    consumer = Consumer({"bootstrap.servers": a.bootstrap, "group.id": a.group, "auto.offset.reset": "earliest"})
    producer = Producer({"bootstrap.servers": a.bootstrap, "acks": "all"})
    consumer.subscribe([a.input])
    done = 0
    deadline = time.monotonic() + a.seconds
    while done < a.count and time.monotonic() < deadline:
        msg = consumer.poll(1.0)
        if msg is None or msg.error():
            continue
        rec = decode_tx(msg.value())
        x = np.array([[rec[n] for n in names]], dtype=np.float32)
        score = float(sess.run(None, {inp: x})[0].reshape(-1)[0])
        producer.produce(a.output, encode_prediction(rec, score, rec["account_id"]), key=msg.key())
        producer.poll(0)
        done += 1
    producer.flush(60)
    consumer.close()


if __name__ == "__main__":
    main()
