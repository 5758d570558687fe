"""serve-http: the Open Inference Protocol V2 REST endpoints, over a real socket with httpx.

The server is the one ``streamscore serve-http`` runs (uvicorn + Starlette, the coalescer,
the registry watcher), on a free loopback port, with a copy of the demo registry.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumers.batcher import AdaptiveBatcher
from consumers.coalescer import RequestCoalescer
from consumers.runtime import ActiveModel, ModelSlot
from models import DEMO_REGISTRY
from models.demo_data import generate
from models.registry import ModelRegistry
from streamscore.config import parse_config
from streamscore.http_server import ServedModel, build_app, build_service, bind, uvicorn_server

NAME = "fraud-mlp"


class Server:
    def __init__(self, app: Any) -> None:
        self.sock = bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn_server(app)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reg") / "registry"
    shutil.copytree(DEMO_REGISTRY, root)
    return root


@pytest.fixture(scope="module")
def served(registry: Path) -> Iterator[tuple[str, Any]]:
    cfg = parse_config({"registry": str(registry), "pipelines": [
        {"name": "fraud", "input": {"topic": "tx"}, "output": {"topic": "pred"},
         "model": {"name": NAME, "watch_interval_ms": 50}}]})
    service = build_service(cfg, max_body_bytes=256 * 1024)
    server = Server(service.app)
    try:
        yield server.url, service
    finally:
        server.stop()
        service.close()


@pytest.fixture(scope="module")
def client(served: tuple[str, Any]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served[0], timeout=30) as c:
        yield c


def _entry() -> Any:
    return ModelRegistry(DEMO_REGISTRY).get(NAME)


def _rows(n: int, seed: int = 3) -> tuple[dict[str, Any], np.ndarray]:
    cols = generate(n, seed=seed)
    names = _entry().input_spec.names
    feats = np.stack([np.asarray(cols[f], dtype=np.float32) for f in names], axis=1)
    return cols, feats


def _onnx(feats: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(_entry().artifact_path), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {sess.get_inputs()[0].name: feats})[0]).reshape(-1)


def _check_v2_response(body: dict[str, Any], n: int) -> None:
    """The V2 inference response shape: model_name, model_version, outputs[name, shape, datatype, data]."""
    assert set(body) >= {"model_name", "outputs"} and isinstance(body["model_name"], str)
    assert isinstance(body.get("model_version", ""), str)
    for out in body["outputs"]:
        assert set(out) >= {"name", "shape", "datatype", "data"}
        assert out["shape"] == [n] and len(out["data"]) == n
        assert out["datatype"] in ("FP32", "BOOL")


# ---------------------------------------------------------------- the REST endpoints
def test_health_server_and_model_metadata(client: httpx.Client) -> None:
    assert client.get("/v2/health/live").status_code == 200
    r = client.get("/v2/health/ready")
    assert r.status_code == 200 and r.json()["ready"] is True
    assert client.get("/v2").json()["name"] == "streamscore"
    meta = client.get(f"/v2/models/{NAME}").json()
    names = list(_entry().input_spec.names)
    assert meta["name"] == NAME and "1" in meta["versions"]
    assert meta["inputs"] == [{"name": _entry().input_spec.input_name, "datatype": "FP32", "shape": [-1, len(names)],
                               "parameters": {"features": names}}]
    assert [o["name"] for o in meta["outputs"]] == ["score", "decision"]
    assert client.get(f"/v2/models/{NAME}/versions/1").json()["versions"] == ["1"]
    assert client.get(f"/v2/models/{NAME}/ready").json() == {"name": NAME, "ready": True}
    r = client.get(f"/v2/models/{NAME}/infer")
    assert r.status_code == 405 and "POST" in r.json()["error"]
    assert client.get("/v2/models/x/y/z").status_code == 404


def test_tensor_infer_matches_onnxruntime(client: httpx.Client) -> None:
    _, feats = _rows(64)
    body = {"id": "req-1", "inputs": [{"name": _entry().input_spec.input_name, "shape": list(feats.shape),
                                       "datatype": "FP32", "data": feats.reshape(-1).tolist()}]}
    r = client.post(f"/v2/models/{NAME}/infer", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    _check_v2_response(out, 64)
    assert out["id"] == "req-1" and out["model_name"] == NAME and out["model_version"] == "1"
    scores = np.array(out["outputs"][0]["data"])
    np.testing.assert_allclose(scores, _onnx(feats), atol=1e-6)
    assert out["outputs"][1]["data"] == (scores >= _entry().decision_threshold).tolist()
    # the same through the pinned-version path, and as one tensor per feature
    pinned = client.post(f"/v2/models/{NAME}/versions/1/infer", json=body).json()
    assert pinned["outputs"][0]["data"] == out["outputs"][0]["data"]
    per_feature = {"inputs": [{"name": n, "shape": [64, 1], "datatype": "FP64", "data": feats[:, j].tolist()}
                              for j, n in enumerate(_entry().input_spec.names)]}
    r2 = client.post(f"/v2/models/{NAME}/infer", json=per_feature)
    assert r2.status_code == 200, r2.text
    np.testing.assert_allclose(r2.json()["outputs"][0]["data"], scores, atol=1e-6)


def test_record_form_runs_the_stream_decoder(client: httpx.Client) -> None:
    from streamscore.produce import encode_transactions

    cols, feats = _rows(20, seed=9)
    records = [json.loads(v) for v in encode_transactions(cols, 20, fmt="json")]
    body = {"parameters": {"content_type": "avro-json"},
            "inputs": [{"name": "records", "shape": [20], "datatype": "BYTES", "data": records}]}
    r = client.post(f"/v2/models/{NAME}/infer", json=body)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["outputs"][0]["data"], _onnx(feats), atol=1e-6)
    # a record the stream would dead-letter is a 400 naming it, nothing scored
    records[7] = {**records[7], "amount": "lots"}
    r = client.post(f"/v2/models/{NAME}/infer", json=body | {"inputs": [{**body["inputs"][0], "data": records}]})
    assert r.status_code == 400 and "record 7" in r.json()["error"]


@pytest.mark.parametrize("content, status, needle", [
    (b"{not json", 400, "malformed JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (b'{"inputs": []}', 400, "non-empty list"),
    (b'{"inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}', 400, "shape must be"),
    (b'{"inputs": [{"name": "features", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]}]}', 400, "needs 4 elements"),
    (b'{"inputs": [{"name": "features", "shape": [1, 1], "datatype": "BYTES", "data": ["x"]}]}', 400, "not numeric"),
    (b'{"inputs": [{"name": "features", "shape": [1, 1], "datatype": "FP32", "data": ["x"]}]}', 400, "numbers"),
    (b'{"inputs": [{"name": "nope", "shape": [1], "datatype": "FP32", "data": [1]}]}', 400, "unknown input"),
    (b'{"inputs": [{"name": "features", "shape": [1, 1], "datatype": "FP32", "data": [1]}], '
     b'"parameters": {"content_type": "xml"}}', 400, "content_type"),
])
def test_bad_input_is_a_4xx_naming_the_problem(client: httpx.Client, content: bytes, status: int, needle: str) -> None:
    r = client.post(f"/v2/models/{NAME}/infer", content=content, headers={"content-type": "application/json"})
    assert r.status_code == status and needle in r.json()["error"], r.text


def test_non_finite_values_and_unknown_model_or_version(client: httpx.Client) -> None:
    feats = _rows(2)[1].astype(np.float64)
    feats[1, 3] = 1e39            # beyond float32
    body = {"inputs": [{"name": "features", "shape": list(feats.shape), "datatype": "FP64",
                        "data": feats.reshape(-1).tolist()}]}
    r = client.post(f"/v2/models/{NAME}/infer", json=body)
    assert r.status_code == 400 and "row 1" in r.json()["error"]
    r = client.post("/v2/models/other/infer", json=body)
    assert r.status_code == 404 and "unknown model 'other'" in r.json()["error"]
    r = client.post(f"/v2/models/{NAME}/versions/99/infer", json=body)
    assert r.status_code == 404 and "no version '99'" in r.json()["error"]
    assert client.get(f"/v2/models/{NAME}/versions/99").status_code == 404


def test_oversized_body_is_413_and_the_server_keeps_serving(client: httpx.Client) -> None:
    r = client.post(f"/v2/models/{NAME}/infer", content=b" " * (300 * 1024), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "exceeds the limit" in r.json()["error"]
    assert client.get("/v2/health/ready").status_code == 200


def test_hot_swap_reaches_the_endpoint(client: httpx.Client, registry: Path) -> None:
    reg = ModelRegistry(registry)
    e1 = reg.get(NAME)
    _, feats = _rows(4)
    body = {"inputs": [{"name": "features", "shape": list(feats.shape), "datatype": "FP32",
                        "data": feats.reshape(-1).tolist()}]}
    if reg.list(NAME)[-1].version == "1":
        reg.register(NAME, e1.artifact_path, format="onnx", input_spec=e1.input_spec, output_spec=e1.output_spec,
                     reference_profile=e1.reference_profile, stage="staging")
    reg.promote(NAME, "2")
    deadline = time.monotonic() + 30
    while client.post(f"/v2/models/{NAME}/infer", json=body).json()["model_version"] != "2":
        assert time.monotonic() < deadline, "the promoted version never answered"
        time.sleep(0.05)
    assert client.post(f"/v2/models/{NAME}/versions/1/infer", json=body).json()["model_version"] == "1"
    reg.promote(NAME, "1")


# ---------------------------------------------------------------- coalescing and model errors
class _Flaky:
    """A model that raises on any batch holding a row whose first feature is 13 (to test isolation)."""

    name, version = "flaky", "1"

    def predict(self, x: np.ndarray) -> np.ndarray:
        if np.any(x[:, 0] == 13):
            raise RuntimeError("row with 13")
        time.sleep(0.002)
        return x[:, 0] / 100.0

    def close(self) -> None:
        pass


class _Assembler:
    names = ("a", "b")
    input_name = "x"

    def assemble(self, columns: Any) -> np.ndarray:
        return np.stack([np.asarray(columns[n], np.float32) for n in self.names], axis=1)


def test_concurrent_requests_share_batches_and_a_model_error_fails_only_its_request() -> None:
    slot = ModelSlot(ActiveModel(model=_Flaky(), assembler=_Assembler(), threshold=0.5))  # type: ignore[arg-type]
    batches: list[tuple[int, int]] = []
    # no latency target: the 2-ms calls of this model would make the batcher close at once
    coalescer = RequestCoalescer(batcher=AdaptiveBatcher(max_size=4096, max_wait_s=0.02),
                                 on_batch=lambda r, n: batches.append((r, n)))
    served = ServedModel(name="flaky", slot=slot, decoder=None, platform="test", versions=lambda: ["1"],
                         load_version=lambda v: slot)
    server = Server(build_app(served, coalescer))
    try:
        def post(v: float) -> httpx.Response:
            with httpx.Client(base_url=server.url, timeout=30) as c:
                return c.post("/v2/models/flaky/infer",
                              json={"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [v, 0]}]})

        results: dict[int, httpx.Response] = {}
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, post(float(i)))) for i in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert results[13].status_code == 500 and "row with 13" in results[13].json()["error"]
        for i, r in results.items():
            if i != 13:
                assert r.status_code == 200, (i, r.text)
                assert r.json()["outputs"][0]["data"] == [pytest.approx(i / 100.0)]
        assert sum(r for r, _ in batches) == 40
        assert any(r > 1 for r, _ in batches), f"no two concurrent requests shared a batch: {batches}"
    finally:
        server.stop()


# ---------------------------------------------------------------- generated bodies
STATUSES: dict[int, int] = {}
EXAMPLES = int(os.environ.get("STREAMSCORE_HTTP_FUZZ_EXAMPLES", "600"))
_json = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
                     lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                     max_leaves=20)
_tensor = st.fixed_dictionaries({
    "name": st.sampled_from(["features", "records", "amount", "x"]) | st.text(max_size=6),
    "shape": st.lists(st.integers(0, 40), max_size=3) | _json,
    "datatype": st.sampled_from(["FP32", "FP64", "INT64", "BYTES", "BOOL", "FP16"]) | st.text(max_size=5),
    "data": st.lists(st.floats(width=32) | st.integers(-10**6, 10**6), max_size=40) | _json,
}, optional={"parameters": st.fixed_dictionaries({}, optional={"content_type": st.sampled_from(["avro-json", "x"])})})
_F = len(ModelRegistry(DEMO_REGISTRY).get(NAME).input_spec.names)
_valid = st.integers(1, 8).flatmap(lambda n: st.fixed_dictionaries({"inputs": st.tuples(st.fixed_dictionaries({
    "name": st.just("features"), "shape": st.just([n, _F]), "datatype": st.sampled_from(["FP32", "FP64", "INT64"]),
    "data": st.lists(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-2**40, 2**40),
                     min_size=n * _F, max_size=n * _F)})).map(list)}))
_body = st.fixed_dictionaries({"inputs": st.lists(_tensor, max_size=3) | _json},
                              optional={"id": st.text(max_size=5) | _json,
                                        "parameters": st.fixed_dictionaries({}, optional={"content_type": st.sampled_from(["avro-json", "json", "?"])}) | _json})


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(body=_valid | _body | _json, raw=st.booleans())
def test_generated_bodies_never_5xx(client: httpx.Client, body: Any, raw: bool) -> None:
    """Any JSON body (or its bytes cut short): a 2xx or a 4xx with an error, never a 5xx (the model here never fails)."""
    content = json.dumps(body, allow_nan=True).encode()
    if raw:
        content = content[: max(0, len(content) // 2)]
    r = client.post(f"/v2/models/{NAME}/infer", content=content, headers={"content-type": "application/json"})
    assert r.status_code < 500, (r.status_code, r.text, content[:300])
    STATUSES[r.status_code] = STATUSES.get(r.status_code, 0) + 1
    if r.status_code >= 400:
        assert isinstance(r.json()["error"], str)


def test_generated_bodies_reached_the_model_too() -> None:
    """The generator above is not all garbage: some bodies were scored (200), and some rejected (400)."""
    if not STATUSES:
        pytest.skip("runs after test_generated_bodies_never_5xx")
    assert STATUSES.get(200, 0) > 0 and STATUSES.get(400, 0) > 0, STATUSES
