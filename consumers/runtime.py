"""What one pipeline needs at run time, built by the composition root and passed in.

The seams are Protocols (what the stages call) or, for the codec, its public front
``schemas.columnar``; option strings use the ``Literal`` types of the pipeline file.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

if TYPE_CHECKING:
    from schemas.columnar import BatchDecoder, BatchEncoder
    from schemas.columns import StrColumn

# The option strings of the pipeline file; streamscore.config declares its keys with these.
PipelineKind = Literal["score", "embed"]
Partitioning = Literal["input", "key"]
Variant = Literal["primary", "canary", "shadow"]
Delivery = Literal["at_least_once", "exactly_once"]


class ScoringModel(Protocol):
    name: str
    version: str

    def predict(self, features: np.ndarray) -> np.ndarray: ...
    def close(self) -> None: ...


class FeatureAssembler(Protocol):
    @property
    def names(self) -> tuple[str, ...]: ...

    def assemble(self, columns: Mapping[str, np.ndarray]) -> np.ndarray: ...


class Router(Protocol):
    """Assigns every row of a batch to an arm by its Kafka key (``models.routing.Router``)."""

    def assign(self, keys: Sequence[bytes | None] | StrColumn) -> np.ndarray: ...


class TelemetrySource(Protocol):
    """Per-batch summaries of one model's inputs and scores (``monitoring.telemetry.TelemetryBuilder``)."""

    def summarize(self, columns: Mapping[str, Any], scores: np.ndarray | None, *, variant: str = "primary",
                  event_time_ms: np.ndarray | None = None, shadow_scores: np.ndarray | None = None,
                  shadow_model: str | None = None, shadow_version: str | None = None,
                  symbols: Mapping[str, Sequence[str]] | None = None,
                  batch_id: str | None = None) -> Mapping[str, Any]: ...
    def encode(self, summary: Mapping[str, Any]) -> bytes: ...
    def key(self) -> bytes: ...


class Enricher(Protocol):
    """Adds looked-up feature columns to a decoded batch (``models.lookups.Lookups``).

    ``enrich`` returns only once every row has its values (it waits while the store is down,
    or raises); the result names the rows to dead-letter (row -> message)."""

    def enrich(self, batch: Any) -> dict[int, str]: ...


class KeyedState(Protocol):
    """Per-partition aggregate state with a changelog (``consumers.changelog.AggregateState``).

    ``assign`` restores the partitions' state before any of their records is scored; ``view``
    (at dispatch, source thread) is what a batch applies to; ``apply(view, work)`` (right after, on the
    same thread) adds the aggregate columns to ``work.decoded`` and sets ``work.changelog``."""

    topic: str

    def assign(self, partitions: Sequence[int]) -> None: ...
    def revoke(self, partitions: Sequence[int]) -> None: ...
    def view(self) -> Mapping[int, Any]: ...
    def apply(self, view: Mapping[int, Any], work: Any) -> None: ...


class Runner(Protocol):
    """Scores rows of a decoded batch with one model version (models.runner.ModelRunner).

    ``features(batch)`` returns an object with ``inputs`` and ``bad`` (row -> reason);
    ``score(feats, rows, batch)`` returns an object with ``score`` (one float per row) and
    ``fields`` (prediction field -> one value per row), or raises for the rows given.
    """

    @property
    def names(self) -> tuple[str, ...]: ...

    @property
    def fields(self) -> tuple[str, ...]: ...

    def features(self, batch: Any) -> Any: ...

    def score(self, feats: Any, rows: np.ndarray, batch: Any) -> Any: ...

    def feature_maps(self, feats: Any, rows: np.ndarray) -> np.ndarray: ...


@dataclass
class ActiveModel:
    model: ScoringModel
    assembler: FeatureAssembler      # the plain float32 features (serve-http's coalescer reads them)
    threshold: float
    variant: Variant = "primary"
    telemetry: TelemetrySource | None = None
    runner: Runner = None  # type: ignore[assignment]   # features, hooks, model, heads: the scorer's path


class ModelSlot:
    """The model a pipeline scores with. Swaps happen between batches, never inside one."""

    def __init__(self, active: ActiveModel) -> None:
        self._active = active
        self._lock = threading.Lock()

    @property
    def active(self) -> ActiveModel:
        return self._active

    def swap(self, new: ActiveModel) -> ActiveModel:
        with self._lock:
            old, self._active = self._active, new
            return old


@dataclass
class PipelineRuntime:
    name: str
    input_topic: str
    output_topic: str
    dlq_topic: str
    decoder: BatchDecoder
    encoder: BatchEncoder            # Prediction (kind score) or Embedding (kind embed) records
    slot: ModelSlot
    partitioning: Partitioning = "input"   # "input": output partition = input partition mod N
    output_headers: bool = False     # also stamp model/version/variant as Kafka headers (per-message path)
    out_partitions: int = 0
    max_message_bytes: int = 1_000_000
    dlq_max_bytes: int = 1_000_000  # largest dead letter the producer and the DLQ topic accept
    id_field: str | None = "event_id"        # None: "<topic>:<partition>:<offset>" (consumers.mapping)
    time_field: str | None = "event_time"    # None: the Kafka message timestamp
    time_scale: int = 1                      # time_field units per millisecond (1000: timestamp-micros)
    carry: dict[str, str] = field(default_factory=dict)     # output field -> input column (dotted path)
    kind: PipelineKind = "score"             # "embed": a text embedder, outputs Embedding records
    arms: list[ModelSlot] = field(default_factory=list)     # router arm i scores with arms[i]
    router: Router | None = None                             # None = one arm
    shadows: list[ModelSlot] = field(default_factory=list)   # score every row; output to shadow_topic
    shadow_topic: str | None = None
    telemetry_topic: str | None = None
    lookups: Enricher | None = None                          # online feature lookups (None: none)
    aggregates: KeyedState | None = None                     # per-key streaming aggregates (None: none)
    include_features: bool = False                           # write the model inputs into each prediction
    counters: dict[str, int] = field(default_factory=lambda: {"in": 0, "out": 0, "dead": 0, "shadow_errors": 0})

    def __post_init__(self) -> None:
        if not self.arms:
            self.arms = [self.slot]
