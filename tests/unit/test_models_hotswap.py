"""Hot swap: the watcher follows the production stage; bad versions never replace the serving one."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.base import InputSpec, Model
from models.hotswap import RegistryWatcher
from models.registry import ModelEntry, ModelRegistry
from models.testing import write_linear_onnx
from schemas.errors import ArtifactIntegrityError, ModelLoadError

SPEC = InputSpec.of(["a", "b", "c"])
OUT = {"name": "score", "dtype": "float32", "shape": ["batch"]}
X = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)


class Slot:
    """Stands in for consumers.runtime.ModelSlot: swap returns what it replaced."""

    def __init__(self, model: Model) -> None:
        self.active = model
        self.swapped = threading.Event()

    def swap(self, entry: ModelEntry, model: Model) -> Model:
        old, self.active = self.active, model
        self.swapped.set()
        return old


@pytest.fixture
def reg(tmp_path: Path) -> ModelRegistry:
    reg = ModelRegistry(tmp_path / "registry")
    register(reg, tmp_path, [1.0, 0.0, 0.0], stage="production")
    return reg


def register(reg: ModelRegistry, tmp: Path, w: list[float], **kw: Any) -> ModelEntry:
    src = write_linear_onnx(tmp / f"w{len(reg.list())}.onnx", np.array(w))
    return reg.register("m", src, format="onnx", input_spec=SPEC, output_spec=OUT, **kw)


def score(model: Model) -> float:
    return float(model.predict(X)[0])


def watcher(reg: ModelRegistry, slot: Slot, errors: list[tuple[str, str | None, BaseException]],
            **kw: Any) -> RegistryWatcher:
    return RegistryWatcher(reg, "m", on_swap=slot.swap, on_error=lambda *a: errors.append(a),
                           retire_after_s=0.0, **kw)


def start(reg: ModelRegistry) -> tuple[RegistryWatcher, Slot, list[Any]]:
    errors: list[Any] = []
    holder: dict[str, Slot] = {}
    w = RegistryWatcher(reg, "m", on_swap=lambda e, m: holder["slot"].swap(e, m),
                        on_error=lambda *a: errors.append(a), retire_after_s=0.0)
    entry, model = w.load_initial()
    assert entry.version == "1" and w.current_version == "1"
    holder["slot"] = Slot(model)
    return w, holder["slot"], errors


def test_promote_v2_swaps_in_v2_and_retires_v1(reg: ModelRegistry, tmp_path: Path) -> None:
    w, slot, errors = start(reg)
    v1 = slot.active
    assert score(v1) == pytest.approx(1 / (1 + np.exp(-1.0)))
    assert w.poll_once() is False                      # nothing changed: no swap, no load
    register(reg, tmp_path, [0.0, 1.0, 0.0])           # staging only: not followed
    assert w.poll_once() is False and slot.active is v1
    reg.promote("m", "2")
    assert w.poll_once() is True
    assert slot.active.version == "2" and score(slot.active) == pytest.approx(1 / (1 + np.exp(-2.0)))
    w.close()                                          # retires (closes) v1
    with pytest.raises(Exception, match="before load"):
        v1.predict(X)
    assert errors == [] and w.swaps == 1


def test_tampered_v2_is_not_swapped_and_v1_keeps_serving(reg: ModelRegistry, tmp_path: Path) -> None:
    w, slot, errors = start(reg)
    v1 = slot.active
    entry = register(reg, tmp_path, [0.0, 1.0, 0.0])
    data = bytearray(entry.artifact_path.read_bytes())
    data[-5] ^= 0xFF
    entry.artifact_path.write_bytes(bytes(data))
    reg.promote("m", "2")
    assert w.poll_once() is False
    assert slot.active is v1 and score(v1) == pytest.approx(1 / (1 + np.exp(-1.0)))
    assert len(errors) == 1 and errors[0][:2] == ("m", "2")
    assert isinstance(errors[0][2], ArtifactIntegrityError)
    assert w.poll_once() is False and len(errors) == 1   # not retried on every poll
    assert w.current_version == "1"
    # a good v3 promoted later still goes through
    register(reg, tmp_path, [0.0, 0.0, 1.0], stage="production")
    assert w.poll_once() is True and slot.active.version == "3"
    w.close()


def test_failing_smoke_check_or_validation_keeps_the_old_model(reg: ModelRegistry, tmp_path: Path) -> None:
    errors: list[Any] = []
    slot = Slot(reg.load(reg.get("m")))
    src = write_linear_onnx(tmp_path / "scalar.onnx", np.ones(3), output="scalar")  # wrong output length
    reg.register("m", src, format="onnx", input_spec=SPEC, output_spec=OUT, stage="production")
    w = watcher(reg, slot, errors, current_version="1")
    assert w.poll_once() is False and slot.active.version == "1"
    assert isinstance(errors[0][2], ModelLoadError)

    def reject(entry: ModelEntry, model: Model) -> None:
        raise ValueError(f"input spec of {entry.version} is not what this pipeline decodes")

    register(reg, tmp_path, [0.0, 1.0, 0.0], stage="production")
    w2 = watcher(reg, slot, errors, current_version="1", validate=reject)
    assert w2.poll_once() is False and slot.active.version == "1"
    assert "not what this pipeline decodes" in str(errors[-1][2])


def test_rollback_swaps_back(reg: ModelRegistry, tmp_path: Path) -> None:
    w, slot, errors = start(reg)
    register(reg, tmp_path, [0.0, 1.0, 0.0], stage="production")
    assert w.poll_once() and slot.active.version == "2"
    reg.rollback("m")
    assert w.poll_once() and slot.active.version == "1"
    assert score(slot.active) == pytest.approx(1 / (1 + np.exp(-1.0)))
    assert errors == [] and w.swaps == 2
    w.close()


def test_no_production_version_reports_and_keeps_serving(reg: ModelRegistry) -> None:
    w, slot, errors = start(reg)
    reg.promote("m", "1", "archived")
    assert w.poll_once() is False and slot.active.version == "1"
    assert errors and errors[0][1] is None
    w.close()


def test_background_thread_swaps_on_promotion(reg: ModelRegistry, tmp_path: Path) -> None:
    errors: list[Any] = []
    slot = Slot(reg.load(reg.get("m")))
    with watcher(reg, slot, errors, current_version="1", interval_s=0.01) as w:
        register(reg, tmp_path, [0.0, 1.0, 0.0], stage="production")
        assert slot.swapped.wait(10.0), "the watcher thread never swapped"
        assert slot.active.version == "2" and w.current_version == "2"
    assert errors == []
