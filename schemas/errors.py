"""The exception tree shared by every streamscore package.

It lives in ``schemas`` because that is the leaf package every other package may
import (the data contract); nothing here imports anything of ours. Three subclasses live
beside the code that raises them (marked with their module); the tree is complete here.

    StreamscoreError
    ├── ConfigError              bad pipeline file, bad CLI option, bad environment
    │   └── HookContractError    a pre/post hook returned the wrong shape (stops the pipeline)
    ├── ServiceError             a local dev service (Kafka, Redis, registry) could not start
    ├── StoppedWhileWaiting      a stop ended a batch's wait for a service (a clean stop)
    │   ├── RegistryUnavailableError  ... for an unreachable schema registry
    │   └── LookupStoppedError        ... for a lookup's store (also a LookupUnavailableError)
    ├── LookupUnavailableError   a feature lookup's store did not answer within max_wait_s
    ├── SchemaError              a schema cannot be parsed or compiled
    │   ├── ResolutionError      writer and reader schemas do not resolve (the codec)
    │   └── DecodeError          one record cannot be decoded (keeps the raw bytes)
    │       ├── WireFormatError      bad magic byte, short header, empty value
    │       ├── UnknownSchemaError   writer schema id not known to the resolver
    │       └── RecordValidationError  decoded, but violates the input spec
    ├── ModelError
    │   ├── ArtifactIntegrityError   artifact sha256 does not match the registry
    │   ├── ModelLoadError           artifact cannot be loaded / smoke check fails
    │   ├── PredictError             the model raised on a batch
    │   │   └── HookError            a pre/post hook raised (``reason``: features / post_hook)
    │   ├── InputError               a batch does not match the input spec (models.base)
    │   └── UnknownModelError        no registry entry for name / version / stage
    │                                (models.registry; also a LookupError)
    └── DeliveryError            an output could not be delivered / committed
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError


class StreamscoreError(Exception):
    """Root of every error streamscore raises on purpose."""


class ConfigError(StreamscoreError):
    """Invalid configuration; the message names the offending key."""


class HookContractError(ConfigError):
    """A user hook returned something its contract does not allow; no row is to blame."""


class ServiceError(StreamscoreError):
    """A local development service could not be started or reached."""


class StoppedWhileWaiting(StreamscoreError):
    """A stop ended a batch's wait for a service that did not answer. The batch is not
    committed (its offsets never advance; the next owner replays it): the scorer stops
    cleanly, exit 0, as for any other stop."""


class RegistryUnavailableError(StoppedWhileWaiting):
    """The scorer was stopped while a batch waited for the schema registry to answer."""


class LookupUnavailableError(StreamscoreError):
    """A batch's feature lookup got no answer from its store within ``max_wait_s``."""


class LookupStoppedError(LookupUnavailableError, StoppedWhileWaiting):
    """The scorer was stopped while a batch waited for a lookup's store to answer."""


class SchemaError(StreamscoreError):
    """A schema is invalid or uses a feature we cannot handle."""


class DecodeError(SchemaError):
    """A single record could not be decoded.

    ``raw`` keeps the undecoded value so a dead-letter sink can republish it unchanged.
    ``reason`` is a short stable token used as a metric label and DLQ header.
    """

    reason = "decode"

    def __init__(self, message: str, *, raw: bytes | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.raw = raw
        if reason is not None:
            self.reason = reason


class WireFormatError(DecodeError):
    reason = "wire_format"


class UnknownSchemaError(DecodeError):
    reason = "unknown_schema"


class RecordValidationError(DecodeError):
    reason = "validation"


class ModelError(StreamscoreError):
    """Anything that goes wrong with a model."""


class ArtifactIntegrityError(ModelError):
    """The artifact on disk does not match the sha256 recorded in the registry."""


class ModelLoadError(ModelError):
    """The artifact could not be loaded or failed its smoke check."""


class PredictError(ModelError):
    """The model raised while scoring a batch."""


class DeliveryError(StreamscoreError):
    """An output could not be delivered, or offsets could not be committed.

    ``kafka_error`` keeps the client's error (a ``confluent_kafka.KafkaError``) when there
    is one, so the commit protocol can tell a fenced or fatally failed producer apart.
    """

    def __init__(self, message: str, *, kafka_error: object = None) -> None:
        super().__init__(message)
        self.kafka_error: Any = kafka_error


class HookError(PredictError):
    """A user hook raised on some rows; ``reason`` is the dead-letter reason for them."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def validation_problems(exc: ValidationError, root: type[BaseModel]) -> list[str]:
    """One ``path: problem`` line per error of validating ``root``; an unknown key names the valid keys there.

    Shared by every config file we read (pipeline, monitor), so their errors look alike.
    """
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in err["loc"]).replace(".[", "[")
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            parent = _model_at(root, err["loc"][:-1])
            valid = ", ".join(sorted(f.alias or n for n, f in parent.model_fields.items())) if parent else "?"
            msg = f"unknown key (valid keys here: {valid})"
        lines.append(f"{loc or '<root>'}: {msg}")
    return lines


def _model_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    from pydantic import BaseModel

    model = root
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) or next(
            (f for f in model.model_fields.values() if f.alias == part), None)
        if field is None:
            return None
        ann = field.annotation
        inner = getattr(ann, "__args__", (ann,))
        nxt = next((a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if nxt is None:
            return None
        model = nxt
    return model


def yaml_problem(exc: Exception) -> str:
    """A YAML parse error in one line: ``line L, column C: problem``."""
    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
    if mark is not None and problem:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return " ".join(str(exc).split())
