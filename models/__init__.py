"""Models: the Model protocol, onnxruntime / torch backends, the file registry, demo data.

Importing this package imports neither torch nor onnxruntime; backends load them lazily.
"""

from __future__ import annotations

from pathlib import Path

from models.base import FeatureSpec, InputError, InputSpec, Model
from models.registry import ModelEntry, ModelRegistry, UnknownModelError

# A small committed registry (fraud-mlp:1 ONNX, fraud-mlp-torch:1 TorchScript, both
# production) so the scorer runs without training. Rebuild: ``python -m models.train``.
DEMO_REGISTRY: Path = Path(__file__).resolve().parent / "demo_registry"

__all__ = [
    "DEMO_REGISTRY",
    "FeatureSpec",
    "InputError",
    "InputSpec",
    "Model",
    "ModelEntry",
    "ModelRegistry",
    "UnknownModelError",
]
