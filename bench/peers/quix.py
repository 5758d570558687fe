"""A Quix Streams app: a StreamingDataFrame that scores each record and writes it out."""

from __future__ import annotations

import logging
import tempfile
from typing import Any

import numpy as np
from quixstreams import Application
from quixstreams.models.serializers import Deserializer, SerializationContext

from bench.peers.common import args, decode_tx, encode_prediction, model_session


class WireAvro(Deserializer):
    """Confluent wire format (5-byte header) + Avro body, decoded to a dict with fastavro."""

    def __call__(self, value: bytes, ctx: SerializationContext) -> Any:
        return decode_tx(value)


def main() -> None:
    a = args()
    sess, names = model_session()
    inp = sess.get_inputs()[0].name
    app = Application(broker_address=a.bootstrap, consumer_group=a.group, auto_offset_reset="earliest",
                      loglevel=logging.WARNING, use_changelog_topics=False,
                      state_dir=tempfile.mkdtemp(prefix="bench-quix-"))
    src = app.topic(a.input, value_deserializer=WireAvro(), key_deserializer="bytes")
    dst = app.topic(a.output, value_serializer="bytes", key_serializer="bytes")
    sdf = app.dataframe(src)

    def score(rec: dict[str, Any]) -> bytes:
        x = np.array([[rec[n] for n in names]], dtype=np.float32)
        s = float(sess.run(None, {inp: x})[0].reshape(-1)[0])
        return encode_prediction(rec, s, rec["account_id"])

    sdf = sdf.apply(score)
    sdf.to_topic(dst)
    app.run(count=a.count, timeout=a.seconds)


if __name__ == "__main__":
    main()
