"""Key-hash routing of a micro-batch's rows to model arms: single, canary, A/B, plus shadows.

The route of a row depends only on its key bytes and the spec's salt, never on the
process, the batch or Python's salted ``hash()``: the same key goes to the same arm
in every process, after every restart, on every machine (little-endian reads are
explicit). Rows with a null key hash as the empty key.

Key hash (``key_hash``, 64-bit, vectorised over a ragged byte buffer)::

    h = fmix64(seed ^ len),  seed = crc32(salt utf-8) ^ 0x9E3779B97F4A7C15
    for each 8-byte little-endian word w of the key (the last one zero-filled):
        h = fmix64(h ^ w) + 0x9E3779B97F4A7C15
    h = fmix64(h)

``fmix64`` is MurmurHash3's finaliser. A row's point ``u = (h >> 11) / 2**53`` in
[0, 1) picks the arm whose cumulative-weight interval contains it, so growing a
canary's fraction only moves keys from primary to canary, never back.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

import numpy as np

from schemas.columns import StrColumn
from schemas.errors import ConfigError

Mode = Literal["single", "canary", "ab"]
ArmVariant = Literal["primary", "canary"]
MODES: tuple[str, ...] = ("single", "canary", "ab")
ARM_VARIANTS: tuple[str, ...] = ("primary", "canary")
Keys = Union[Sequence[Union[bytes, None]], StrColumn]

_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_S33 = np.uint64(33)
_S11 = np.uint64(11)


@dataclass(frozen=True)
class Arm:
    """One model version that owns a share of the keys. ``version=None`` follows the production stage."""

    name: str
    version: str | None = None
    weight: float = 1.0
    variant: ArmVariant = "primary"


@dataclass(frozen=True)
class ShadowArm:
    """A model that scores every row of every batch; its outputs go to the shadow topic."""

    name: str
    version: str | None = None


@dataclass(frozen=True)
class RouteSpec:
    """How one pipeline's rows are split. Validated on construction (``ConfigError`` names the key).

    - ``single``: one arm takes every row.
    - ``canary``: two arms, variants ``primary`` and ``canary``; ``canary.weight`` is its key fraction.
    - ``ab``: N >= 2 arms, sticky split by key hash in proportion to ``weight``.
    """

    mode: Mode
    arms: tuple[Arm, ...]
    shadow: tuple[ShadowArm, ...] = ()
    salt: str = ""

    def __post_init__(self) -> None:
        _check(self.mode in MODES, "mode", f"unknown routing mode {self.mode!r}; valid: {list(MODES)}")
        _check(len(self.arms) >= 1, "arms", "a route needs at least one arm")
        for i, arm in enumerate(self.arms):
            where = f"arms[{i}]"
            _check(isinstance(arm, Arm), where, f"{where} must be an Arm, got {type(arm).__name__}")
            _check(bool(arm.name), f"{where}.name", f"{where}.name must be a non-empty model name")
            _check(arm.variant in ARM_VARIANTS, f"{where}.variant",
                   f"{where}.variant {arm.variant!r} is not valid; valid: {list(ARM_VARIANTS)}")
            w = arm.weight
            _check(isinstance(w, (int, float)) and np.isfinite(w) and w > 0, f"{where}.weight",
                   f"{where}.weight must be a finite number > 0, got {w!r}")
        n = len(self.arms)
        if self.mode == "single":
            _check(n == 1, "arms", f"mode 'single' takes exactly 1 arm, got {n}")
        elif self.mode == "canary":
            _check(n == 2, "arms", f"mode 'canary' takes exactly 2 arms (primary, canary), got {n}")
            variants = sorted(a.variant for a in self.arms)
            _check(variants == ["canary", "primary"], "arms",
                   f"mode 'canary' needs one arm with variant 'primary' and one with 'canary', got {variants}")
            frac = self.fractions[[a.variant for a in self.arms].index("canary")]
            _check(frac < 1.0, "arms", f"the canary fraction must be < 1, got {frac}")
        else:
            _check(n >= 2, "arms", f"mode 'ab' takes at least 2 arms, got {n}")
        seen: set[tuple[str, str | None]] = set()
        for i, arm in enumerate(self.arms):
            ident = (arm.name, arm.version)
            _check(ident not in seen, f"arms[{i}]", f"arms[{i}] repeats model {arm.name}:{arm.version}")
            seen.add(ident)
        for i, sh in enumerate(self.shadow):
            _check(isinstance(sh, ShadowArm) and bool(sh.name), f"shadow[{i}]",
                   f"shadow[{i}] must be a ShadowArm with a model name, got {sh!r}")

    @property
    def fractions(self) -> tuple[float, ...]:
        """Each arm's share of the key space (weights normalised; canary weight = fraction)."""
        if self.mode == "canary":
            canary = next(a for a in self.arms if a.variant == "canary")
            f = float(canary.weight)
            return tuple(f if a.variant == "canary" else 1.0 - f for a in self.arms)
        total = float(sum(a.weight for a in self.arms))
        return tuple(float(a.weight) / total for a in self.arms)

    # --- constructors -------------------------------------------------------------------

    @classmethod
    def single(cls, name: str, version: str | None = None, *, shadow: Sequence[ShadowArm] = ()) -> RouteSpec:
        return cls("single", (Arm(name, version),), tuple(shadow))

    @classmethod
    def canary(cls, primary: Arm, canary: Arm, fraction: float, *, salt: str = "",
               shadow: Sequence[ShadowArm] = ()) -> RouteSpec:
        """``fraction`` of the key space goes to ``canary`` (weight fields of the given arms are ignored)."""
        _check(isinstance(fraction, (int, float)) and 0.0 < fraction < 1.0, "fraction",
               f"fraction must be in (0, 1), got {fraction!r}")
        return cls("canary", (Arm(primary.name, primary.version, 1.0 - fraction, "primary"),
                              Arm(canary.name, canary.version, float(fraction), "canary")),
                   tuple(shadow), salt)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RouteSpec:
        """Build from the pipeline file's ``route:`` section, e.g.::

            {"mode": "canary", "fraction": 0.1, "salt": "exp-7",
             "arms": [{"name": "fraud-mlp", "version": "3"},
                      {"name": "fraud-mlp", "version": "4", "variant": "canary"}],
             "shadow": [{"name": "fraud-mlp-torch"}]}

        ``fraction`` (canary only) overrides the arms' weights. Unknown keys are errors.
        """
        _check(isinstance(data, Mapping), "route", f"route must be a mapping, got {type(data).__name__}")
        _known("route", data, ("mode", "arms", "shadow", "salt", "fraction"))
        mode = data.get("mode", "single")
        arms_raw = data.get("arms")
        _check(isinstance(arms_raw, Sequence) and not isinstance(arms_raw, (str, bytes)), "arms",
               f"route.arms must be a list of arms, got {arms_raw!r}")
        arms = tuple(_arm_from(i, a) for i, a in enumerate(arms_raw or ()))
        shadow_raw = data.get("shadow") or ()
        _check(isinstance(shadow_raw, Sequence) and not isinstance(shadow_raw, (str, bytes)), "shadow",
               f"route.shadow must be a list, got {shadow_raw!r}")
        shadow = tuple(_shadow_from(i, s) for i, s in enumerate(shadow_raw))
        salt = data.get("salt", "")
        _check(isinstance(salt, str), "salt", f"route.salt must be a string, got {salt!r}")
        if "fraction" in data:
            _check(mode == "canary", "fraction", f"route.fraction applies to mode 'canary' only, not {mode!r}")
            by_variant = {a.variant: a for a in arms}
            _check(len(arms) == 2 and set(by_variant) == {"primary", "canary"}, "arms",
                   "mode 'canary' needs one arm with variant 'primary' and one with 'canary'")
            return cls.canary(by_variant["primary"], by_variant["canary"], data["fraction"],
                              salt=salt, shadow=shadow)
        return cls(mode, arms, shadow, salt)


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"route.{key}: {message}")


def _known(where: str, data: Mapping[str, Any], valid: tuple[str, ...]) -> None:
    bad = sorted(str(k) for k in data if k not in valid)
    if bad:
        raise ConfigError(f"{where}: unknown key(s) {bad}; valid keys: {list(valid)}")


def _arm_from(i: int, raw: Any) -> Arm:
    _check(isinstance(raw, Mapping), f"arms[{i}]", f"arms[{i}] must be a mapping, got {raw!r}")
    _known(f"route.arms[{i}]", raw, ("name", "version", "weight", "variant"))
    _check("name" in raw, f"arms[{i}].name", f"arms[{i}] is missing 'name'")
    version = raw.get("version")
    return Arm(str(raw["name"]), None if version is None else str(version),
               raw.get("weight", 1.0), raw.get("variant", "primary"))


def _shadow_from(i: int, raw: Any) -> ShadowArm:
    _check(isinstance(raw, Mapping), f"shadow[{i}]", f"shadow[{i}] must be a mapping, got {raw!r}")
    _known(f"route.shadow[{i}]", raw, ("name", "version"))
    _check("name" in raw, f"shadow[{i}].name", f"shadow[{i}] is missing 'name'")
    version = raw.get("version")
    return ShadowArm(str(raw["name"]), None if version is None else str(version))


# --- hashing ----------------------------------------------------------------------------

def _fmix64(h: np.ndarray) -> np.ndarray:
    h ^= h >> _S33
    h *= _M1
    h ^= h >> _S33
    h *= _M2
    h ^= h >> _S33
    return h


def _ragged(keys: Keys) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(uint8 buffer, start, length>=0) for either key representation."""
    if isinstance(keys, StrColumn):
        return (np.asarray(keys.buf, dtype=np.uint8).reshape(-1), np.asarray(keys.start, dtype=np.int64),
                np.maximum(np.asarray(keys.length, dtype=np.int64), 0))
    items: list[Any] = list(keys)
    try:
        lengths = np.fromiter(map(len, items), np.int64, len(items))
        data = b"".join(items)
    except TypeError:  # None (or str) keys among them
        items = [b"" if k is None else (k.encode() if isinstance(k, str) else bytes(k)) for k in items]
        lengths = np.fromiter(map(len, items), np.int64, len(items))
        data = b"".join(items)
    start = np.zeros(len(items), dtype=np.int64)
    if len(items) > 1:
        np.cumsum(lengths[:-1], out=start[1:])
    return np.frombuffer(data, dtype=np.uint8), start, lengths


def key_hash(keys: Keys, salt: str = "") -> np.ndarray:
    """Stable 64-bit hash of every key (uint64 array), vectorised 8 bytes at a time."""
    buf, start, length = _ragged(keys)
    n = len(length)
    seed = np.uint64(zlib.crc32(salt.encode("utf-8"))) ^ _GOLDEN
    with np.errstate(over="ignore"):
        h = _fmix64(seed ^ length.astype(np.uint64))
        if n == 0:
            return h
        max_len = int(length.max())
        if max_len:
            padded = np.zeros(len(buf) + 8, dtype=np.uint8)
            padded[: len(buf)] = buf
            # Every byte offset viewed as an unaligned little-endian uint64.
            words = np.ndarray(shape=(len(buf) + 1,), dtype="<u8", buffer=padded, offset=0, strides=(1,))
            rows = np.arange(n)
            for off in range(0, max_len, 8):
                live = rows[length > off]
                rem = length[live] - off
                w = words[start[live] + off].astype(np.uint64)
                short = rem < 8
                if short.any():
                    bits = (rem[short] * 8).astype(np.uint64)
                    w[short] &= (np.uint64(1) << bits) - np.uint64(1)
                h[live] = _fmix64(h[live] ^ w) + _GOLDEN
        return _fmix64(h)


def unit_interval(hashes: np.ndarray) -> np.ndarray:
    """Map uint64 hashes to float64 points in [0, 1) using their top 53 bits."""
    return (hashes >> _S11).astype(np.float64) * (1.0 / (1 << 53))


# --- routing ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ArmRows:
    """The rows (ascending indices into the batch) one arm scores."""

    index: int
    arm: Arm
    rows: np.ndarray


class Router:
    """Assign each row of a batch to an arm of ``spec``. Thread-safe (no mutable state)."""

    def __init__(self, spec: RouteSpec) -> None:
        self.spec = spec
        self._edges = np.cumsum(np.asarray(spec.fractions, dtype=np.float64))[:-1]

    @property
    def arms(self) -> tuple[Arm, ...]:
        return self.spec.arms

    @property
    def shadows(self) -> tuple[ShadowArm, ...]:
        """Models that score every row of every batch, besides the arms."""
        return self.spec.shadow

    def assign(self, keys: Keys) -> np.ndarray:
        """Arm index (int64) per row, in row order."""
        n = len(keys)
        if len(self.spec.arms) == 1:
            return np.zeros(n, dtype=np.int64)
        u = unit_interval(key_hash(keys, self.spec.salt))
        return np.searchsorted(self._edges, u, side="right").astype(np.int64)

    def split(self, keys: Keys) -> list[ArmRows]:
        """Row indices per arm (every arm listed, possibly with no rows); rows ascend within an arm."""
        return [ArmRows(i, arm, rows) for i, (arm, rows) in
                enumerate(zip(self.spec.arms, split_rows(self.assign(keys), len(self.spec.arms))))]


def merge_rows(n: int, parts: Sequence[tuple[np.ndarray, np.ndarray]], dtype: Any = np.float32) -> np.ndarray:
    """Scatter per-arm outputs ``(rows, values)`` back into one batch-ordered array of ``n`` rows."""
    out = np.zeros(n, dtype=dtype)
    for rows, values in parts:
        out[rows] = values
    return out


def row_labels(assignment: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """Per-row label (e.g. ``[a.variant for a in spec.arms]`` or versions) as an object array."""
    return np.asarray(list(labels), dtype=object)[np.asarray(assignment, dtype=np.int64)]


def split_rows(assignment: np.ndarray, n_arms: int) -> list[np.ndarray]:
    """Group row indices by arm index: ``out[a]`` = ascending rows with ``assignment == a``."""
    assignment = np.asarray(assignment, dtype=np.int64)
    if n_arms == 1:
        return [np.arange(len(assignment), dtype=np.int64)]
    order = np.argsort(assignment, kind="stable")
    counts = np.bincount(assignment, minlength=n_arms)
    return list(np.split(order, np.cumsum(counts)[:-1]))


__all__ = ["Arm", "ArmRows", "Keys", "RouteSpec", "Router", "ShadowArm", "key_hash", "merge_rows", "row_labels",
           "split_rows", "unit_interval"]

