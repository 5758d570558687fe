"""The unit of work that moves through the scorer's stages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from confluent_kafka import Message

from consumers.offsets import TP
from consumers.runtime import ActiveModel, PipelineRuntime


@dataclass
class Work:
    """One pipeline's share of one micro-batch, as it moves through the stages."""

    batch_id: int
    rt: PipelineRuntime
    ranges: dict[TP, tuple[int, int]]
    msgs: list[Message]
    decoded: Any = None                       # schemas.columnar.DecodedBatch
    keys: list[bytes | None] = field(default_factory=list)
    in_parts: np.ndarray | None = None
    dead: list[tuple[int, str, str]] = field(default_factory=list)  # (msg index, reason, message)
    ok_rows: np.ndarray | None = None         # rows of `decoded` that were scored
    scores: np.ndarray | None = None          # one per decoded row (valid where ok_rows says)
    groups: list[tuple[ActiveModel, np.ndarray]] = field(default_factory=list)   # (model, its scored rows)
    shadow_out: list[tuple[ActiveModel, np.ndarray]] = field(default_factory=list)  # scores for ok_rows
    embeddings: np.ndarray | None = None      # kind=embed: (rows, dim) float32
    labels: list[str] | None = None
    active: ActiveModel | None = None
    generation: int = 0
    consumed_at: float = 0.0                  # time.monotonic() at each stage, for stage latency metrics
    scored_at: float = 0.0
