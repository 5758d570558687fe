"""Predictions as Parquet: per-chunk parts, joined into one file at the end."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from schemas.errors import DeliveryError
from sinks.kafka_sink import BatchAck


class ParquetParts:
    """Prediction records (as ``OutputWriter`` encodes them) collected per chunk into Parquet parts."""

    def __init__(self, encoder_schema: dict[str, Any], directory: Path) -> None:
        from schemas.columnar import BatchDecoder

        self.decoder = BatchDecoder(encoder_schema, _Written(encoder_schema))
        self.directory = directory
        self._pending: list[bytes] = []

    # the KafkaSink surface OutputWriter uses for predictions
    def produce_encoded(self, topic: str, encoded: tuple[np.ndarray, np.ndarray, np.ndarray], keys: Any,
                        ack: BatchAck, *, partitions: np.ndarray | None = None, headers: Any = None) -> None:
        buf, starts, lengths = encoded
        data = buf.tobytes()
        self._pending.extend(data[a:a + k] for a, k in zip(starts.tolist(), lengths.tolist()))

    def produce_one(self, topic: str, value: bytes | None, key: bytes | None, ack: BatchAck, **_: Any) -> None:
        raise DeliveryError(f"a Parquet backfill writes no per-message outputs (got one for {topic})")

    def write_part(self, index: int) -> tuple[str, int] | None:
        """Write the pending rows as part ``index`` (atomically); returns (file name, rows), None if no rows."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        values, self._pending = self._pending, []
        if not values:
            return None
        decoded = self.decoder.decode(values)
        if decoded.errors:
            raise DeliveryError(f"prediction records failed to decode for Parquet: {decoded.errors[0][1]}")
        table = pa.table({name: _arrow(col, name, decoded.symbols) for name, col in decoded.columns.items()})
        name = f"part-{index:05d}.parquet"
        tmp = self.directory / f".{name}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, self.directory / name)
        return name, table.num_rows


class _Written:
    """The records read back were written by the encoder with this schema, whatever their id."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema

    def by_id(self, schema_id: int) -> dict[str, Any]:
        return self.schema

    def find(self, schema: dict[str, Any]) -> int | None:
        return None


def _arrow(col: Any, name: str, symbols: dict[str, tuple[str, ...]]) -> Any:
    """One decoded column as an Arrow array (strings from their bytes, no Python objects per row)."""
    import pyarrow as pa

    from schemas.columns import StrColumn

    if name in symbols:
        return pa.array(np.asarray(symbols[name], dtype=object)[np.asarray(col)], pa.string())
    if isinstance(col, StrColumn):
        c = col.compact()
        lengths = np.maximum(c.length, 0)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        nulls = c.length < 0
        validity = pa.array(~nulls).buffers()[1] if nulls.any() else None
        return pa.StringArray.from_buffers(len(lengths), pa.py_buffer(offsets), pa.py_buffer(c.buf.tobytes()),
                                           validity, null_count=int(nulls.sum()))
    return pa.array(np.asarray(col))


def concat_parts(directory: Path, parts: list[str], out: Path) -> int:
    """The parts, in order, as one Parquet file at ``out`` (written, then renamed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = out.with_name(f".{out.name}.tmp")
    rows = 0
    writer = None
    try:
        for name in parts:
            f = pq.ParquetFile(directory / name)
            if writer is None:
                writer = pq.ParquetWriter(tmp, f.schema_arrow)
            for i in range(f.num_row_groups):
                t = f.read_row_group(i)
                writer.write_table(t)
                rows += t.num_rows
        if writer is None:     # an empty range: an empty file with the prediction columns
            from schemas.registry import SchemaRegistry

            fields = SchemaRegistry.default().schema("prediction")["fields"]
            pq.write_table(pa.table({f["name"]: pa.array([], pa.null()) for f in fields}), tmp)
    finally:
        if writer is not None:
            writer.close()
    os.replace(tmp, out)
    return rows
