"""``streamscore serve-http``: the pipeline's model behind the Open Inference Protocol V2 (REST).

Uvicorn (httptools, uvloop); ``infer`` on raw ASGI with orjson (``OipApp``), the other endpoints
on Starlette. Handlers parse and validate (``streamscore.oip``), then await the
RequestCoalescer, which batches concurrent requests with the pipeline's AdaptiveBatcher
settings and runs the model on the event loop's thread. The live model follows
the registry (the same RegistryWatcher as ``serve``); ``/versions/{v}`` pins a version.

    GET  /v2/health/live    /v2/health/ready    /v2
    GET  /v2/models/{name}[/versions/{v}]       (metadata)
    GET  /v2/models/{name}[/versions/{v}]/ready
    POST /v2/models/{name}[/versions/{v}]/infer

Errors answer ``{"error": "..."}``: 400 bad body or input, 404 unknown model or version,
413 body too large, 500 the model failed on this request's rows.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import re
import socket
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import numpy as np

from consumers.batcher import AdaptiveBatcher
from consumers.coalescer import RequestCoalescer
from consumers.runtime import ModelSlot
from schemas.errors import ConfigError, PredictError, StreamscoreError
from streamscore import oip
from streamscore.config import PipelineFile

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 * 1024 * 1024
PINNED_VERSIONS = 8           # pinned versions kept loaded (least recently used is dropped)


@dataclass
class ServedModel:
    """One model name as the endpoint serves it: the live slot and any pinned versions."""

    name: str
    slot: ModelSlot
    decoder: Any                                   # the pipeline's decoder, JSON format (record form)
    platform: str
    versions: Callable[[], list[str]]
    load_version: Callable[[str], ModelSlot]       # raises UnknownModelError
    pinned: "OrderedDict[str, ModelSlot]" = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def pinned_slot(self, version: str) -> ModelSlot:
        with self.lock:
            slot = self.pinned.get(version)
            if slot is not None:
                self.pinned.move_to_end(version)
                return slot
        slot = self.load_version(version)
        with self.lock:
            self.pinned[version] = slot
            while len(self.pinned) > PINNED_VERSIONS:
                # not closed here: a batch may still be scoring with it; it goes with its last reference
                self.pinned.popitem(last=False)
        return slot


INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
JSON_HEADERS = [(b"content-type", b"application/json")]

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class ClientGone(Exception):
    """The client disconnected before its request body arrived: nothing to answer."""


class OipApp:
    """The ASGI app. ``.../infer`` is answered on raw ASGI (the hot path: no routing, request or
    response objects, orjson both ways); the other endpoints are Starlette routes."""

    def __init__(self, routes: Any, infer: Callable[[str, str | None, Scope, Receive], Awaitable[tuple[int, bytes]]]) -> None:
        self.routes = routes
        self.infer = infer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        m = INFER_PATH.fullmatch(scope["path"]) if scope["type"] == "http" else None
        if m is None:
            await self.routes(scope, receive, send)
            return
        if scope["method"] != "POST":
            await send_json(send, 405, oip.error_body(f"method {scope['method']} not allowed; infer takes POST"))
            return
        try:
            status, body = await self.infer(m.group(1), m.group(2), scope, receive)
        except ClientGone:
            return
        await send_json(send, status, body)


async def send_json(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*JSON_HEADERS, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def build_app(served: ServedModel, coalescer: RequestCoalescer, *, max_body_bytes: int = MAX_BODY_BYTES) -> OipApp:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    def error(status: int, message: str) -> Response:
        return JSONResponse({"error": message}, status_code=status)

    async def slot_for(name: str, version: str | None) -> ModelSlot:
        if name != served.name:
            raise oip.BadRequest(f"unknown model {name!r}; this server serves {served.name!r}", 404)
        if version is None:
            return served.slot
        from models.registry import UnknownModelError

        try:
            return await asyncio.to_thread(served.pinned_slot, version)
        except UnknownModelError:
            raise oip.BadRequest(f"model {name!r} has no version {version!r}; versions: {served.versions()}", 404) from None
        except StreamscoreError as exc:
            raise oip.BadRequest(f"model {name!r} version {version!r} cannot be loaded: {exc}", 404) from None

    async def live(_r: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(_r: Request) -> Response:
        return JSONResponse({"ready": True})      # the app exists once its model is loaded

    async def server_meta(_r: Request) -> Response:
        return JSONResponse({"name": "streamscore", "version": "0.1.0", "extensions": []})

    async def model_meta(request: Request) -> Response:
        try:
            slot = await slot_for(request.path_params["name"], request.path_params.get("version"))
        except oip.BadRequest as exc:
            return error(exc.status, str(exc))
        a = slot.active
        meta = oip.model_metadata(name=served.name, versions=served.versions(), platform=served.platform,
                                  input_name=a.assembler.input_name, names=tuple(a.assembler.names))  # type: ignore[attr-defined]
        if "version" in request.path_params:
            meta["versions"] = [str(a.model.version)]
        return JSONResponse(meta)

    async def model_ready(request: Request) -> Response:
        try:
            await slot_for(request.path_params["name"], request.path_params.get("version"))
        except oip.BadRequest as exc:
            return error(exc.status, str(exc))
        return JSONResponse({"name": served.name, "ready": True})

    async def infer(name: str, version: str | None, scope: Scope, receive: Receive) -> tuple[int, bytes]:
        try:
            body = await read_body(scope, receive, max_body_bytes)
            req = oip.parse_body(body)
            slot = await slot_for(name, version)
            feats = features(req, slot, served.decoder)
        except oip.BadRequest as exc:
            return exc.status, oip.error_body(str(exc))
        try:
            scored = await coalescer.score(slot, feats)
        except PredictError as exc:
            return 500, oip.error_body(str(exc))
        return 200, oip.infer_response(model=served.name, version=str(scored.active.model.version),
                                       request_id=req.get("id"), scores=scored.scores, decisions=scored.decisions)

    base = "/v2/models/{name}"
    routes = [Route("/v2/health/live", live), Route("/v2/health/ready", ready), Route("/v2", server_meta)]
    for prefix in (base, base + "/versions/{version}"):
        routes += [Route(prefix, model_meta), Route(prefix + "/ready", model_ready)]
    return OipApp(Starlette(routes=routes), infer)


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    for k, v in scope["headers"]:
        if k == b"content-length" and v.isdigit() and int(v) > limit:
            raise oip.BadRequest(f"request body of {v.decode()} bytes exceeds the limit of {limit}", 413)
    chunks: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ClientGone()
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise oip.BadRequest(f"request body exceeds the limit of {limit} bytes", 413)
        chunks.append(chunk)
        if not msg.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def features(req: dict[str, Any], slot: ModelSlot, decoder: Any) -> np.ndarray:
    """The request's feature matrix: tensors as given, or records through the stream's decoder and assembler."""
    assembler: Any = slot.active.assembler
    names = tuple(assembler.names)
    if not oip.is_record_form(req):
        try:
            return oip.tensor_features(req, assembler.input_name, names, assembler)
        except StreamscoreError as exc:
            if isinstance(exc, oip.BadRequest):
                raise
            raise oip.BadRequest(str(exc)) from None
    values = oip.record_values(req)
    decoded = decoder.decode(values)
    if decoded.errors:
        i, err = decoded.errors[0]
        more = f" (and {len(decoded.errors) - 1} more)" if len(decoded.errors) > 1 else ""
        raise oip.BadRequest(f"record {i}: {err}{more}")
    try:
        x: np.ndarray = assembler.assemble(decoded.columns)
    except StreamscoreError as exc:
        raise oip.BadRequest(f"records: {exc}") from None
    return oip.finite(x, names)


# ------------------------------------------------------------------ composition
@dataclass
class HttpService:
    """What ``serve-http`` runs: the app, its coalescer and the registry watcher (closed by ``close``)."""

    app: Any
    served: ServedModel
    coalescer: RequestCoalescer
    closers: list[Callable[[], None]]

    def close(self) -> None:
        for close in self.closers:
            try:
                close()
            except Exception as exc:  # noqa: BLE001 - shutting down anyway
                log.warning("closing %s failed: %s", close, exc)


def build_service(cfg: PipelineFile, *, pipeline: str | None = None, max_body_bytes: int = MAX_BODY_BYTES,
                  max_wait_ms: float = 0.0) -> HttpService:
    from prometheus_client import CollectorRegistry

    from monitoring.metrics import ScorerMetrics
    from models.registry import ModelRegistry
    from schemas.registry import SchemaRegistry
    from streamscore.app import _watch, active_for, build_decoder, load_active, registry_for, scoring_pipeline
    from streamscore.contract import reader_schema, registry_client

    p = scoring_pipeline(cfg, pipeline, "serve-http")
    assert p.model is not None
    registry = registry_for(cfg)
    entry, active = load_active(registry, p)
    slot = ModelSlot(active)
    metrics = ScorerMetrics(registry=CollectorRegistry())
    schemas = SchemaRegistry.default()
    client = registry_client(cfg, p, metrics, None)
    reader = reader_schema(p, schemas, client)
    decoder = build_decoder(p, reader, client or schemas, tuple(entry.input_spec.names), metrics=metrics, fmt="json")
    closers: list[Callable[[], None]] = []

    def load_version(version: str) -> ModelSlot:
        e = registry.get(entry.name, version, stage=None)
        if tuple(e.input_spec.names) != tuple(entry.input_spec.names):
            raise ConfigError(f"{e.name}:{e.version} expects features {list(e.input_spec.names)}, "
                              f"the pipeline assembles {list(entry.input_spec.names)}")
        return ModelSlot(active_for(p, e, registry.load(e, device=p.model.device if p.model else "cpu"), "primary"))  # noqa: E501

    served = ServedModel(name=entry.name, slot=slot, decoder=decoder, platform=f"streamscore_{entry.format}",
                         versions=lambda: ([str(e.version) for e in registry.list(entry.name)]
                                           if isinstance(registry, ModelRegistry) else [str(slot.active.model.version)]),
                         load_version=load_version)
    if p.model.hot_swap and p.model.version is None:
        closers.append(_watch(registry, p, slot, entry, "primary", metrics).start().close)
    b = p.batching
    # A request waits at most max_wait_ms for batch-mates (default 0: a stream's batcher waits
    # because its rows queue in Kafka anyway, a client's request would only be slower). Requests
    # that arrive while the model runs are batched together on its next call regardless.
    batcher = AdaptiveBatcher(max_size=b.max_size or 8192, max_wait_s=max_wait_ms / 1000.0,
                              latency_target_s=None if b.latency_target_ms is None else b.latency_target_ms / 1000.0)
    coalescer = RequestCoalescer(batcher=batcher)
    return HttpService(app=build_app(served, coalescer, max_body_bytes=max_body_bytes), served=served,
                       coalescer=coalescer, closers=closers)


def bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except (OSError, OverflowError) as exc:
        sock.close()
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"serve-http: cannot listen on {host}:{port}: {why}") from None
    sock.listen(2048)
    return sock


def uvicorn_server(app: Any) -> Any:
    import uvicorn

    # httptools and uvloop are what uvicorn's "auto" picks when installed; named so a missing one is not silent
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                         timeout_keep_alive=30, http="httptools", loop=loop))


def run_http(cfg: PipelineFile, *, host: str, port: int, pipeline: str | None = None,
             max_body_bytes: int = MAX_BODY_BYTES, max_wait_ms: float = 0.0) -> None:
    sock = bind(host, port)
    service = build_service(cfg, pipeline=pipeline, max_body_bytes=max_body_bytes, max_wait_ms=max_wait_ms)
    bound = sock.getsockname()[1]
    print(f"serve-http: {service.served.name} (version {service.served.slot.active.model.version}) "
          f"on http://{host}:{bound}/v2/models/{service.served.name}/infer", flush=True)
    try:
        uvicorn_server(service.app).run(sockets=[sock])   # returns on SIGINT / SIGTERM
    finally:
        service.close()
        sock.close()
