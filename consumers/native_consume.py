"""Drain a consumer's fetched records into arrays, without a Python ``Message`` per record.

``Consumer.consume(n, t)`` makes one ``Message`` object (and a bytes object per value and
key) for every record; the scorer then reads them back one accessor call at a time.
``NativeDrain.consume`` calls the same ``rd_kafka_consume_batch_queue`` on the same client's
consumer queue, with the same calls around it (``native_consume.c``), and copies the records
straight into one value buffer and one key buffer plus numpy arrays (``RawBatch``).

What this relies on, checked once in ``NativeDrain.attach`` (anything unexpected and it
returns None, and the scorer keeps ``Consumer.consume``):

* the librdkafka and confluent-kafka entry points are resolved through confluent-kafka's
  own extension module (the same copies the client uses), ``CallState_begin`` /
  ``CallState_end`` among them: confluent-kafka's rebalance, commit, error, stats and log
  callbacks run inside librdkafka's call and find the calling thread's state there;
* the client handle is the first field after the object header of confluent-kafka's
  ``Handle`` (as in ``sinks/batch_produce.py``), confirmed by asking it for its type and name;
* confluent-kafka 2.x (``CallState`` at most 64 bytes, its functions as in 2.x), 64-bit CPython;
* the C helper compiles, and one empty call through it returns cleanly.

Timeouts are served in slices of at most 200 ms (as ``Consumer.consume`` does) so signals
are seen between them. Input headers are not read (the scorer never reads them).
"""

from __future__ import annotations

import ctypes
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from consumers.raw_batch import RawBatch

log = logging.getLogger(__name__)

_SRC = Path(__file__).with_name("native_consume.c")
CHUNK_MS = 200
CALLSTATE_BYTES = 64
RD_KAFKA_CONSUMER = 1


class _Fns(ctypes.Structure):
    _fields_ = [(name, ctypes.c_void_p) for name in ("begin", "end", "consume", "destroy", "timestamp", "last_error")]


def helper_path() -> Path | None:
    """The compiled helper (built into the native cache on first use, or by ``make native``)."""
    from schemas.codec.native import build

    return build(_SRC, "ss_consume")


def _load() -> tuple[Any, Any, _Fns]:
    """(librdkafka through confluent-kafka's module, the compiled helper, its entry points)."""
    import confluent_kafka.cimpl as cimpl

    so_path = helper_path()
    if so_path is None:
        raise RuntimeError("the C helper did not build")
    helper = ctypes.PyDLL(str(so_path))       # PyDLL: called with the GIL held, Python errors raised
    vp, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    helper.ss_take.argtypes = [vp, vp, vp, i32, i64, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp]
    helper.ss_take.restype = i64
    helper.ss_copy.argtypes = [vp, vp, i64, vp, vp]
    helper.ss_copy.restype = None
    lib = ctypes.CDLL(cimpl.__file__)
    lib.rd_kafka_type.argtypes = [vp]
    lib.rd_kafka_type.restype = ctypes.c_int
    lib.rd_kafka_name.argtypes = [vp]
    lib.rd_kafka_name.restype = ctypes.c_char_p
    lib.rd_kafka_queue_get_consumer.argtypes = [vp]
    lib.rd_kafka_queue_get_consumer.restype = vp
    lib.rd_kafka_queue_destroy.argtypes = [vp]
    lib.rd_kafka_queue_destroy.restype = None
    lib.rd_kafka_topic_name.argtypes = [vp]
    lib.rd_kafka_topic_name.restype = ctypes.c_char_p
    lib.rd_kafka_err2str.argtypes = [ctypes.c_int]
    lib.rd_kafka_err2str.restype = ctypes.c_char_p
    addr = ctypes.cast
    fns = _Fns(*(addr(getattr(lib, f), vp).value for f in (
        "CallState_begin", "CallState_end", "rd_kafka_consume_batch_queue", "rd_kafka_message_destroy",
        "rd_kafka_message_timestamp", "rd_kafka_last_error")))
    return lib, helper, fns


class NativeDrain:
    """``consume(n, timeout)`` of a ``confluent_kafka.Consumer``, returned as a ``RawBatch``."""

    def __init__(self, consumer: Any, rk: int, rkqu: int, lib: Any, helper: Any, fns: _Fns) -> None:
        self.consumer = consumer        # keeps the handle alive while the queue reference is held
        self._rk, self._q = rk, rkqu
        self._lib, self._helper, self._fns = lib, helper, fns
        self._cs = np.zeros(CALLSTATE_BYTES, np.uint8)
        self._scratch = _Scratch(1)
        self._totals = (ctypes.c_int64(0), ctypes.c_int64(0), ctypes.c_int(0))
        self._empty = RawBatch((), np.empty(0, np.int32), np.empty(0, np.int32), np.empty(0, np.int64),
                               np.empty(0, np.int64), np.empty(0, np.int32), np.empty(0, np.int32), b"",
                               np.empty(0, np.int64), np.empty(0, np.int64), b"", np.empty(0, np.int64),
                               np.empty(0, np.int64))

    @classmethod
    def attach(cls, consumer: Any) -> NativeDrain | None:
        """A drain on ``consumer``'s own queue, or None where that cannot be done safely (logged)."""
        try:
            import confluent_kafka
            from confluent_kafka import Consumer

            if type(consumer) is not Consumer or sys.implementation.name != "cpython" \
                    or hasattr(sys, "gettotalrefcount") or ctypes.sizeof(ctypes.c_void_p) != 8:
                return cls._refuse("not a plain confluent_kafka.Consumer on 64-bit CPython")
            ver = confluent_kafka.version()
            ver = ver[0] if isinstance(ver, tuple) else str(ver)
            if not ver.startswith("2."):
                return cls._refuse(f"confluent-kafka {ver} is not 2.x")
            lib, helper, fns = _load()
            rk = ctypes.c_void_p.from_address(id(consumer) + object.__basicsize__).value
            if not rk or lib.rd_kafka_type(rk) != RD_KAFKA_CONSUMER or b"#consumer-" not in (lib.rd_kafka_name(rk) or b""):
                return cls._refuse("the client handle is not where confluent-kafka 2.x keeps it")
            rkqu = lib.rd_kafka_queue_get_consumer(rk)
            if not rkqu:
                return cls._refuse("the consumer has no group queue")
            drain = cls(consumer, rk, rkqu, lib, helper, fns)
            try:
                if len(drain._take(0, 0)) != 0:
                    raise RuntimeError("an empty call returned records")
            except BaseException:
                drain.close()
                raise
            log.info("native consume: draining %s with rd_kafka_consume_batch_queue into arrays",
                     (lib.rd_kafka_name(rk) or b"").decode())
            return drain
        except Exception as exc:  # noqa: BLE001 - an optimisation: fall back, but say why
            return cls._refuse(str(exc))

    @staticmethod
    def _refuse(why: str) -> None:
        # a warning: the drain is asked for explicitly (kafka.native_consume)
        log.warning("native consume unavailable (%s); consuming through Consumer.consume", why)
        return None

    def close(self) -> None:
        """Release the queue reference (before the consumer is closed: librdkafka waits for it)."""
        if self._q:
            self._lib.rd_kafka_queue_destroy(self._q)
            self._q = 0

    def consume(self, num_messages: int, timeout: float) -> RawBatch:
        """Up to ``num_messages`` records (and error events, ``err`` != 0), waiting up to ``timeout`` s
        for the first, served in slices of at most 200 ms as ``Consumer.consume`` serves them."""
        total_ms = int(timeout * 1000) if timeout >= 0 else -1
        if 0 <= total_ms < CHUNK_MS:
            return self._take(num_messages, total_ms)
        end = None if total_ms < 0 else time.monotonic() + total_ms / 1000.0
        while True:
            left = CHUNK_MS if end is None else min(CHUNK_MS, int((end - time.monotonic()) * 1000))
            if left <= 0:
                return self._take(0, 0)
            batch = self._take(num_messages, left)
            if len(batch):
                return batch

    def _take(self, n: int, timeout_ms: int) -> RawBatch:
        """One ``ss_take`` into the scratch arrays; the rows are copied out of them (the next call
        overwrites them), and a call that got nothing returns the one empty batch."""
        if not self._q:
            raise RuntimeError("native consume: the drain is closed")
        if self._scratch.size < max(n, 1):
            self._scratch = _Scratch(n)
        s = self._scratch
        vtotal, ktotal, code = self._totals
        self._cs[:] = 0
        got = self._helper.ss_take(ctypes.byref(self._fns), id(self.consumer), self._q, timeout_ms, n,
                                   _addr(self._cs), *s.addrs, ctypes.byref(vtotal), ctypes.byref(ktotal),
                                   ctypes.byref(code))
        if got == -2:
            from confluent_kafka import KafkaError, KafkaException

            raise KafkaException(KafkaError(code.value, (self._lib.rd_kafka_err2str(code.value) or b"").decode()))
        if got < 0:
            raise RuntimeError("native consume: interrupted without a Python error")   # ctypes raises the real one
        m = int(got)
        if m == 0:
            return self._empty
        values = np.empty(vtotal.value, np.uint8)
        keys = np.empty(ktotal.value, np.uint8)
        try:
            topics, topic_idx = self._topic_index(s.rkt[:m])     # while the messages hold their topics
        finally:
            self._helper.ss_copy(ctypes.byref(self._fns), s.addrs[0], got, _addr(values), _addr(keys))
        vlen, klen = s.vlen[:m].copy(), s.klen[:m].copy()
        vsize, ksize = np.maximum(vlen, 0), np.maximum(klen, 0)
        return RawBatch(topics, topic_idx, s.part[:m].copy(), s.off[:m].copy(), s.ts[:m].copy(),
                        s.tstype[:m].copy(), s.err[:m].copy(), values.tobytes(), np.cumsum(vsize) - vsize, vlen,
                        keys.tobytes(), np.cumsum(ksize) - ksize, klen)

    def _topic_index(self, rkt: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
        """Topic names by librdkafka topic handle (an errored event may have none: "")."""
        if rkt[0] == rkt[-1] and bool((rkt == rkt[0]).all()):       # the common case: one topic
            return ((self._lib.rd_kafka_topic_name(int(rkt[0])) or b"").decode() if rkt[0] else "",), \
                np.zeros(rkt.shape[0], np.int32)
        uniq, idx = np.unique(rkt, return_inverse=True)
        names = [(self._lib.rd_kafka_topic_name(h) or b"").decode() if h else "" for h in uniq.tolist()]
        topics = tuple(dict.fromkeys(names))          # one index per name, whatever the handles
        remap = np.array([topics.index(t) for t in names], np.int32)
        return topics, remap[idx.reshape(-1)]

    def error_text(self, batch: RawBatch, i: int) -> str:
        """What confluent-kafka's ``Message.error()`` says for error event ``i`` (its payload, else the code's text)."""
        v = batch.value(i)
        if v:
            return v.split(b"\0", 1)[0].decode("utf-8", "replace")
        return (self._lib.rd_kafka_err2str(int(batch.err[i])) or b"").decode()


def _addr(a: np.ndarray) -> int:
    return int(a.ctypes.data)


class _Scratch:
    """The arrays ``ss_take`` fills for up to ``size`` messages, kept between calls, and their addresses in
    ``ss_take``'s argument order. Allocating and addressing them on every call cost ~25 us, and the
    source loop makes several calls a batch, most of them empty."""

    def __init__(self, size: int) -> None:
        self.size = max(size, 1)
        n = self.size
        self.ptrs, self.rkt = np.empty(n, np.uintp), np.empty(n, np.uintp)
        self.vlen, self.klen, self.off, self.ts = (np.empty(n, np.int64) for _ in range(4))
        self.part, self.tstype, self.err = (np.empty(n, np.int32) for _ in range(3))
        self.addrs = tuple(_addr(a) for a in (self.ptrs, self.vlen, self.klen, self.part, self.off, self.ts,
                                              self.tstype, self.err, self.rkt))
