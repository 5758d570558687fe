"""The C byte kernels (schemas/codec/native.c) against their numpy fallbacks, and the codec on both."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import fastavro
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.codec import native as _native
from schemas.columnar import BatchEncoder
from schemas.registry import SchemaRegistry
from tests.unit._schemas_helpers import random_wire_batch

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture
def restore_native() -> Iterator[None]:
    yield
    _native.set_enabled(True)


def both(fn: Any) -> tuple[Any, Any]:
    """``fn()`` with the C kernels, then with the numpy fallbacks."""
    _native.set_enabled(True)
    try:
        fast = fn()
    finally:
        _native.set_enabled(False)
    try:
        slow = fn()
    finally:
        _native.set_enabled(True)
    return fast, slow


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")
def test_kernels_build_and_load_where_a_compiler_exists(restore_native: None) -> None:
    _native.set_enabled(True)
    assert _native.lib() is not None       # the fast path is really in use on this machine (and in CI)
    assert list(_native.cache_dir().glob("ss_native-*.so"))


def test_copy_segments_and_rows_match_numpy(restore_native: None) -> None:
    rng = np.random.default_rng(3)
    src = rng.integers(0, 256, 5000, dtype=np.uint8)
    n = 300
    length = rng.integers(-2, 20, n)          # negative lengths copy nothing
    src_pos = rng.integers(0, 4900, n)
    dst_pos = np.cumsum(np.maximum(length, 0) + 3) - np.maximum(length, 0)
    rows = rng.integers(0, 256, (n, 12), dtype=np.uint8)
    row_pos = np.arange(n) * 15 + 2

    def run() -> tuple[bytes, bytes, bytes, bytes]:
        a = np.zeros(int(dst_pos[-1]) + 40, np.uint8)
        _native.copy_segments(a, dst_pos, src, src_pos, length)
        b = np.zeros_like(a)
        _native.copy_segments(b, dst_pos, src, None, length)
        c = np.zeros(n * 15 + 20, np.uint8)
        _native.copy_rows(c, row_pos, rows)
        d = np.zeros_like(c)
        _native.copy_rows(d, row_pos, np.frombuffer(b"\x00\x01\x02\x03\x04", np.uint8))
        return a.tobytes(), b.tobytes(), c.tobytes(), d.tobytes()

    fast, slow = both(run)
    assert fast == slow
    a, b, c, d = (np.frombuffer(x, np.uint8) for x in fast)
    i = int(np.argmax(length))
    assert a[dst_pos[i]:dst_pos[i] + length[i]].tobytes() == src[src_pos[i]:src_pos[i] + length[i]].tobytes()
    assert c[row_pos[7]:row_pos[7] + 12].tobytes() == rows[7].tobytes()
    assert d[row_pos[9]:row_pos[9] + 5].tobytes() == b"\x00\x01\x02\x03\x04"


def test_kernels_refuse_copies_outside_the_buffers(restore_native: None) -> None:
    _native.set_enabled(True)
    if _native.lib() is None:
        pytest.skip("no C kernels here")
    dst = np.zeros(10, np.uint8)
    src = np.ones(10, np.uint8)
    with pytest.raises(ValueError, match="destination"):
        _native.copy_segments(dst, np.array([8]), src, np.array([0]), np.array([4]))
    with pytest.raises(ValueError, match="source"):
        _native.copy_segments(dst, np.array([0]), src, np.array([8]), np.array([4]))
    with pytest.raises(ValueError, match="source"):
        _native.copy_segments(np.zeros(20, np.uint8), np.array([0, 5]), src, None, np.array([5, 6]))
    with pytest.raises(ValueError, match="destination"):
        _native.copy_rows(dst, np.array([0, 7]), np.ones((2, 4), np.uint8))
    with pytest.raises(ValueError, match="writeable"):
        ro = np.zeros(10, np.uint8)
        ro.flags.writeable = False
        _native.copy_rows(ro, np.array([0]), np.ones((1, 4), np.uint8))
    assert not dst.any()


def test_non_ascii_scan_matches_numpy(restore_native: None) -> None:
    from schemas.codec.program import _non_ascii
    from schemas.codec.vec import PAD, Buffer

    rng = np.random.default_rng(5)
    raw = rng.integers(0, 0x80, 4000, dtype=np.uint8)
    data = np.zeros(raw.size + PAD, np.uint8)
    data[:raw.size] = raw
    length = rng.integers(-2, 70, 600)          # empty, short (8-byte words) and long strings
    start = rng.integers(0, raw.size - 70, 600)
    for i in range(0, 600, 3):                  # a high byte at every offset of every third segment
        if length[i] > 0:
            data[start[i] + i % length[i]] = 0x80 + i % 0x80
    buf = Buffer(data)
    fast, slow = both(lambda: _non_ascii(buf, start, length))
    want = [bool(k > 0 and (data[s:s + k] >= 0x80).any()) for s, k in zip(start, length)]
    assert fast.tolist() == slow.tolist() == want
    assert 100 < sum(want) < 550                 # both kinds present (segments overlap)
    _native.set_enabled(True)
    if _native.lib() is not None:
        with pytest.raises(ValueError, match="outside"):
            _native.non_ascii(raw, np.array([3990]), np.array([20]))


@SETTINGS
@given(st.data())
def test_random_schemas_encode_identically_with_and_without_kernels(data: st.DataObject) -> None:
    schema, sid, _, values, batch, _ = random_wire_batch(data)

    def run() -> list[bytes]:
        return BatchEncoder(schema, sid).encode(batch.columns, len(batch), nulls=batch.nulls)

    fast, slow = both(run)
    assert fast == slow == values


def test_encode_buffer_marked_points_at_the_field() -> None:
    reg = SchemaRegistry.default()
    enc = BatchEncoder(reg.schema("transaction"), reg.id_for("transaction"))
    from models.demo_data import generate

    cols = generate(50, seed=5)
    cols["event_time"] = np.arange(50, dtype=np.int64) * 1000 + 1_800_000_000_000
    buf, starts, lengths, marks = enc.encode_buffer_marked(cols, 50, "event_time")
    plain, _, _ = enc.encode_buffer(cols, 50)
    assert buf.tobytes() == plain.tobytes()
    assert np.all((marks > starts) & (marks < starts + lengths))
    for i in (0, 17, 49):   # a zig-zag varint of the row's event_time starts at each mark
        z = (int(cols["event_time"][i]) << 1)
        raw = bytearray()
        while z >= 0x80:
            raw.append((z & 0x7F) | 0x80)
            z >>= 7
        raw.append(z)
        assert buf[marks[i]:marks[i] + len(raw)].tobytes() == bytes(raw)


def test_generator_stamps_send_time_in_place() -> None:
    from models.demo_data import generate
    from streamscore.produce import _StampedBlock, _transaction_encoder

    cols = generate(300, seed=2)
    block = _StampedBlock(cols)
    t = 1_800_000_123_456
    buf, starts, lengths, keys = block.stamp(100, 50, t)
    part = {k: v[100:150] for k, v in cols.items()}
    part["event_time"] = np.full(50, t, np.int64)
    expect = _transaction_encoder().encode(part, 50)
    got = [buf[s:s + k].tobytes() for s, k in zip(starts.tolist(), lengths.tolist())]
    assert got == expect                                # byte for byte what encoding at send time gives
    reg = SchemaRegistry.default()
    p = fastavro.parse_schema(reg.schema("transaction"))
    import io

    rec = fastavro.schemaless_reader(io.BytesIO(got[3][5:]), p)
    assert int(rec["event_time"].timestamp() * 1000) == t and rec["event_id"] == cols["event_id"][103]
    assert keys.to_list()[3] == cols["account_id"][103]
