"""The exception tree shared by every streamscore package.

It lives in ``schemas`` because that is the leaf package every other package may
import (the data contract); nothing here imports anything of ours. Three subclasses live
beside the code that raises them (marked with their module); the tree is complete here.

    StreamscoreError
    ├── ConfigError              bad pipeline file, bad CLI option, bad environment
    ├── ServiceError             a local dev service (Kafka, Redis) could not start
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
    │   ├── InputError               a batch does not match the input spec (models.base)
    │   └── UnknownModelError        no registry entry for name / version / stage
    │                                (models.registry; also a LookupError)
    └── DeliveryError            an output could not be delivered / committed
"""

from __future__ import annotations

from typing import Any


class StreamscoreError(Exception):
    """Root of every error streamscore raises on purpose."""


class ConfigError(StreamscoreError):
    """Invalid configuration; the message names the offending key."""


class ServiceError(StreamscoreError):
    """A local development service could not be started or reached."""


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
