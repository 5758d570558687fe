from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.columnar import BatchDecoder
from schemas.registry import SchemaRegistry
from tests.unit._schemas_helpers import encode, fastavro_read, norm, parsed, record_schemas, records_for


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_mutated_values_never_raise_and_spare_their_batch_mates(data: st.DataObject) -> None:
    schema = data.draw(record_schemas())
    records = data.draw(records_for(schema, min_size=2, max_size=8))
    reg = SchemaRegistry()
    sid = reg.register(schema)
    p = parsed(reg.by_id(sid))
    values = [encode(p, r, sid) for r in records]
    victim = data.draw(st.integers(0, len(values) - 1))
    raw = bytearray(values[victim])
    how = data.draw(st.sampled_from(["flip", "cut", "append", "random"]))
    if how == "flip":
        i = data.draw(st.integers(5, max(5, len(raw) - 1)))
        raw.extend(b"\x00" * (i + 1 - len(raw)))
        raw[i] ^= data.draw(st.integers(1, 255))
    elif how == "cut":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif how == "append":
        raw += data.draw(st.binary(min_size=1, max_size=4))
    else:
        raw = bytearray(raw[:5]) + bytearray(data.draw(st.binary(max_size=40)))
    values[victim] = bytes(raw)
    expected = norm([fastavro_read(p, v) for i, v in enumerate(values) if i != victim])
    for engine in ("numpy", "fastavro"):
        batch = BatchDecoder(schema, reg, engine=engine).decode(values)  # type: ignore[arg-type]
        failed = [i for i, _ in batch.errors]
        assert sorted(failed + batch.ok_index.tolist()) == list(range(len(values)))
        assert set(failed) <= {victim}
        got = norm(batch.to_records())
        if failed:
            assert got == expected
        else:  # the mutation happened to leave a valid record: batch-mates still intact
            assert [g for i, g in zip(batch.ok_index.tolist(), got) if i != victim] == expected
