"""The HTTP load phase: N concurrent clients for S seconds against serve-http and the FastAPI peer.

Each client sends one single-row V2 tensor request, waits for the answer, and sends the
next (closed loop), over its own keep-alive connection on loopback. Both servers get the
same clients, the same rows and the same duration; the report is requests/s and the
p50 / p99 of request latency seen by the clients, for each.

Standalone: ``python -m bench.http_load --clients 32 --seconds 20``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bodies(n: int = 512) -> list[bytes]:
    from bench.peers.common import model_session
    from models.demo_data import generate

    _, names = model_session()
    cols = generate(n, seed=5)
    feats = np.stack([np.asarray(cols[f], dtype=np.float32) for f in names], axis=1)
    return [json.dumps({"inputs": [{"name": "features", "shape": [1, len(names)], "datatype": "FP32",
                                    "data": row.tolist()}]}).encode() for row in feats]


def _request(path: str, body: bytes) -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    """One request on a keep-alive connection; returns the status (the body is read and dropped)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return status


async def _load(url: str, clients: int, seconds: float, bodies: list[bytes]) -> dict[str, Any]:
    """Closed-loop clients, each on its own keep-alive connection. The client is raw HTTP/1.1 on
    asyncio streams (requests pre-encoded), so that the load generator, which shares the
    machine's cores with the server, costs little per request next to either server."""
    host, port = url.removeprefix("http://").split(":")
    requests = [_request("/v2/models/fraud-mlp/infer", b) for b in bodies]
    lat: list[float] = []
    errors = 0
    stop_at = time.monotonic() + seconds

    async def one(i: int) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            k = i
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                status = await _exchange(reader, writer, requests[k % len(requests)])
                lat.append(time.perf_counter() - t0)
                if status != 200:
                    errors += 1
                k += clients
        finally:
            writer.close()

    t0 = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(clients)))
    took = time.monotonic() - t0
    arr = np.array(lat) * 1000.0
    return {"requests": len(lat), "errors": errors, "rps": round(len(lat) / took, 1),
            "p50_ms": round(float(np.percentile(arr, 50)), 2) if len(arr) else None,
            "p99_ms": round(float(np.percentile(arr, 99)), 2) if len(arr) else None}


def _cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout}s")


def _server_cmd(name: str, port: int, work: Path) -> list[str]:
    if name == "peer":
        return [sys.executable, "-m", "bench.peers.http_peer", "--port", str(port)]
    import yaml

    cfg = work / "http.yaml"
    cfg.write_text(yaml.safe_dump({"pipelines": [{"name": "fraud", "input": {"topic": "unused"},
                                                  "model": {"name": "fraud-mlp"}, "output": {"topic": "unused"}}]}))
    return [sys.executable, "-m", "streamscore", "serve-http", "-c", str(cfg), "--port", str(port)]


def run_http_load(work: Path, *, clients: int = 32, seconds: float = 20.0) -> dict[str, Any]:
    """``http_rps`` / ``http_p50_ms`` / ``http_p99_ms`` for serve-http, and the same for the peer."""
    from streamscore.dev.util import stop_process

    bodies = _bodies()
    out: dict[str, Any] = {"http_clients": clients, "http_seconds": seconds}
    for name, prefix in (("streamscore", "http"), ("peer", "http_peer")):
        port = free_port()
        log = open(work / f"http-{name}.log", "wb")
        proc = subprocess.Popen(_server_cmd(name, port, work), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_ready(url, proc)
            _run(_load(url, clients, 2.0, bodies))          # warm-up (connections, first batches)
            cpu0, own0 = _cpu_seconds(proc.pid), time.process_time()
            r = _run(_load(url, clients, seconds, bodies))
            server_cpu, client_cpu = _cpu_seconds(proc.pid) - cpu0, time.process_time() - own0
        finally:
            stop_process(proc)
            log.close()
        out[f"{prefix}_rps"], out[f"{prefix}_p50_ms"], out[f"{prefix}_p99_ms"] = r["rps"], r["p50_ms"], r["p99_ms"]
        out[f"{prefix}_errors"] = r["errors"]
        # CPU per request: what the server spends, whatever else the machine runs (rps depends on the load)
        out[f"{prefix}_cpu_us_per_req"] = round(server_cpu / max(r["requests"], 1) * 1e6, 1)
        out[f"{prefix}_client_cpu_us_per_req"] = round(client_cpu / max(r["requests"], 1) * 1e6, 1)
        print(f"  http {name:11} {clients} clients x {seconds:.0f}s: {r['rps']:,} req/s, p50 {r['p50_ms']} ms, "
              f"p99 {r['p99_ms']} ms ({r['requests']:,} requests, {r['errors']} errors); server CPU "
              f"{out[f'{prefix}_cpu_us_per_req']} us/request, client {out[f'{prefix}_client_cpu_us_per_req']}",
              flush=True)
    if out.get("http_peer_rps"):
        out["http_ratio_vs_peer"] = round(out["http_rps"] / out["http_peer_rps"], 2)
        out["http_cpu_ratio_vs_peer"] = round(out["http_peer_cpu_us_per_req"] / max(out["http_cpu_us_per_req"], 1e-9), 2)
    return out


def _run(coro: Any) -> dict[str, Any]:
    """Run the load on uvloop where it is installed (the client's own cost per request is lower)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)  # type: ignore[no-any-return]
    return uvloop.run(coro)  # type: ignore[no-any-return]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=20.0)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="streamscore-http-bench-"))
    res = run_http_load(work, clients=a.clients, seconds=a.seconds)
    res["host_cores"] = os.cpu_count()
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
