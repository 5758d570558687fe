"""What one pipeline needs at run time, built by the composition root and passed in."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


class ScoringModel(Protocol):
    name: str
    version: str

    def predict(self, features: np.ndarray) -> np.ndarray: ...
    def close(self) -> None: ...


class FeatureAssembler(Protocol):
    names: tuple[str, ...]

    def assemble(self, columns: Any) -> np.ndarray: ...


@dataclass
class ActiveModel:
    model: ScoringModel
    assembler: FeatureAssembler
    threshold: float
    variant: str = "primary"
    telemetry: Any = None            # monitoring.telemetry.TelemetryBuilder for this model, or None


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
    decoder: Any                     # schemas.columnar.BatchDecoder
    encoder: Any                     # schemas.columnar.BatchEncoder (Prediction)
    slot: ModelSlot
    partitioning: str = "input"      # "input": output partition = input partition mod N
    output_headers: bool = False     # also stamp model/version/variant as Kafka headers (per-message path)
    out_partitions: int = 0
    max_message_bytes: int = 1_000_000
    time_field: str | None = "event_time"
    kind: str = "score"                      # "embed": a text embedder, outputs Embedding records
    arms: list[ModelSlot] = field(default_factory=list)     # router arm i scores with arms[i]
    router: Any = None                                       # models.routing.Router; None = one arm
    shadows: list[ModelSlot] = field(default_factory=list)   # score every row; output to shadow_topic
    shadow_topic: str | None = None
    telemetry_topic: str | None = None
    counters: dict[str, int] = field(default_factory=lambda: {"in": 0, "out": 0, "dead": 0, "shadow_errors": 0})

    def __post_init__(self) -> None:
        if not self.arms:
            self.arms = [self.slot]
