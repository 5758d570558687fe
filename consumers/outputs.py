"""Encoding and producing a batch's outputs: predictions per arm, shadow predictions,
embeddings and telemetry. Every output shares the batch's acknowledgement, so the
batch's offsets commit only when all of them are delivered (or in the same transaction).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Callable, Protocol

import numpy as np

from consumers import mapping
from consumers.runtime import ActiveModel
from consumers.work import Work, message_times_ms
from schemas.columns import StrColumn, take
from sinks.kafka_sink import BatchAck, Headers, bounded_dead_letter, error_headers


class OutputSink(Protocol):
    """Where encoded outputs go (``sinks.kafka_sink.KafkaSink``; warm-up passes one that discards)."""

    def produce_encoded(self, topic: str, encoded: tuple[np.ndarray, np.ndarray, np.ndarray], keys: StrColumn | None,
                        ack: BatchAck, *, partitions: np.ndarray | None = None,
                        headers: Headers | None = None) -> None: ...
    def produce_one(self, topic: str, value: bytes | None, key: bytes | None, ack: BatchAck,
                    *, headers: Headers | None = None, partition: int = -1) -> None: ...
    def produce_batch(self, topic: str, values: Sequence[bytes | None], keys: Sequence[bytes | None], ack: BatchAck,
                      *, partitions: np.ndarray | None = None, headers: Headers | None = None) -> None: ...


class OutputMetrics(Protocol):
    """What the output stage reports (``monitoring.metrics.ScorerMetrics``)."""

    def e2e_latency(self, pipeline: str, seconds: np.ndarray) -> None: ...
    def dead_letters(self, pipeline: str, reason: str, n: int) -> None: ...


class OutputWriter:
    """The scorer's last stage: encodes a scored batch and hands every output to the sink.

    Owns no client: it writes through ``sink`` (the one producer) under the batch's
    ``BatchAck``, so predictions, shadow predictions, embeddings, telemetry and dead letters
    are all covered by one acknowledgement (or one transaction). It never waits for delivery,
    commits offsets, or decides which records are dead (the decode and model stages do);
    ``record_latency`` receives a sample of end-to-end latencies (ms) for the caller's live view.
    """

    def __init__(self, *, sink: OutputSink, metrics: OutputMetrics,
                 record_latency: Callable[[list[float]], None]) -> None:
        self.sink = sink
        self.metrics = metrics
        self._record_latency = record_latency

    def emit(self, work: Work, ack: BatchAck) -> None:
        """Produce the batch's predictions / embeddings, shadow predictions and telemetry under ``ack``."""
        rt = work.rt
        if rt.kind == "embed":
            self._produce_embeddings(work, ack)
            return
        assert work.scores is not None and work.ok_rows is not None
        now_ms = int(time.time() * 1000)
        n_all = len(work.keys)
        for active, rows in work.groups:
            if len(rows):
                fields = work.fields if len(rows) == n_all else {k: v[rows] for k, v in work.fields.items()}
                self._produce_scores(work, ack, rt.output_topic, active, active.variant, rows, fields, now_ms)
        for active, _, fields in work.shadow_out:
            if rt.shadow_topic:
                self._produce_scores(work, ack, rt.shadow_topic, active, "shadow", work.ok_rows, fields, now_ms)
        if rt.telemetry_topic:
            self._telemetry(work, ack, work.shadow_out[0][:2] if work.shadow_out else None)

    def emit_changelog(self, work: Work, ack: BatchAck) -> None:
        """The batch's aggregate changelog records, under ``ack`` (so in its transaction under exactly-once)."""
        log = work.changelog
        if log is None:
            return
        if len(log.partitions):
            self.sink.produce_encoded(log.topic, log.values, log.keys, ack, partitions=log.partitions)
        if log.tombstones:            # after the records: an entry written and evicted in one batch ends deleted
            self.sink.produce_batch(log.topic, [None] * len(log.tombstones), log.tombstones, ack,
                                    partitions=log.tombstone_partitions)

    def emit_dead(self, work: Work, ack: BatchAck) -> None:
        """Dead-letter the batch's bad records under ``ack``: the original value with headers
        naming the error and its source, or a bounded prefix when the value cannot be forwarded
        whole (see sinks.kafka_sink.bounded_dead_letter)."""
        rt = work.rt
        now_ms = int(time.time() * 1000)
        reasons: dict[str, int] = {}
        for idx, reason, message in work.dead:
            m = work.msgs[idx]
            hdrs = error_headers(error=reason, message=message, topic=m.topic(), partition=m.partition(),
                                 offset=m.offset(), pipeline=rt.name, when_ms=now_ms)
            value, key, hdrs = bounded_dead_letter(m.value(), m.key(), hdrs, rt.dlq_max_bytes)
            self.sink.produce_one(rt.dlq_topic, value, key, ack, headers=hdrs)
            reasons[reason] = reasons.get(reason, 0) + 1
        for reason, k in reasons.items():
            self.metrics.dead_letters(rt.name, reason, k)

    def _produce_scores(self, work: Work, ack: BatchAck, topic: str, active: ActiveModel, variant: str,
                        rows: np.ndarray, fields: dict[str, np.ndarray], now_ms: int) -> None:
        rt = work.rt
        n = len(rows)
        kafka_keys = work.keys.take(rows) if n != len(work.keys) else work.keys   # length -1: a null Kafka key
        event_time = mapping.event_times_ms(work, rows)
        if event_time is None:
            event_time = np.full(n, now_ms, dtype=np.int64)
        carried, nulls = mapping.carried(work, rows)
        out = {
            **carried,
            "event_id": mapping.event_ids(work, rows),
            "key": _non_null(kafka_keys),
            "model": _const_str(active.model.name, n),
            "version": _const_str(str(active.model.version), n),
            "variant": np.full(n, rt.encoder.enum_code("variant", variant), dtype=np.int64),
            **fields,                                      # the model's heads (score + decision, ...)
            "event_time": event_time,
            "scored_at": np.full(n, now_ms, dtype=np.int64),
        }
        encoded = rt.encoder.encode_buffer(out, n, nulls=nulls)
        parts = None
        if rt.partitioning == "input" and rt.out_partitions > 0 and work.in_parts is not None:
            parts = work.in_parts[rows] % rt.out_partitions
        headers = _headers(rt.output_headers, active, variant)
        self.sink.produce_encoded(topic, encoded, kafka_keys, ack, partitions=parts, headers=headers)
        if variant == "shadow":
            return
        self.metrics.e2e_latency(rt.name, (now_ms - event_time) / 1000.0)
        lat = now_ms - event_time[-min(n, 64):]
        self._record_latency(lat.tolist())

    def _produce_embeddings(self, work: Work, ack: BatchAck) -> None:
        from models.text import embedding_column

        rt, active = work.rt, work.rt.slot.active
        assert work.embeddings is not None and active is not None
        n = len(work.embeddings)
        cols = work.decoded.columns
        now_ms = int(time.time() * 1000)
        kafka_keys = work.keys
        out = {
            "event_id": cols["event_id"],
            "key": cols["key"] if "key" in cols else _non_null(kafka_keys),
            "model": _const_str(active.model.name, n),
            "version": _const_str(str(active.model.version), n),
            "variant": np.full(n, rt.encoder.enum_code("variant", "primary"), dtype=np.int64),
            "embedding": embedding_column(work.embeddings),
            "label": np.array(work.labels if work.labels is not None else [None] * n, dtype=object),
            # TextEvent has no event time: the record's Kafka timestamp stands in for it
            "event_time": message_times_ms(work.msgs, work.decoded.ok_index),
            "scored_at": np.full(n, now_ms, dtype=np.int64),
        }
        encoded = rt.encoder.encode_buffer(out, n)
        parts = None
        if rt.partitioning == "input" and rt.out_partitions > 0 and work.in_parts is not None:
            parts = work.in_parts % rt.out_partitions
        headers = _headers(rt.output_headers, active, "primary")
        self.sink.produce_encoded(rt.output_topic, encoded, kafka_keys, ack, partitions=parts, headers=headers)

    def _telemetry(self, work: Work, ack: BatchAck, shadow: tuple[ActiveModel, np.ndarray] | None) -> None:
        """Per-batch summaries for the side stream; part of the batch, so covered by its ack/transaction."""
        rt = work.rt
        assert work.scores is not None and work.ok_rows is not None
        cols = work.decoded.columns
        for active, rows in work.groups:
            builder = active.telemetry
            if builder is None or len(rows) == 0:
                continue
            sub = cols if len(rows) == len(work.keys) else {k: take(v, rows) for k, v in cols.items()}
            kw: dict[str, Any] = {}
            if shadow is not None:
                # each arm's record compares the shadow with that arm, on the rows that arm scored
                # (the shadow's scores are aligned with ok_rows, of which every arm's rows are a subset)
                kw = {"shadow_scores": shadow[1][np.searchsorted(work.ok_rows, rows)],
                      "shadow_model": shadow[0].model.name, "shadow_version": str(shadow[0].model.version)}
            first_tp = min(work.ranges)
            times = sub.get(rt.time_field) if rt.time_field else None
            summary = builder.summarize(sub, work.scores[rows], variant=active.variant,
                                        event_time_ms=mapping.event_times_ms(work, rows),
                                        symbols=work.decoded.symbols,
                                        batch_id=f"{first_tp[0]}:{first_tp[1]}:{work.ranges[first_tp][0]}:{active.variant}",
                                        **kw)
            self.sink.produce_one(rt.telemetry_topic, builder.encode(summary), builder.key(), ack)  # type: ignore[arg-type]


def _non_null(col: StrColumn) -> StrColumn:
    """The same strings with null rows as empty ones (a record's ``key`` field is not nullable)."""
    return StrColumn(buf=col.buf, start=col.start, length=np.maximum(col.length, 0))


def _headers(enabled: bool, active: ActiveModel, variant: str) -> list[tuple[str, bytes]] | None:
    """Kafka headers naming model, version and variant (``output.headers: true``); the record has them too."""
    if not enabled:
        return None
    return [("model", active.model.name.encode()), ("version", str(active.model.version).encode()),
            ("variant", variant.encode())]


def _const_str(s: str, n: int) -> Any:
    raw = s.encode()
    return StrColumn(buf=np.frombuffer(raw, dtype=np.uint8), start=np.zeros(n, dtype=np.int64),
                     length=np.full(n, len(raw), dtype=np.int64))
