"""Enqueue a whole batch of messages with one librdkafka call.

confluent-kafka's ``Producer.produce`` costs ~1.5 us of Python per message: at 150k
events/s that is a fifth of the one core the GIL gives us. librdkafka itself has
``rd_kafka_produce_batch``, which takes an array of ``rd_kafka_message_t``; confluent-kafka
does not expose it, so we call it with ctypes on the same client handle. The array is
built with numpy from the encoder's contiguous output buffer (a pointer and a length
per message), so no Python runs per message.

What this relies on, checked once in ``BatchProducer.attach`` (anything unexpected and
it returns None, and the sink keeps the per-message path):

* the librdkafka that confluent-kafka's extension module loads (we resolve symbols
  through that module, so it is the same copy and the same client);
* the client handle is the first field after the object header of confluent-kafka's
  ``Handle`` struct (true of every 1.x and 2.x release); we confirm it by asking the
  handle for its type and name;
* messages enqueued this way carry no per-message state, so confluent-kafka's delivery
  callback skips them (it returns early for messages without state).

``rd_kafka_produce_batch`` cannot carry headers; callers with headers use the
per-message path. Once the local queue is full, every later message of the call fails
with ``_QUEUE_FULL`` too (librdkafka propagates it), so a retry of the tail keeps the
order of messages within each partition.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MSG_F_COPY = 0x2
MSG_F_PARTITION = 0x8
ERR_QUEUE_FULL = -184

# rd_kafka_message_t on 64-bit platforms
MESSAGE_DTYPE = np.dtype({
    "names": ["err", "rkt", "partition", "payload", "len", "key", "key_len", "offset", "private"],
    "formats": [np.int32, np.uintp, np.int32, np.uintp, np.uintp, np.uintp, np.uintp, np.int64, np.uintp],
    "offsets": [0, 8, 16, 24, 32, 40, 48, 56, 64],
    "itemsize": 72,
})

_lib: Any = None


def _library() -> Any:
    """librdkafka's entry points, through confluent-kafka's own extension module (same copy)."""
    global _lib
    if _lib is None:
        import confluent_kafka.cimpl as cimpl

        lib = ctypes.CDLL(cimpl.__file__)
        vp = ctypes.c_void_p
        lib.rd_kafka_type.argtypes = [vp]
        lib.rd_kafka_type.restype = ctypes.c_int
        lib.rd_kafka_name.argtypes = [vp]
        lib.rd_kafka_name.restype = ctypes.c_char_p
        lib.rd_kafka_topic_new.argtypes = [vp, ctypes.c_char_p, vp]
        lib.rd_kafka_topic_new.restype = vp
        lib.rd_kafka_topic_destroy.argtypes = [vp]
        lib.rd_kafka_topic_destroy.restype = None
        lib.rd_kafka_produce_batch.argtypes = [vp, ctypes.c_int32, ctypes.c_int, vp, ctypes.c_int]
        lib.rd_kafka_produce_batch.restype = ctypes.c_int
        lib.rd_kafka_conf.argtypes = [vp]
        lib.rd_kafka_conf.restype = vp
        lib.rd_kafka_conf_get.argtypes = [vp, ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_size_t)]
        lib.rd_kafka_conf_get.restype = ctypes.c_int
        lib.rd_kafka_err2str.argtypes = [ctypes.c_int]
        lib.rd_kafka_err2str.restype = ctypes.c_char_p
        _lib = lib
    return _lib


def _conf_value(lib: Any, rk: int, name: str) -> str:
    """A setting of the client, as librdkafka holds it ("" when unset)."""
    size = ctypes.c_size_t(512)
    buf = ctypes.create_string_buffer(size.value)
    if lib.rd_kafka_conf_get(lib.rd_kafka_conf(rk), name.encode(), buf, ctypes.byref(size)) != 0:
        return ""
    return buf.value.decode()


class BatchProducer:
    """``rd_kafka_produce_batch`` on the client handle of a ``confluent_kafka.Producer``."""

    def __init__(self, producer: Any, rk: int, lib: Any) -> None:
        self.producer = producer      # keeps the handle alive as long as we use it
        self._rk = rk
        self._lib = lib
        self._known: set[str] = set()
        self.transactional = bool(_conf_value(lib, rk, "transactional.id"))

    def _ensure_metadata(self, topic: str) -> None:
        """Fetch the topic's metadata once before its first batch (transactional producers).

        While a topic's partitions are unknown, produce_batch parks messages on the
        "unassigned" partition; a transactional producer then tries to add partition -1 to
        the transaction and the broker fails the transaction (UNKNOWN_TOPIC_OR_PART).
        ``produce()`` does not have that problem, so only this path asks first.
        """
        md = self.producer.list_topics(topic, timeout=30)
        t = md.topics.get(topic)
        if t is None or t.error is not None or not t.partitions:
            raise RuntimeError(f"no metadata for topic {topic!r}: {None if t is None else t.error}")
        self._known.add(topic)

    @classmethod
    def attach(cls, producer: Any) -> "BatchProducer | None":
        """A batch producer on ``producer``'s handle, or None where that cannot be done safely."""
        try:
            from confluent_kafka import Producer

            if type(producer) is not Producer or sys.implementation.name != "cpython" \
                    or hasattr(sys, "gettotalrefcount") or ctypes.sizeof(ctypes.c_void_p) != 8:
                return None
            lib = _library()
            header = object.__basicsize__          # PyObject_HEAD: refcount + type
            rk = ctypes.c_void_p.from_address(id(producer) + header).value
            if not rk or lib.rd_kafka_type(rk) != 0:          # RD_KAFKA_PRODUCER
                return None
            name = lib.rd_kafka_name(rk) or b""
            if b"#producer-" not in name:
                return None
            return cls(producer, rk, lib)
        except Exception as exc:  # noqa: BLE001 - an optimisation: fall back quietly, but say why
            log.info("batch produce unavailable (%s); producing message by message", exc)
            return None

    def produce(self, topic: str, payload: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
                partitions: np.ndarray, *, keys: np.ndarray | None = None, key_starts: np.ndarray | None = None,
                key_lengths: np.ndarray | None = None, poll: Any = None) -> None:
        """Enqueue ``len(starts)`` messages: value i is ``payload[starts[i]:starts[i]+lengths[i]]``.

        ``payload`` / ``keys`` are contiguous uint8 arrays; a key length below 0 is a null
        key. Every message goes to its partition in ``partitions``. A full local queue is
        waited out with ``poll`` (which serves delivery reports); any other error raises
        ``RuntimeError`` naming it.
        """
        n = len(starts)
        if n == 0:
            return
        payload = np.ascontiguousarray(payload, dtype=np.uint8)
        msgs = np.zeros(n, MESSAGE_DTYPE)
        msgs["payload"] = payload.ctypes.data + starts.astype(np.uint64)
        msgs["len"] = lengths
        msgs["partition"] = partitions
        if keys is not None and key_starts is not None and key_lengths is not None:
            keys = np.ascontiguousarray(keys, dtype=np.uint8)
            has_key = key_lengths >= 0
            msgs["key"] = np.where(has_key, keys.ctypes.data + key_starts.astype(np.uint64), 0)
            msgs["key_len"] = np.where(has_key, key_lengths, 0)
        if self.transactional and topic not in self._known:
            self._ensure_metadata(topic)
        lib = self._lib
        rkt = lib.rd_kafka_topic_new(self._rk, topic.encode(), None)
        if not rkt:
            raise RuntimeError(f"cannot open topic {topic!r} on the producer")
        try:
            done = 0
            while done < n:
                view = msgs[done:]
                view["err"] = 0
                good = lib.rd_kafka_produce_batch(rkt, -1, MSG_F_COPY | MSG_F_PARTITION, view.ctypes.data, len(view))
                if good == len(view):
                    return
                errs = view["err"]
                bad = np.flatnonzero(errs != 0)
                first = int(bad[0])
                if np.any(errs[bad] != ERR_QUEUE_FULL):
                    code = int(errs[bad[errs[bad] != ERR_QUEUE_FULL][0]])
                    raise RuntimeError(f"{(lib.rd_kafka_err2str(code) or b'').decode()} (error {code})")
                # queue full from `first` on (librdkafka fails the whole tail): serve acks, retry the tail
                done += first
                if poll is not None:
                    poll(0.005)
        finally:
            lib.rd_kafka_topic_destroy(rkt)
