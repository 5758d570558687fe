"""A Faust agent with ``stream.take(1000)``: decode each, one model call per chunk, send each."""

from __future__ import annotations

import logging
import os
import tempfile
import sys

import faust

from bench.peers.common import args, decode_tx, encode_prediction, features, model_session


def main() -> None:
    a = args()
    sess, names = model_session()
    inp = sess.get_inputs()[0].name
    app = faust.App(f"bench-{a.group}", broker=f"kafka://{a.bootstrap}", store="memory://",
                    value_serializer="raw", key_serializer="raw", web_enabled=False,
                    datadir=tempfile.mkdtemp(prefix="bench-faust-"),
                    consumer_auto_offset_reset="earliest", producer_acks=-1, topic_partitions=4)
    src = app.topic(a.input, value_type=bytes, key_type=bytes)
    dst = app.topic(a.output, value_type=bytes, key_type=bytes)
    done = [0]

    @app.agent(src)
    async def score(stream):  # type: ignore[no-untyped-def]
        async for values in stream.take(1000, within=1.0):
            recs = [decode_tx(v) for v in values]
            scores = sess.run(None, {inp: features(recs, names)})[0].reshape(-1)
            for rec, s in zip(recs, scores):
                await dst.send(key=rec["account_id"].encode(), value=encode_prediction(rec, float(s), rec["account_id"]))
            done[0] += len(values)
            if done[0] >= a.count:
                await app.producer.flush()
                os._exit(0)

    logging.getLogger("faust").setLevel(logging.WARNING)
    sys.argv = [sys.argv[0], "worker", "-l", "warn", "--without-web"]
    app.main()


if __name__ == "__main__":
    main()
