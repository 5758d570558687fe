"""The key index (its C kernel and its numpy path) against a dict: same codes in order of first sight, across
batches, with hash collisions forced (numpy), and after keys are dropped and renumbered; and ``group``."""

from __future__ import annotations

import numpy as np
import pytest

from models import key_index
from models.features import string_groups
from models.key_index import MAX_BYTES, KeyIndex, KeyTexts
from schemas.columns import StrColumn


@pytest.fixture(autouse=True, params=[True, False], ids=["kernel", "numpy"])
def native(request: pytest.FixtureRequest) -> object:
    key_index.set_enabled(True)
    if request.param and key_index.lib() is None:
        pytest.skip("no C compiler: the kernel is not built")
    key_index.set_enabled(request.param)
    yield request.param
    key_index.set_enabled(True)


class _Dict:
    """The reference: a dict numbering keys on."""

    def __init__(self) -> None:
        self.codes: dict[bytes, int] = {}

    def get(self, texts: list[bytes]) -> list[int]:
        return [self.codes.setdefault(t, len(self.codes)) for t in texts]

    def keep(self, live: list[int]) -> None:
        inv = {c: t for t, c in self.codes.items()}
        self.codes = {inv[c]: i for i, c in enumerate(live)}


def _texts(rng: np.random.Generator, n: int, pool: int) -> list[bytes]:
    keys = [b"k%d" % k if k % 5 else b"\xff\x00" * (k % 7) + b"%d" % k for k in range(pool)]
    keys[3::50] = [b"x" * (MAX_BYTES - 2 + k % 5) + b"%d" % k for k in range(3, pool, 50)]   # long ones too
    return list(dict.fromkeys(keys[i] for i in rng.integers(0, pool, n).tolist()))


@pytest.mark.parametrize(("buckets", "batch", "pool"), [(0, 200, 500), (1, 200, 500), (3, 200, 500),
                                                      (0, 3000, 40_000), (7000, 3000, 40_000)])
def test_codes_equal_a_dict_across_batches_and_renumbering(buckets: int, batch: int, pool: int) -> None:
    """``buckets``: 0 the real hash, else every key's hash modulo it (collisions forced); the larger pool
    outgrows the index's latest level, so it is merged more than once."""
    rng = np.random.default_rng(buckets)
    index, ref = KeyIndex(), _Dict()
    for round_ in range(30):
        texts = _texts(rng, batch, pool)
        keys = KeyTexts(texts)
        if buckets:
            keys.hash = keys.hash % np.uint64(buckets)
        which = np.flatnonzero(rng.random(len(texts)) < 0.7)
        got = index.codes(keys, which)
        assert got.tolist() == ref.get([texts[i] for i in which.tolist()])
        assert [index.text(c) for c in got.tolist()] == [texts[i] for i in which.tolist()]
        if round_ % 7 == 6:
            live = np.flatnonzero(rng.random(len(index)) < 0.5)
            index.keep(live)
            ref.keep(live.tolist())
            assert len(index) == len(ref.codes)


def test_keys_differing_only_in_trailing_zero_bytes_or_width_are_apart() -> None:
    texts = [b"", b"\x00", b"\x00\x00", b"a", b"a\x00", b"ab", b"ba", b"a" * 8, b"a" * 8 + b"\x00"]
    index = KeyIndex()
    assert index.codes(KeyTexts(texts)).tolist() == list(range(len(texts)))
    assert len(set(KeyTexts(texts).hash.tolist())) == len(texts)
    assert index.codes(KeyTexts([b"ab", b"a" * 8 + b"\x00", b"b" * 20])).tolist() == [5, 8, 9]   # a wider batch
    assert index.codes(KeyTexts([b"a", b"b" * 20])).tolist() == [3, 9]                          # a narrower one
    assert [index.text(c) for c in range(len(index))] == [*texts, b"b" * 20]


def test_a_key_twice_in_one_call_gets_one_code() -> None:
    index = KeyIndex()
    assert index.codes(KeyTexts([b"a", b"b", b"a", b"x" * 70, b"x" * 70])).tolist() == [0, 1, 0, 2, 2]
    assert index.codes(KeyTexts([b"c", b"c", b"b"])).tolist() == [3, 3, 1]


@pytest.mark.parametrize("long", [False, True])
def test_joined_gives_the_chosen_keys_lengths_and_bytes_end_to_end(long: bool) -> None:
    texts = [b"acct-1", b"", b"a\x00b", b"x" * 17, *([b"y" * (MAX_BYTES + 3)] if long else [])]
    keys = KeyTexts(texts)
    idx = np.array([3, 0, 2, 1, 0, *([4] if long else [])])
    length, data = keys.joined(idx)
    assert length.tolist() == [len(texts[i]) for i in idx.tolist()]
    assert data == b"".join(texts[i] for i in idx.tolist())


def test_keys_from_a_padded_array_equal_keys_from_their_texts() -> None:
    fixed = np.array([b"acct-1", b"", b"a\x00b", b"x" * 17, b"zz"], dtype="S17")
    texts = fixed.tolist()
    a, b = KeyTexts.padded(texts, fixed), KeyTexts(texts)
    assert a.length.tolist() == b.length.tolist() == [len(t) for t in texts]
    assert a.hash.tolist() == b.hash.tolist()
    index = KeyIndex()
    assert index.codes(a).tolist() == index.codes(b).tolist() == [0, 1, 2, 3, 4]
    assert a.joined(np.array([4, 2]))[1] == b"zza\x00b"
    with pytest.raises(ValueError, match="padded"):
        KeyTexts.padded(texts[:2], fixed)


def test_group_numbers_values_in_order_of_first_sight_and_nulls_minus_one() -> None:
    items = [b"b", None, b"a", b"b", b"", b"a\x00", b"ab", None, b"", b"x" * 40]
    codes, values = string_groups(StrColumn.from_bytes(items), len(items))
    assert codes.tolist() == [0, -1, 1, 0, 2, 1, 3, -1, 2, 4]         # b"a\x00" reads as b"a", as numpy's S does
    assert values.tolist() == [b"b", b"a", b"", b"ab", b"x" * 40]


def test_group_of_many_keys_equals_a_dict() -> None:
    rng = np.random.default_rng(5)
    items = [b"acct-%d" % k for k in rng.integers(0, 3000, 20_000).tolist()]
    codes, values = string_groups(StrColumn.from_bytes(items), len(items))
    ref = _Dict()
    assert codes.tolist() == ref.get(items)
    assert values.tolist() == list(ref.codes)
