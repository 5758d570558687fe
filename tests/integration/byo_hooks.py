"""Hooks the bring-your-own-model test loads by name (``tests.integration.byo_hooks:...``)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from models.demo_data import FEATURES

POISON = "evt-11-137"     # the one event the pre hook refuses


def pre_demo(columns: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """The demo model's 16 inputs, built by hand; raises on the poison event only."""
    if POISON in columns["event_id"].tolist():
        raise ValueError(f"refusing {POISON}")
    return {"features": np.stack([np.asarray(columns[f], np.float32) for f in FEATURES], axis=1)}
