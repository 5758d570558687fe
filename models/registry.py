"""A file-based model registry: a plain directory a team can keep in object storage or git-lfs.

Layout::

    <root>/<name>/stages.json               current stage of every version + promotion log
    <root>/<name>/<version>/model.json      immutable metadata (everything except the stage)
    <root>/<name>/<version>/model.onnx      the artifact (model.pt for TorchScript,
                                            model.pt2 for torch.export)

Invariants:
- A version directory is published whole: it is built in ``<name>/.tmp-*`` and renamed
  into place, so a reader never sees a half-written version. ``model.json`` and the
  artifact never change after that.
- The stage lives only in ``stages.json`` so that a promotion (new production, old
  production archived) is one atomic ``os.replace``. At most one version per name is
  in ``production``. Mutations of a name hold ``<name>/.lock`` (``fcntl.flock``).
- ``load`` hashes the artifact and compares it with the recorded sha256 before any
  byte of it reaches a deserializer.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np

from models.base import InputSpec, Model, smoke_check
from schemas.errors import ArtifactIntegrityError, ConfigError, ModelError, ModelLoadError, PredictError
from schemas.prediction import OutputSpec

STAGES: tuple[str, ...] = ("staging", "production", "archived")
FORMATS: dict[str, str] = {"onnx": "model.onnx", "torchscript": "model.pt", "torch_export": "model.pt2"}
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class UnknownModelError(ModelError, LookupError):
    """No registry entry matches the requested name / version / stage."""


@dataclass(frozen=True)
class ModelEntry:
    name: str
    version: str
    stage: str
    format: str
    artifact_path: Path
    sha256: str
    input_spec: InputSpec
    output_spec: dict[str, Any]
    reference_profile: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    decision_threshold: float = 0.5
    hooks: dict[str, str] = field(default_factory=dict)    # "pre" / "post": "package.module:function"

    @property
    def outputs(self) -> OutputSpec:
        """The output spec's heads (an entry without heads has one score head)."""
        return OutputSpec.from_dict(self.output_spec)


Entries = list[ModelEntry]  # (``ModelRegistry.list`` shadows the builtin inside the class)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def version_key(version: str) -> tuple[int, int, str]:
    """Numeric versions sort numerically and after nothing else; others sort as text."""
    return (1, int(version), "") if version.isdigit() else (0, 0, version)


def _atomic_write_json(path: Path, data: Mapping[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; registry files are meant to be shared
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, sort_keys=True, allow_nan=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _check_choice(kind: str, value: str | None, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"unknown model {kind} {value!r}; valid: {list(valid)}")


def _check_safe(kind: str, value: str) -> None:
    if not _SAFE.match(value):
        raise ConfigError(f"model {kind} {value!r} must match {_SAFE.pattern} (it becomes a directory name)")


SPEC_FILE_KEYS = ("input_spec", "features", "output_spec", "hooks", "reference_profile", "metrics",
                  "decision_threshold")
SPEC_FILE_HELP = ('JSON or YAML file: {"input_spec": {"features": [{"name": "amount", "dtype": "float32"}, ...], '
                  '"input_name": "features"}, "output_spec": {"heads": [...]}, "hooks": {"pre": "pkg.mod:fn"}, '
                  '"reference_profile": {...}, "decision_threshold": 0.5}; "features": [...] may stand for '
                  'input_spec; only the input spec is required (an ONNX graph gives the output spec); '
                  'another version\'s model.json works')
_ENTRY_KEYS = ("name", "version", "format", "artifact", "sha256", "created_at", "stage")


@dataclass(frozen=True)
class RegistrationSpec:
    """What a new version needs besides its artifact (``models register --input-spec FILE``)."""

    input_spec: InputSpec
    output_spec: dict[str, Any] = field(default_factory=dict)
    reference_profile: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    decision_threshold: float | None = None
    hooks: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_entry(cls, entry: ModelEntry) -> RegistrationSpec:
        return cls(entry.input_spec, dict(entry.output_spec), dict(entry.reference_profile), {},
                   entry.decision_threshold, dict(entry.hooks))

    @staticmethod
    def columns_only(inferred: tuple[dict[str, Any], dict[str, Any]]) -> bool:
        """Whether an inferred input spec is usable as is: every graph input one named column."""
        feats = inferred[0]["features"]
        return bool(feats) and all(f["name"] == f.get("input", inferred[0]["input_name"]) for f in feats)

    @classmethod
    def from_inferred(cls, inferred: tuple[dict[str, Any], dict[str, Any]]) -> RegistrationSpec:
        return cls(InputSpec.from_dict(inferred[0]), dict(inferred[1]))

    @classmethod
    def read(cls, path: Path, *, inferred: tuple[dict[str, Any], dict[str, Any]] | None = None) -> RegistrationSpec:
        """Parse a spec file laid out as ``SPEC_FILE_HELP`` says (the layout of ``model.json``);
        ``inferred`` (from the ONNX graph) supplies an output spec the file does not give."""
        import yaml

        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise ConfigError(f"input spec file {path}: {' '.join(str(exc).split())}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"input spec file {path}: expected a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(SPEC_FILE_KEYS) - set(_ENTRY_KEYS))
        if unknown or not ({"input_spec", "features"} & set(data)):
            problem = f"unknown keys {unknown}" if unknown else "no 'input_spec'"
            raise ConfigError(f"input spec file {path}: {problem} (valid keys: {', '.join(SPEC_FILE_KEYS)})")
        threshold = data.get("decision_threshold")
        raw_input = data.get("input_spec") or {"features": data["features"]}
        output = data.get("output_spec") or (inferred[1] if inferred is not None else {})
        try:
            return cls(InputSpec.from_dict(raw_input), dict(output),
                       dict(data.get("reference_profile") or {}), dict(data.get("metrics") or {}),
                       None if threshold is None else float(threshold),
                       {str(k): str(v) for k, v in (data.get("hooks") or {}).items()})
        except (TypeError, ValueError, ModelError) as exc:
            raise ConfigError(f"input spec file {path}: {exc}") from exc


class ModelSource(Protocol):
    """What serving reads from a model registry: this file registry, or MLflow's
    (models.mlflow_registry.MlflowRegistry)."""

    def get(self, name: str, version: str | None = None, *, stage: str | None = "production") -> ModelEntry: ...
    def load(self, entry: ModelEntry, *, device: str = "cpu", **options: Any) -> Model: ...


class ModelRegistry:
    """Register, look up, promote, roll back and load models under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @classmethod
    def existing(cls, root: Path) -> ModelRegistry:
        """The registry at ``root``, which must already be a directory (a mistyped path would otherwise
        read as a registry with no models)."""
        if not Path(root).is_dir():
            raise ConfigError(f"registry: directory {root} does not exist")
        return cls(root)

    # --- reading ---------------------------------------------------------------------

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def list(self, name: str | None = None) -> Entries:
        """All complete entries, by name then version (oldest first)."""
        names = self.names() if name is None else [name]
        return [entry for n in names for entry in self._entries(n)]

    def get(self, name: str, version: str | None = None, *, stage: str | None = "production") -> ModelEntry:
        """``version`` wins if given (``"latest"`` = highest); else the highest version in ``stage``;
        with neither, the highest version."""
        entries = self._entries(name)
        if not entries:
            raise UnknownModelError(f"no model named {name!r} in registry {self.root}; known: {self.names()}")
        versions = [e.version for e in entries]
        if version == "latest" or (version is None and stage is None):
            return entries[-1]
        if version is not None:
            for e in entries:
                if e.version == version:
                    return e
            raise UnknownModelError(f"model {name!r} has no version {version!r}; versions: {versions}")
        _check_choice("stage", stage, STAGES)
        in_stage = [e for e in entries if e.stage == stage]
        if not in_stage:
            have = {e.version: e.stage for e in entries}
            raise UnknownModelError(f"model {name!r} has no version in stage {stage!r}; stages: {have}")
        return in_stage[-1]

    def _entries(self, name: str) -> Entries:
        _check_safe("name", name)
        base = self.root / name
        if not base.is_dir():
            return []
        stages = self._read_stages(name)["stages"]
        out = [self._read_entry(d, stages.get(d.name, "staging"))
               for d in base.iterdir() if not d.name.startswith(".") and (d / "model.json").is_file()]
        return sorted(out, key=lambda e: version_key(e.version))

    def _read_entry(self, vdir: Path, stage: str) -> ModelEntry:
        meta_path = vdir / "model.json"
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            return ModelEntry(
                name=meta["name"],
                version=meta["version"],
                stage=stage,
                format=meta["format"],
                artifact_path=vdir / meta["artifact"],
                sha256=meta["sha256"],
                input_spec=InputSpec.from_dict(meta["input_spec"]),
                output_spec=dict(meta["output_spec"]),
                reference_profile=dict(meta.get("reference_profile") or {}),
                metrics=dict(meta.get("metrics") or {}),
                created_at=meta.get("created_at", ""),
                decision_threshold=float(meta.get("decision_threshold", 0.5)),
                hooks={str(k): str(v) for k, v in (meta.get("hooks") or {}).items()},
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"unreadable registry metadata {meta_path}: {exc!r}") from exc

    def _read_stages(self, name: str) -> dict[str, Any]:
        path = self.root / name / "stages.json"
        if not path.is_file():
            return {"stages": {}, "events": []}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return {"stages": dict(data["stages"]), "events": list(data["events"])}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"unreadable stage file {path}: {exc!r}") from exc

    # --- writing ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        base = self.root / name
        base.mkdir(parents=True, exist_ok=True)
        with open(base / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def register(
        self,
        name: str,
        artifact: Path,
        *,
        format: str,
        input_spec: InputSpec,
        output_spec: Mapping[str, Any],
        reference_profile: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        stage: str = "staging",
        version: str | None = None,
        decision_threshold: float = 0.5,
        hooks: Mapping[str, str] | None = None,
    ) -> ModelEntry:
        """Copy ``artifact`` in as a new version (next integer if ``version`` is None)."""
        _check_safe("name", name)
        OutputSpec.from_dict(output_spec)          # raises on a bad spec before anything is written
        bad_hooks = sorted(set(hooks or {}) - {"pre", "post"})
        if bad_hooks:
            raise ConfigError(f"hooks: unknown key(s) {bad_hooks}; valid: ['post', 'pre']")
        _check_choice("format", format, tuple(FORMATS))
        _check_choice("stage", stage, STAGES)
        if version is not None:
            _check_safe("version", version)
        artifact = Path(artifact)
        if not artifact.is_file():
            raise ModelError(f"artifact to register does not exist: {artifact}")
        base = self.root / name
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=base, prefix=".tmp-"))
        try:
            os.chmod(tmp, 0o755)  # mkdtemp makes 0700; this directory becomes the version directory
            shutil.copyfile(artifact, tmp / FORMATS[format])
            meta = {
                "name": name,
                "format": format,
                "artifact": FORMATS[format],
                "sha256": sha256_file(tmp / FORMATS[format]),
                "input_spec": input_spec.to_dict(),
                "output_spec": dict(output_spec),
                "reference_profile": dict(reference_profile or {}),
                "metrics": dict(metrics or {}),
                "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "decision_threshold": float(decision_threshold),
            }
            if hooks:
                meta["hooks"] = dict(hooks)
            with self._locked(name):
                state = self._read_stages(name)
                if version is None:
                    taken = [d.name for d in base.iterdir() if d.name.isdigit()]
                    version = str(max((int(v) for v in taken), default=0) + 1)
                final = base / version
                if final.exists():
                    raise ModelError(f"model {name!r} version {version!r} already exists at {final}")
                meta["version"] = version
                _atomic_write_json(tmp / "model.json", meta)
                os.rename(tmp, final)
                self._set_stage(name, state, version, stage)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return self.get(name, version)

    def promote(self, name: str, version: str, stage: str = "production") -> ModelEntry:
        """Move ``version`` to ``stage``; a previous production version becomes archived."""
        _check_choice("stage", stage, STAGES)
        self.get(name, version)  # raises with the valid versions named
        with self._locked(name):
            self._set_stage(name, self._read_stages(name), version, stage)
        return self.get(name, version)

    def rollback(self, name: str) -> ModelEntry:
        """Re-promote the most recently archived version that was once in production.

        The version it replaces is archived, so (like ``kubectl rollout undo``) a second
        rollback returns to it; promote an explicit version to go further back.
        """
        self.get(name, stage=None)
        with self._locked(name):
            state = self._read_stages(name)
            stages = state["stages"]
            current = [v for v, s in stages.items() if s == "production"]
            for ev in reversed(state["events"]):
                v = ev["version"]
                if (ev["from"], ev["to"]) == ("production", "archived") and v not in current \
                        and stages.get(v) == "archived":
                    self._set_stage(name, state, v, "production")
                    break
            else:
                raise UnknownModelError(
                    f"model {name!r} has no archived former production version to roll back to; stages: {stages}")
        return self.get(name, v)

    def _set_stage(self, name: str, state: dict[str, Any], version: str, stage: str) -> None:
        """Caller holds the lock. One atomic write covers the whole transition."""
        stages: dict[str, str] = state["stages"]
        events: list[dict[str, Any]] = state["events"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

        def move(v: str, to: str) -> None:
            events.append({"seq": len(events), "version": v, "from": stages.get(v), "to": to, "at": now})
            stages[v] = to

        if stage == "production":
            for v, s in list(stages.items()):
                if s == "production" and v != version:
                    move(v, "archived")
        if stages.get(version) != stage:
            move(version, stage)
        _atomic_write_json(self.root / name / "stages.json", {"stages": stages, "events": events})

    # --- loading ---------------------------------------------------------------------

    def verify(self, entry: ModelEntry) -> None:
        """Raise ``ArtifactIntegrityError`` unless the artifact's sha256 matches the registry."""
        try:
            actual = sha256_file(entry.artifact_path)
        except OSError as exc:
            raise ArtifactIntegrityError(
                f"artifact {entry.artifact_path} of {entry.name}:{entry.version} cannot be read "
                f"(expected sha256 {entry.sha256}): {exc}") from exc
        if actual != entry.sha256:
            raise ArtifactIntegrityError(
                f"artifact {entry.artifact_path} of {entry.name}:{entry.version} failed its integrity check: "
                f"expected sha256 {entry.sha256}, actual {actual}")

    @staticmethod
    def check_artifact(artifact: Path, *, format: str, input_spec: InputSpec,
                       output_spec: Mapping[str, Any] | None = None) -> None:
        """Raise ``ModelLoadError`` unless ``artifact`` loads as ``format`` and scores ``input_spec``'s
        features into the outputs ``output_spec`` reads.

        What ``load`` would do at serve time, done before the artifact is registered.
        """
        _check_choice("format", format, tuple(FORMATS))
        entry = ModelEntry(name="candidate", version="new", stage="staging", format=format, artifact_path=Path(artifact),
                           sha256="", input_spec=input_spec, output_spec=dict(output_spec or {}))
        try:
            entry.outputs
            load_verified(entry, device="cpu").close()
        except ModelError as exc:
            raise ModelLoadError(f"refusing to register {artifact} as --format {format} "
                                 f"({len(input_spec)} input features): {exc}") from exc

    def load(self, entry: ModelEntry, *, device: str = "cpu", **options: Any) -> Model:
        """Verify, load and smoke-check ``entry``; ``options`` go to the backend constructor."""
        self.verify(entry)
        return load_verified(entry, device=device, **options)


def load_verified(entry: ModelEntry, *, device: str = "cpu", **options: Any) -> Model:
    """Load an entry whose artifact was verified and smoke-check it on two rows: every output
    a head reads must have one row per input row (models.base.smoke_check for single-output models)."""
    label = f"{entry.name}:{entry.version}"
    model = _backend(entry, device=device, **options)
    try:
        model.load()
    except BaseException:
        model.close()
        raise
    if not hasattr(model, "run"):
        smoke_check(model, label)
    else:
        run = model.run
        smoke_check(model, label, lambda: _check_rows(label, run(entry.input_spec.probe(2)), entry.outputs, 2))
    return model


def _check_rows(label: str, outputs: Mapping[str, Any], spec: OutputSpec, n: int) -> None:
    """Every output a head reads straight from the model has one row per input row (outputs
    a post hook adds are checked when it runs)."""
    names = [h.output for h in spec.heads if h.output is None or h.output in outputs]
    for name in names:
        key = name if name is not None else next(iter(outputs), None)
        if key is None:
            raise PredictError(f"{label}: the model returned no outputs")
        rows = np.shape(outputs[key])[:1]
        if rows != (n,):
            raise PredictError(f"{label}: output {key!r} has shape {np.shape(outputs[key])} for {n} input rows")


def _backend(entry: ModelEntry, *, device: Any, **options: Any) -> Model:
    if entry.format == "onnx":
        from models.onnx_backend import OnnxModel

        return OnnxModel(entry.artifact_path, name=entry.name, version=entry.version,
                         input_spec=entry.input_spec, device=device, **options)
    if entry.format == "torchscript" or entry.format == "torch_export":
        from models.torch_backend import TorchFormat, TorchModel

        return TorchModel(entry.artifact_path, name=entry.name, version=entry.version,
                          input_spec=entry.input_spec, format=cast(TorchFormat, entry.format),
                          device=device, **options)
    raise ConfigError(f"entry {entry.name}:{entry.version} has unknown format {entry.format!r}; "
                      f"valid: {list(FORMATS)}")
