"""A dependency-free HTTP server for the ops page: stdlib ``http.server`` in a thread.

Routes:
    GET /                  the page (static/index.html; app.js and style.css beside it)
    GET /api/drift         {"items": [drift hash per model/feature, histograms included]}
    GET /api/shadow        {"items": [shadow hash per model/shadow_model]}
    GET /api/alerts?n=50   {"items": [alerts stream entries, latest first]}
    GET /api/quality?last=100 {"items": [per model:version:variant, its newest closed quality windows]}
    GET /api/estimate      {"items": [per model:version:variant, the live estimate of its newest event-time window]}
    GET /api/metrics       throughput (events/s from successive scrapes), lag, p99, targets
    GET /healthz           "ok"
Redis being down answers 503 with {"error": ...}; the page shows it and keeps polling.
"""

from __future__ import annotations

import json
import logging
import math
import mimetypes
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from monitoring.dashboard.scrape import MetricsPoller
from monitoring.dashboard.state import RedisView

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"
_STATIC_FILES = {"/": "index.html", "/index.html": "index.html", "/app.js": "app.js", "/style.css": "style.css"}


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], *, state: RedisView, poller: MetricsPoller) -> None:
        super().__init__(address, _Handler)
        self.state = state
        self.poller = poller
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> None:
        self.poller.start()
        self._thread = threading.Thread(target=self.serve_forever, name="dashboard-http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving and scraping; safe to call twice."""
        self.poller.close()
        if self._thread is not None:
            self.shutdown()
            self._thread.join(5)
            self._thread = None
        self.server_close()
        close = getattr(self.state.client, "close", None)
        if close is not None:
            close()


class _Handler(BaseHTTPRequestHandler):
    server: DashboardServer

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("%s " + fmt, self.address_string(), *args)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        url = urlsplit(self.path)
        if url.path in _STATIC_FILES:
            return self._static(_STATIC_FILES[url.path])
        if url.path == "/healthz":
            return self._send(200, b"ok", "text/plain; charset=utf-8")
        if url.path == "/api/metrics":
            return self._json(200, self.server.poller.snapshot())
        api = {"/api/drift": lambda q: self.server.state.drift(),
               "/api/shadow": lambda q: self.server.state.shadow(),
               "/api/alerts": lambda q: self.server.state.alerts(_int(q.get("n"), 50, 1, 1000)),
               "/api/quality": lambda q: self.server.state.quality(_int(q.get("last"), 100, 1, 1000)),
               "/api/estimate": lambda q: self.server.state.estimates()}
        handler = api.get(url.path)
        if handler is None:
            return self._json(404, {"error": f"no route {url.path}"})
        try:
            items = handler(parse_qs(url.query))
        except Exception as exc:  # noqa: BLE001 - Redis down or unreadable: tell the page
            log.warning("dashboard %s: %s", url.path, exc)
            return self._json(503, {"error": f"{type(exc).__name__}: {exc}"})
        return self._json(200, {"items": items})

    def _static(self, name: str) -> None:
        body = (STATIC / name).read_bytes()
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        self._send(200, body, f"{ctype}; charset=utf-8")

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(_finite(obj), allow_nan=False, default=str).encode(), "application/json")

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Security-Policy", "default-src 'self'; img-src 'self' data:")
        self.end_headers()
        self.wfile.write(body)


def _finite(obj: Any) -> Any:
    """NaN and infinities become null: browsers' JSON.parse rejects them."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _int(values: list[str] | None, default: int, lo: int, hi: int) -> int:
    try:
        return min(hi, max(lo, int(values[0]))) if values else default
    except ValueError:
        return default


def check_options(redis_url: str, metrics_urls: list[str], port: int) -> str:
    """The dashboard's options, checked without connecting to anything; one line, or ``ConfigError``."""
    from redis.connection import parse_url

    from monitoring.redis_state import redact
    from schemas.errors import ConfigError

    try:
        parse_url(redis_url)
    except ValueError as exc:
        raise ConfigError(f"--redis-url {redact(redis_url)!r}: {exc}") from exc
    for url in metrics_urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"--metrics-url {url!r}: expected http(s)://host:port/metrics")
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port}: expected 0..65535")
    return f"dashboard options OK: Redis {redact(redis_url)}, {len(metrics_urls)} metrics URL(s), port {port}"


def serve_dashboard(redis_url: str, metrics_urls: list[str], host: str = "127.0.0.1", port: int = 0, *,
                    poll_interval_s: float = 1.0, prefix: str = "streamscore") -> tuple[DashboardServer, int]:
    """Start the dashboard in background threads; returns ``(server, bound port)``. Stop with ``server.close()``."""
    import redis

    client = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=2.0, socket_connect_timeout=2.0)
    server = DashboardServer((host, port), state=RedisView(client, prefix=prefix),
                             poller=MetricsPoller(metrics_urls, interval_s=poll_interval_s))
    server.start()
    return server, server.port
