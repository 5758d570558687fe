"""MLflow's Model Registry as a model registry: ``registry: mlflow+http://host:port``.

Models are addressed as ``name@alias`` (followed live: a moved alias hot-swaps like a
promotion) or ``name/version``; a bare ``name`` follows the alias named by the pipeline's
``stage``. Only MLflow's REST API is used (no mlflow import): the version's artifacts are
downloaded through the tracking server's artifact proxy into a local cache, and the ONNX
flavour's file is served. The streamscore spec comes from the version's tag
``streamscore.spec`` (JSON: features / input_spec, output_spec, hooks, decision_threshold),
else it is inferred from the ONNX graph. A version tag ``sha256`` is checked when present.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from models.base import InputSpec, Model
from models.registry import ModelEntry, UnknownModelError, load_verified, sha256_file
from schemas.errors import ArtifactIntegrityError, ConfigError, ModelError

SCHEME = "mlflow+"


def split_ref(ref: str) -> tuple[str, str | None, str | None]:
    """``name@alias`` -> (name, alias, None); ``name/version`` -> (name, None, version)."""
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return name, alias, None
    if "/" in ref:
        name, version = ref.rsplit("/", 1)
        return name, None, version
    return ref, None, None


class MlflowRegistry:
    """Read-only view of an MLflow tracking server's model registry."""

    def __init__(self, uri: str, *, cache: Path | None = None, timeout_s: float = 30.0) -> None:
        base = uri[len(SCHEME):] if uri.startswith(SCHEME) else uri
        if not base.startswith(("http://", "https://")):
            raise ConfigError(f"registry: {uri!r} is not mlflow+http://host:port")
        self.base = base.rstrip("/")
        self.cache = cache or Path(tempfile.mkdtemp(prefix="streamscore-mlflow-"))   # removed by close()
        self.timeout_s = timeout_s

    def _call(self, path: str, params: dict[str, str] | None = None) -> bytes:
        url = f"{self.base}/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as resp:
                return bytes(resp.read())
        except urllib.error.HTTPError as exc:
            body = exc.read().decode("utf-8", "replace")
            try:
                msg = json.loads(body).get("message", body)
            except ValueError:
                msg = body
            if exc.code in (400, 404):
                raise UnknownModelError(f"MLflow at {self.base}: {msg}") from exc
            raise ModelError(f"MLflow at {self.base} answered {exc.code} to {path}: {msg}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise ModelError(f"MLflow at {self.base} cannot be reached: {exc}") from exc

    def _json(self, endpoint: str, **params: str) -> dict[str, Any]:
        data = json.loads(self._call(endpoint, params))
        return data if isinstance(data, dict) else {}

    def _version_info(self, name: str, version: str | None, alias: str | None) -> dict[str, Any]:
        if version is not None:
            return dict(self._json("api/2.0/mlflow/model-versions/get", name=name, version=version)["model_version"])
        return dict(self._json("api/2.0/mlflow/registered-models/alias", name=name, alias=alias or "")["model_version"])

    def change_token(self, ref: str, stage: str | None = None) -> str | None:
        """What a watcher compares between polls: the version the alias points at now."""
        name, alias, version = split_ref(ref)
        try:
            return str(self._version_info(name, version, alias or stage)["version"])
        except ModelError:
            return None

    def get(self, ref: str, version: str | None = None, *, stage: str | None = "production") -> ModelEntry:
        """The entry for ``ref`` (``name@alias``, ``name/version`` or ``name`` + alias ``stage``)."""
        name, alias, pinned = split_ref(ref)
        version = version or pinned
        if version is None and alias is None:
            alias = stage
        info = self._version_info(name, version, alias)
        ver = str(info["version"])
        tags = {t["key"]: t["value"] for t in info.get("tags") or []}
        path = self._download(name, ver)
        spec = json.loads(tags["streamscore.spec"]) if "streamscore.spec" in tags else {}
        if "input_spec" in spec or "features" in spec:
            input_spec = InputSpec.from_dict(spec.get("input_spec") or {"features": spec["features"]})
            output_spec = spec.get("output_spec")
        else:
            from models.infer import infer_specs

            raw_in, raw_out = infer_specs(path)
            input_spec, output_spec = InputSpec.from_dict(raw_in), spec.get("output_spec", raw_out)
        if output_spec is None:
            from models.infer import infer_specs

            output_spec = infer_specs(path)[1]
        return ModelEntry(name=name, version=ver, stage=alias or "", format="onnx", artifact_path=path,
                          sha256=tags.get("sha256") or sha256_file(path), input_spec=input_spec,
                          output_spec=dict(output_spec), decision_threshold=float(spec.get("decision_threshold", 0.5)),
                          hooks={str(k): str(v) for k, v in (spec.get("hooks") or {}).items()})

    def _download(self, name: str, version: str) -> Path:
        """The version's ONNX file, downloaded once with the files beside it (external tensor data)."""
        target = self.cache / name / version
        marker = target / ".complete"
        if not marker.is_file():
            uri = self._json("api/2.0/mlflow/model-versions/get-download-uri", name=name, version=version)["artifact_uri"]
            if not uri.startswith("mlflow-artifacts:/"):
                raise ModelError(f"MLflow {name}/{version}: artifacts at {uri!r}; only the server's artifact proxy "
                                 f"(mlflow-artifacts:/) is supported")
            root = uri[len("mlflow-artifacts:/"):].strip("/")
            target.mkdir(parents=True, exist_ok=True)
            listing = self._json("api/2.0/mlflow-artifacts/artifacts", path=root).get("files") or []
            for f in listing:
                if not f.get("is_dir"):
                    quoted = urllib.parse.quote(f"{root}/{f['path']}")
                    (target / f["path"]).write_bytes(self._call(f"api/2.0/mlflow-artifacts/artifacts/{quoted}"))
            marker.touch()
        mlmodel = target / "MLmodel"
        flavors = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {}) if mlmodel.is_file() else {}
        onnx_file = (flavors.get("onnx") or {}).get("data")
        if not onnx_file:
            raise ModelError(f"MLflow {name}/{version} has no ONNX flavour (flavours: {sorted(flavors)})")
        return target / onnx_file

    def close(self) -> None:
        """Remove the downloaded artifacts (loaded models keep their sessions)."""
        shutil.rmtree(self.cache, ignore_errors=True)

    def verify(self, entry: ModelEntry) -> None:
        actual = sha256_file(entry.artifact_path)
        if actual != entry.sha256:
            raise ArtifactIntegrityError(f"MLflow {entry.name}/{entry.version}: {entry.artifact_path} failed its "
                                         f"integrity check: expected sha256 {entry.sha256}, actual {actual}")

    def load(self, entry: ModelEntry, *, device: str = "cpu", **options: Any) -> Model:
        """Verify, load and smoke-check ``entry`` (as the file registry does)."""
        self.verify(entry)
        return load_verified(entry, device=device, **options)
