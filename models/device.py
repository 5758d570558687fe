"""Device workers: one torch module on one device, fed as a double-buffered pipeline.

``DeviceWorker.submit(*arrays)`` returns at once with a ``DeviceFuture``; the caller
decodes batch k+1 while batch k is copied and computed. Two threads per worker:

    launcher   pads the batch to its bucket in a reused (pinned, on CUDA) host buffer,
               enqueues H2D copy -> model (or CUDA-graph replay) -> D2H copy into a
               pinned output buffer on the worker's own CUDA stream, records an event
    completer  waits for that event, copies the rows out, frees the buffer slot and
               resolves the future

Invariants:
- Futures resolve in submission order; a batch's rows come back in its row order.
- A host buffer slot is reused only after the completer has copied its output out,
  so ``depth`` slots per shape bound both memory and how far the launcher runs ahead.
- Padding rows are zeros and never reach the caller. Rows are independent in every
  model we serve (eval mode), so padding never changes a real row's output.
- On CPU the same pipeline runs without pinned memory, streams or graphs (that is the
  path CI exercises); every CUDA call sits behind ``self.is_cuda``.

Floating inputs are cast to ``dtype`` on the device; integer inputs (token ids, masks)
are passed as they are. Outputs are returned as float32.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from models.base import InputSpec, check_features, check_scores, smoke_check
from models.torch_backend import TorchDtype, check_torch_dtype, load_module, resolve_device
from schemas.errors import ConfigError, PredictError

if TYPE_CHECKING:
    from models.registry import ModelEntry, ModelRegistry

log = logging.getLogger(__name__)

DEFAULT_BUCKETS: tuple[int, ...] = (256, 512, 1024, 2048, 4096)
_STOP = object()


class DeviceFuture:
    """The pending output of one submitted batch (possibly run as several chunks)."""

    def __init__(self, parts: Sequence[cf.Future[np.ndarray]], n: int) -> None:
        self._parts = list(parts)
        self.n = n

    def done(self) -> bool:
        return all(p.done() for p in self._parts)

    def add_done_callback(self, fn: Callable[[DeviceFuture], None]) -> None:
        """Call ``fn(self)`` once every chunk has resolved (chunks resolve in order)."""
        if not self._parts:
            fn(self)
        else:
            self._parts[-1].add_done_callback(lambda _: fn(self))

    def result(self, timeout: float | None = None) -> np.ndarray:
        """The model's float32 output, one row per input row; raises ``PredictError`` if it failed."""
        outs = [p.result(timeout) for p in self._parts]
        if not outs:
            return np.zeros((0,), dtype=np.float32)
        return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=0)


@dataclass
class _Job:
    arrays: tuple[np.ndarray, ...]
    n: int
    bucket: int
    future: cf.Future[np.ndarray]


@dataclass
class _Plan:
    """Buffers (and optionally a CUDA graph) for one bucket size and input layout."""

    bucket: int
    host_in: list[list[Any]]                    # [slot][input] host tensors (pinned on CUDA)
    free: queue.Queue[int]
    dev_in: list[Any] = field(default_factory=list)   # CUDA: static device inputs
    host_out: list[Any] = field(default_factory=list)  # CUDA: [slot] pinned float32 outputs
    graph: Any = None
    graph_out: Any = None
    graph_failed: bool = False


class DeviceWorker:
    """Run ``model`` on one device with bucketed, pinned, double-buffered batches.

    ``model`` is a ``torch.nn.Module`` (or any object whose ``module`` attribute is one)
    taking one tensor per submitted array and returning a tensor whose first dimension
    is the batch (a tuple/list output uses its first element).
    ``buckets``: batch sizes to pad to; larger batches run as chunks of the largest.
    ``cuda_graphs``: capture one graph per bucket and input layout on first use (CUDA only;
    a capture failure falls back to eager for that bucket and is logged).
    The module is moved and cast in place (``module.to(device, dtype)``) and put in eval mode.
    """

    def __init__(self, model: Any, *, device: str = "auto", dtype: TorchDtype = "float32",
                 buckets: Sequence[int] = DEFAULT_BUCKETS, cuda_graphs: bool = False, depth: int = 2,
                 name: str = "device-worker") -> None:
        import torch

        check_torch_dtype(dtype)
        bks = sorted({int(b) for b in buckets})
        if not bks or bks[0] < 1:
            raise ConfigError(f"buckets must be positive batch sizes, got {list(buckets)}")
        if depth < 1:
            raise ConfigError(f"depth must be >= 1, got {depth}")
        module = getattr(model, "module", model)
        if not isinstance(module, torch.nn.Module):
            raise ConfigError(f"DeviceWorker needs a torch.nn.Module, got {type(model).__name__}")
        self.torch = torch
        self.name = name
        self.device = resolve_device(torch, device)
        self.is_cuda = self.device.type == "cuda"
        self.dtype = getattr(torch, dtype)
        self.buckets: tuple[int, ...] = tuple(bks)
        self.cuda_graphs = bool(cuda_graphs) and self.is_cuda
        self.depth = depth
        self.module = module.to(device=self.device, dtype=self.dtype).eval()
        self.stream: Any = torch.cuda.Stream(device=self.device) if self.is_cuda else None
        self._plans: dict[tuple[Any, ...], _Plan] = {}
        self._jobs: queue.Queue[Any] = queue.Queue(maxsize=4 * depth)
        self._inflight: queue.Queue[Any] = queue.Queue()
        self._closed = False
        self._submit_lock = threading.Lock()
        self._launcher = threading.Thread(target=self._launch_loop, name=f"{name}-launch", daemon=True)
        self._completer = threading.Thread(target=self._complete_loop, name=f"{name}-complete", daemon=True)
        self._launcher.start()
        self._completer.start()

    # --- public -------------------------------------------------------------------------

    def bucket_for(self, n: int) -> int:
        """The smallest bucket holding ``n`` rows (the largest bucket for bigger batches)."""
        for b in self.buckets:
            if n <= b:
                return b
        return self.buckets[-1]

    def submit(self, *arrays: np.ndarray) -> DeviceFuture:
        """Queue one batch (one array per model input, equal first dimension). Blocks only
        when ``4 * depth`` chunks are already queued (backpressure)."""
        if self._closed:
            raise PredictError(f"{self.name}: submit() after close()")
        if not arrays:
            raise PredictError(f"{self.name}: submit() needs at least one input array")
        norm = tuple(_as_input(a) for a in arrays)
        n = len(norm[0])
        bad = [a.shape for a in norm if a.ndim == 0 or len(a) != n]
        if bad:
            raise PredictError(f"{self.name}: inputs must share their first dimension {n}, got {[a.shape for a in norm]}")
        top = self.buckets[-1]
        futures: list[cf.Future[np.ndarray]] = []
        with self._submit_lock:  # chunks of one batch stay contiguous in the queue
            for lo in range(0, n, top):
                hi = min(n, lo + top)
                fut: cf.Future[np.ndarray] = cf.Future()
                self._jobs.put(_Job(tuple(a[lo:hi] for a in norm), hi - lo, self.bucket_for(hi - lo), fut))
                futures.append(fut)
        return DeviceFuture(futures, n)

    def run(self, *arrays: np.ndarray) -> np.ndarray:
        """``submit(...).result()``."""
        return self.submit(*arrays).result()

    def warmup(self, *example: np.ndarray) -> None:
        """Run ``example`` (its rows repeated or cut) once at every bucket size: allocates
        buffers and captures graphs before the first real batch."""
        for b in self.buckets:
            idx = np.arange(b) % max(1, len(example[0]))
            self.run(*(np.asarray(a)[idx] for a in example))

    def close(self) -> None:
        """Finish queued batches, stop the threads, drop buffers and graphs."""
        if self._closed:
            return
        self._closed = True
        self._jobs.put(_STOP)
        self._launcher.join()
        self._completer.join()
        self._plans.clear()

    def __enter__(self) -> DeviceWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- launcher -----------------------------------------------------------------------

    def _launch_loop(self) -> None:
        torch = self.torch
        if self.is_cuda:
            torch.cuda.set_device(self.device)
        with torch.inference_mode():
            while True:
                job = self._jobs.get()
                if job is _STOP:
                    self._inflight.put(_STOP)
                    return
                try:
                    self._launch(job)
                except Exception as exc:  # noqa: BLE001 - the failure belongs to this batch only
                    # through the completer, so failures resolve in submission order too
                    self._inflight.put((job, None, -1, None, None, exc))

    def _launch(self, job: _Job) -> None:
        plan = self._plan(job)
        slot = plan.free.get()          # waits until the completer has drained this slot
        try:
            for buf, arr in zip(plan.host_in[slot], job.arrays):
                view = buf.numpy()
                view[: job.n] = arr
                if job.n < plan.bucket:
                    view[job.n:] = 0
            if self.is_cuda:
                event = self._launch_cuda(plan, slot)
                self._inflight.put((job, plan, slot, None, event, None))
            else:
                out = self._step(plan.host_in[slot])
                self._inflight.put((job, plan, slot, out, None, None))
        except BaseException:
            plan.free.put(slot)
            raise

    def _launch_cuda(self, plan: _Plan, slot: int) -> Any:
        torch = self.torch
        with torch.cuda.stream(self.stream):
            for dev, host in zip(plan.dev_in, plan.host_in[slot]):
                dev.copy_(host, non_blocking=True)
            if self.cuda_graphs and plan.graph is None and not plan.graph_failed:
                self._capture(plan)
            if plan.graph is not None:
                plan.graph.replay()
                out = plan.graph_out
            else:
                out = self._step(plan.dev_in)
            if len(plan.host_out) <= slot:
                plan.host_out.extend(torch.empty(tuple(out.shape), dtype=torch.float32, pin_memory=True)
                                     for _ in range(len(plan.host_out), self.depth))
            plan.host_out[slot].copy_(out, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        return event

    def _capture(self, plan: _Plan) -> None:
        """Capture ``_step`` over the plan's static device inputs (warm-up runs first, on the
        worker's stream, so lazy cuBLAS / cuDNN initialisation happens outside the capture)."""
        torch = self.torch
        try:
            for _ in range(3):
                self._step(plan.dev_in)
            self.stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            # thread_local: CUDA calls other threads make meanwhile (the completer's event
            # waits, other models) neither break nor join this capture
            with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
                out = self._step(plan.dev_in)
            plan.graph, plan.graph_out = graph, out
        except Exception as exc:  # noqa: BLE001 - eager still works
            plan.graph_failed = True
            log.warning("%s: CUDA graph capture failed for bucket %d, running eager: %s",
                        self.name, plan.bucket, exc)

    def _step(self, inputs: Sequence[Any]) -> Any:
        xs = [x.to(self.dtype) if x.is_floating_point() else x for x in inputs]
        out = self.module(*xs)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.float()

    def _plan(self, job: _Job) -> _Plan:
        key = (job.bucket, *((a.shape[1:], a.dtype.str) for a in job.arrays))
        plan = self._plans.get(key)
        if plan is None:
            torch = self.torch
            pin = self.is_cuda
            host_in = [[torch.zeros((job.bucket, *a.shape[1:]), dtype=_torch_dtype(torch, a.dtype), pin_memory=pin)
                        for a in job.arrays] for _ in range(self.depth)]
            free: queue.Queue[int] = queue.Queue()
            for i in range(self.depth):
                free.put(i)
            plan = _Plan(job.bucket, host_in, free)
            if self.is_cuda:
                plan.dev_in = [torch.zeros(t.shape, dtype=t.dtype, device=self.device) for t in host_in[0]]
            self._plans[key] = plan
        return plan

    # --- completer ----------------------------------------------------------------------

    def _complete_loop(self) -> None:
        while True:
            item = self._inflight.get()
            if item is _STOP:
                return
            job, plan, slot, out, event, error = item
            if error is not None:
                job.future.set_exception(_predict_error(self.name, job.n, error))
                continue
            try:
                if event is not None:
                    event.synchronize()
                    res = plan.host_out[slot][: job.n].numpy().copy()
                else:
                    res = out[: job.n].numpy().copy()
            except Exception as exc:  # noqa: BLE001 - e.g. a device-side assert surfaces here
                plan.free.put(slot)
                job.future.set_exception(_predict_error(self.name, job.n, exc))
                continue
            plan.free.put(slot)
            job.future.set_result(res)


def _as_input(a: Any) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype.kind == "f" and arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    elif arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    elif arr.dtype.kind not in "fiu":
        raise PredictError(f"device worker inputs must be numeric arrays, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr)


def _torch_dtype(torch: Any, dt: np.dtype[Any]) -> Any:
    return torch.from_numpy(np.zeros(0, dtype=dt)).dtype


def _predict_error(name: str, n: int, exc: BaseException) -> PredictError:
    err = PredictError(f"{name}: batch of {n} rows failed: {type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err


# --- registry adapter ----------------------------------------------------------------------

def load_torch_module(registry: ModelRegistry, entry: ModelEntry) -> Any:
    """Verify ``entry``'s sha256, then load its TorchScript / torch.export module on CPU."""
    registry.verify(entry)
    return load_module(entry.artifact_path, entry.format, map_location="cpu", label=f"{entry.name}:{entry.version}")


class DeviceModel:
    """The ``Model`` protocol over a ``DeviceWorker``: ``(n, f)`` float32 features -> ``n`` scores.

    ``predict`` blocks; ``submit`` returns a future so the caller can overlap the next batch.
    """

    def __init__(self, worker: DeviceWorker, *, name: str, version: str, input_spec: InputSpec) -> None:
        self.worker = worker
        self.name = name
        self.version = version
        self.input_spec = input_spec

    @classmethod
    def from_entry(cls, registry: ModelRegistry, entry: ModelEntry, *, device: str = "auto",
                   dtype: TorchDtype = "float32", **worker_options: Any) -> DeviceModel:
        """Verify, load and smoke-check a torch registry entry on a new device worker
        (a ``RegistryWatcher`` ``loader``: ``lambda reg, e: DeviceModel.from_entry(reg, e, device="cuda")``)."""
        module = load_torch_module(registry, entry)
        worker = DeviceWorker(module, device=device, dtype=dtype, name=f"{entry.name}:{entry.version}",
                              **worker_options)
        model = cls(worker, name=entry.name, version=entry.version, input_spec=entry.input_spec)
        smoke_check(model, f"{entry.name}:{entry.version}")
        return model

    @property
    def label(self) -> str:
        return f"{self.name}:{self.version} ({self.worker.device})"

    def load(self) -> None:
        """The worker is ready on construction."""

    def submit(self, features: np.ndarray) -> DeviceFuture:
        check_features(self.label, features, len(self.input_spec))
        return self.worker.submit(features)

    def predict(self, features: np.ndarray) -> np.ndarray:
        return check_scores(self.label, self.submit(features).result(), len(features))

    def close(self) -> None:
        self.worker.close()


__all__ = ["DEFAULT_BUCKETS", "DeviceFuture", "DeviceModel", "DeviceWorker", "load_torch_module"]
