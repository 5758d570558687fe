"""A model's output spec (named heads and their kinds) and the prediction record it implies.

Heads and the fields each one writes (``prefix`` defaults to ""):

    score    one probability per row          -> <prefix>score: double, <prefix>decision: boolean
    classes  a probability vector + labels    -> <prefix>label: string, <prefix>probability: double,
                                                 <prefix>scores: map<double> (the top_k labels)
    value    one number per row (regression)  -> <name>: double

Invariants: the prediction fields are the envelope (event_id, key, model, version, variant),
then every head's fields in head order, then event_time and scored_at (carried input fields
follow them); field names are unique. A single score head yields exactly ``schemas/prediction.avsc``, so the demo
model's records keep their schema id and bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from schemas.errors import ConfigError

HeadKind = Literal["score", "classes", "value"]
HEAD_KINDS: tuple[str, ...] = ("score", "classes", "value")
ENVELOPE_HEAD: tuple[str, ...] = ("event_id", "key", "model", "version", "variant")
ENVELOPE_TAIL: tuple[str, ...] = ("event_time", "scored_at")
_HEAD_KEYS = ("name", "kind", "output", "index", "labels", "top_k", "prefix")


@dataclass(frozen=True)
class Head:
    """One named output of a model.

    ``output`` names the model output it reads (None: the model's first output); ``index``
    picks one column of a ``(n, k)`` output (a binary classifier's positive class is 1).
    """

    name: str
    kind: HeadKind
    output: str | None = None
    index: int | None = None
    labels: tuple[str, ...] = ()
    top_k: int | None = None
    prefix: str = ""

    def fields(self) -> list[str]:
        """The prediction field names this head writes, in record order."""
        if self.kind == "score":
            return [f"{self.prefix}score", f"{self.prefix}decision"]
        if self.kind == "classes":
            return [f"{self.prefix}label", f"{self.prefix}probability", f"{self.prefix}scores"]
        return [self.name]

    def avro_fields(self) -> list[dict[str, Any]]:
        names = self.fields()
        if self.kind == "score":
            types: list[Any] = ["double", "boolean"]
        elif self.kind == "classes":
            types = ["string", "double", {"type": "map", "values": "double"}]
        else:
            types = ["double"]
        return [{"name": n, "type": t} for n, t in zip(names, types)]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.output is not None:
            out["output"] = self.output
        if self.index is not None:
            out["index"] = self.index
        if self.labels:
            out["labels"] = list(self.labels)
        if self.top_k is not None:
            out["top_k"] = self.top_k
        if self.prefix:
            out["prefix"] = self.prefix
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> Head:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: a head must be a mapping, got {data!r}")
        unknown = sorted(set(data) - set(_HEAD_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown} (valid keys here: {', '.join(_HEAD_KEYS)})")
        kind = data.get("kind")
        if kind not in HEAD_KINDS:
            raise ConfigError(f"{where}.kind: {kind!r} is not one of {list(HEAD_KINDS)}")
        name = data.get("name", kind)
        if not isinstance(name, str) or not name.isidentifier():
            raise ConfigError(f"{where}.name: {name!r} must be an identifier (it can become a field name)")
        labels = tuple(str(x) for x in data.get("labels") or ())
        top_k = data.get("top_k")
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise ConfigError(f"{where}.top_k: must be a positive integer, got {top_k!r}")
        index = data.get("index")
        if index is not None and (not isinstance(index, int) or index < 0):
            raise ConfigError(f"{where}.index: must be a non-negative integer, got {index!r}")
        prefix = str(data.get("prefix") or "")
        if prefix and not prefix.isidentifier():
            raise ConfigError(f"{where}.prefix: {prefix!r} must be an identifier")
        if kind == "classes" and not labels:
            raise ConfigError(f"{where}.labels: a classes head needs its class labels")
        output = data.get("output")
        return cls(name=name, kind=cast(HeadKind, kind), output=None if output is None else str(output),
                   index=index, labels=labels, top_k=top_k, prefix=prefix)


@dataclass(frozen=True)
class OutputSpec:
    """The heads of a model; ``fields()`` is the part of the prediction record they decide."""

    heads: tuple[Head, ...] = field(default_factory=lambda: (Head("score", "score"),))

    def __post_init__(self) -> None:
        if not self.heads:
            raise ConfigError("output_spec: at least one head is needed")
        names = [f for h in self.heads for f in h.fields()]
        taken = set(ENVELOPE_HEAD) | set(ENVELOPE_TAIL)
        clash = sorted({n for n in names if names.count(n) > 1 or n in taken})
        if clash:
            raise ConfigError(f"output_spec: heads give duplicate or reserved field name(s) {clash}; "
                              f"set a head's prefix (score/classes) or name (value) to tell them apart")

    def fields(self) -> list[str]:
        return [f for h in self.heads for f in h.fields()]

    @property
    def primary(self) -> Head:
        """The head whose number is the row's ``score`` for telemetry and shadow comparison."""
        return self.heads[0]

    def to_dict(self) -> dict[str, Any]:
        return {"heads": [h.to_dict() for h in self.heads]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> OutputSpec:
        """Read ``{"heads": [...]}``; a spec without heads (``{name, dtype, shape}``, the format
        before heads) is one score head on the model's first output."""
        if not data or "heads" not in data:
            return cls()
        heads = data["heads"]
        if not isinstance(heads, Sequence) or isinstance(heads, (str, bytes)):
            raise ConfigError(f"output_spec.heads: must be a list, got {heads!r}")
        return cls(tuple(Head.from_dict(h, f"output_spec.heads[{i}]") for i, h in enumerate(heads)))


def head_fields(spec: OutputSpec) -> list[dict[str, Any]]:
    """The Avro fields a model's heads write, in head order."""
    return [f for h in spec.heads for f in h.avro_fields()]


def prediction_fields(spec: OutputSpec | None = None) -> list[dict[str, Any]]:
    """The prediction fields for a model's outputs: envelope (event_id, key, model, version,
    variant), the heads' fields, event_time, scored_at. ``None``: one score head, i.e. the
    fields of ``schemas/prediction.avsc``."""
    envelope: list[dict[str, Any]] = [
        {"name": "event_id", "type": "string"},
        {"name": "key", "type": "string"},
        {"name": "model", "type": "string"},
        {"name": "version", "type": "string"},
        {"name": "variant", "type": {"type": "enum", "name": "Variant", "symbols": ["primary", "canary", "shadow"]}},
    ]
    tail: list[dict[str, Any]] = [
        {"name": "event_time", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "scored_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    ]
    return [*envelope, *head_fields(spec or OutputSpec()), *tail]


def prediction_schema(spec: OutputSpec | None = None, *, carried: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The prediction record for ``spec``: its prediction fields, then ``carried`` input fields
    (Avro field dicts; their names must not clash)."""
    fields: list[dict[str, Any]] = [*prediction_fields(spec), *[dict(f) for f in carried]]
    names = [str(f["name"]) for f in fields]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"prediction record: carried field(s) {dup} clash with prediction fields")
    return {"type": "record", "name": "Prediction", "namespace": "streamscore", "fields": fields}
