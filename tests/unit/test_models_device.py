"""Device worker on CPU (the path CI runs): correctness, bucketing / padding, order, overlap, errors."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models import DEMO_REGISTRY
from models.device import DeviceModel, DeviceWorker
from models.hotswap import RegistryWatcher
from models.registry import ModelRegistry
from schemas.errors import ArtifactIntegrityError, ConfigError, ModelLoadError, PredictError

BUCKETS = (4, 16, 64)


def mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3)).eval()


class Recorder(torch.nn.Module):
    """Doubles its input and remembers every input it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return x * 2


def rows(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 8)).astype(np.float32)


@pytest.mark.parametrize("n", [1, 3, 4, 5, 17, 64, 65, 200])
def test_float32_matches_bare_model(n: int) -> None:
    model = mlp()
    x = rows(n, seed=n)
    with torch.inference_mode():
        want = model(torch.from_numpy(x)).numpy()
    with DeviceWorker(model, device="cpu", buckets=BUCKETS) as w:
        got = w.run(x)
    assert got.dtype == np.float32 and got.shape == (n, 3)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_batches_are_padded_to_buckets_with_zero_rows() -> None:
    rec = Recorder()
    with DeviceWorker(rec, device="cpu", buckets=BUCKETS) as w:
        for n in (3, 4, 13, 70):
            x = rows(n) + 10.0  # no real row is all zeros
            got = w.run(x)
            np.testing.assert_allclose(got, 2 * x, rtol=1e-6)
    shapes = [t.shape[0] for t in rec.seen]
    assert shapes == [4, 4, 16, 64, 16]          # 70 = 64 + 6 -> chunks padded to 64 and 16
    assert (rec.seen[0][3:] == 0).all() and (rec.seen[2][13:] == 0).all() and (rec.seen[4][6:] == 0).all()
    assert (rec.seen[0][:3] != 0).all()          # a reused buffer holds the new rows, not stale ones
    assert w.bucket_for(1) == 4 and w.bucket_for(16) == 16 and w.bucket_for(1000) == 64


def test_futures_resolve_in_submission_order_with_their_own_rows() -> None:
    done: list[int] = []
    with DeviceWorker(Recorder(), device="cpu", buckets=BUCKETS, depth=2) as w:
        futs = []
        for i in range(30):
            f = w.submit(np.full((1 + i % 20, 2), float(i), dtype=np.float32))
            f.add_done_callback(lambda _f, i=i: done.append(i))
            futs.append(f)
        for i, f in enumerate(futs):
            out = f.result(timeout=30)
            assert out.shape == (1 + i % 20, 2) and (out == 2 * i).all()
    assert done == list(range(30))


def test_submit_returns_before_the_model_finishes() -> None:
    gate, entered = threading.Event(), threading.Event()

    class Gated(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            entered.set()
            assert gate.wait(30)
            return x + 1

    with DeviceWorker(Gated(), device="cpu", buckets=BUCKETS) as w:
        f1 = w.submit(np.zeros((2, 1), dtype=np.float32))
        f2 = w.submit(np.ones((2, 1), dtype=np.float32))   # CPU side keeps going: batch k+1 queued
        assert entered.wait(30) and not f1.done() and not f2.done()
        gate.set()
        assert (f1.result(30) == 1).all() and (f2.result(30) == 2).all()


def test_a_failing_batch_fails_alone() -> None:
    class Picky(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if bool((x < 0).any()):
                raise RuntimeError("negative input")
            return x.sum(dim=1)

    with DeviceWorker(Picky(), device="cpu", buckets=BUCKETS) as w:
        good1 = w.submit(np.ones((3, 2), dtype=np.float32))
        bad = w.submit(-np.ones((3, 2), dtype=np.float32))
        good2 = w.submit(np.full((5, 2), 2.0, dtype=np.float32))
        assert (good1.result(30) == 2).all()
        with pytest.raises(PredictError, match="negative input"):
            bad.result(30)
        assert (good2.result(30) == 4).all()


def test_several_inputs_integer_ids_and_bfloat16() -> None:
    class Embed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.emb = torch.nn.Embedding(50, 4)

        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            assert ids.dtype == torch.int64 and mask.dtype == torch.int64
            e = self.emb(ids) * mask.unsqueeze(-1).to(self.emb.weight.dtype)
            return e.sum(dim=1)

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, size=(9, 6))
    mask = (rng.random((9, 6)) > 0.3).astype(np.int64)
    bare = Embed()
    with torch.inference_mode():
        want = bare(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    with DeviceWorker(Embed(), device="cpu", buckets=BUCKETS) as w:
        np.testing.assert_allclose(w.run(ids, mask), want, atol=1e-5)
    with DeviceWorker(Embed(), device="cpu", dtype="bfloat16", buckets=BUCKETS) as w:
        got = w.run(ids, mask)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=0.1)
        assert not np.array_equal(got, want)  # it really ran in bf16


def test_bad_configuration_is_rejected() -> None:
    with pytest.raises(ConfigError, match="dtype"):
        DeviceWorker(mlp(), device="cpu", dtype="int8")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="buckets"):
        DeviceWorker(mlp(), device="cpu", buckets=())
    with pytest.raises(ConfigError, match="device"):
        DeviceWorker(mlp(), device="tpu")
    with pytest.raises(ConfigError, match="nn.Module"):
        DeviceWorker(object(), device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="CUDA"):
            DeviceWorker(mlp(), device="cuda")
        w = DeviceWorker(mlp(), device="auto", cuda_graphs=True)
        assert w.device.type == "cpu" and not w.cuda_graphs
        w.close()
    w = DeviceWorker(mlp(), device="cpu")
    w.close()
    with pytest.raises(PredictError, match="after close"):
        w.submit(rows(2))
    with DeviceWorker(Recorder(), device="cpu") as w2, pytest.raises(PredictError, match="first dimension"):
        w2.submit(rows(2), rows(3))


def test_device_model_from_registry_matches_torch_backend(tmp_path: Path) -> None:
    reg = ModelRegistry(DEMO_REGISTRY)
    entry = reg.get("fraud-mlp-torch")
    x = np.random.default_rng(0).standard_normal((37, len(entry.input_spec))).astype(np.float32)
    ref = reg.load(entry)
    dm = DeviceModel.from_entry(reg, entry, device="cpu", buckets=(8, 32))
    try:
        assert dm.version == entry.version and dm.input_spec == entry.input_spec
        np.testing.assert_allclose(dm.predict(x), ref.predict(x), atol=1e-5)
        with pytest.raises(PredictError, match="shape"):
            dm.predict(x[:, :3])
    finally:
        dm.close()
        ref.close()

    copy = tmp_path / "reg"
    shutil.copytree(DEMO_REGISTRY, copy)
    tampered = ModelRegistry(copy).get("fraud-mlp-torch")
    with open(tampered.artifact_path, "r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00\x01\x02\x03")
    with pytest.raises(ArtifactIntegrityError):
        DeviceModel.from_entry(ModelRegistry(copy), tampered, device="cpu")


def test_watcher_can_load_through_a_device_worker(tmp_path: Path) -> None:
    copy = tmp_path / "reg"
    shutil.copytree(DEMO_REGISTRY, copy)
    reg = ModelRegistry(copy)
    entry = reg.get("fraud-mlp-torch")
    reg.register("fraud-mlp-torch", entry.artifact_path, format="torchscript", input_spec=entry.input_spec,
                 output_spec=entry.output_spec, stage="production")
    swapped: list[Any] = []
    w = RegistryWatcher(reg, "fraud-mlp-torch", current_version="1", retire_after_s=0.0,
                        on_swap=lambda e, m: swapped.append(m),
                        loader=lambda r, e: DeviceModel.from_entry(r, e, device="cpu", buckets=(8,)))
    assert w.poll_once()
    assert isinstance(swapped[0], DeviceModel) and swapped[0].version == "2"
    swapped[0].close()
    w.close()
