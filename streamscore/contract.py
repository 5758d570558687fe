"""A pipeline's data contract, resolved at startup: the schema registry client, the reader
schema, the field mapping (id, time, carried fields) and the registered output schema."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.columnar import decimal_paths, leaf_types
from schemas.errors import ConfigError, SchemaError
from schemas.prediction import OutputSpec
from schemas.output import carried_fields, carried_name, output_schema, output_subject, prediction_fields
from schemas.registry import SchemaRegistry, parse_schema
from schemas.registry_client import RegistryClient
from streamscore.config import PipelineConfig, PipelineFile

_TIME_SCALE = {"timestamp-millis": 1, "local-timestamp-millis": 1, "timestamp-micros": 1000,
               "local-timestamp-micros": 1000, "timestamp-nanos": 1_000_000, "local-timestamp-nanos": 1_000_000}


def registry_client(cfg: PipelineFile, p: PipelineConfig, metrics: Any,
                    stop: threading.Event | None) -> RegistryClient | None:
    """The pipeline's registry client (checked reachable), or None without ``schema_registry``."""
    if cfg.schema_registry is None:
        return None
    client = RegistryClient(cfg.schema_registry.settings(), stop=stop,
                            on_wait=lambda s: metrics.registry_wait(p.name, s))
    client.check()
    return client


def reader_schema(p: PipelineConfig, bundled: SchemaRegistry, client: RegistryClient | None) -> dict[str, Any]:
    """``input.schema``: ``registry:<subject>[:<version>]``, a path to an .avsc file, or a bundled name."""
    where = f"pipelines[{p.name}].input.schema"
    name = p.input.schema_name
    try:
        if name.startswith("registry:"):
            if client is None:
                raise ConfigError(f"{where}: {name!r} needs a schema_registry section")
            subject, _, version = name[len("registry:"):].partition(":")
            if not subject or (version and not version.isdigit()):
                raise ConfigError(f"{where}: expected registry:<subject> or registry:<subject>:<version>, got {name!r}")
            return client.subject_schema(subject, int(version) if version else None)[1]
        if name.endswith(".avsc") or "/" in name:
            path = Path(name)
            if not path.is_file():
                raise ConfigError(f"{where}: schema file {path} does not exist")
            try:
                return parse_schema(json.loads(path.read_text()))
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{where}: {path} is not valid JSON: {exc}") from exc
        return bundled.schema(name)
    except ConfigError:
        raise
    except SchemaError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


@dataclass(frozen=True)
class FieldMapping:
    leaves: dict[str, Any]                      # dotted path -> Avro type of every input column
    decimals: list[str]
    time_field: str | None
    time_scale: int
    carry: dict[str, str] = field(default_factory=dict)   # output field -> input path

    @property
    def float_fields(self) -> set[str]:
        """Columns that decode to floats (float, double, decimal): the ones a finite check applies to."""
        out = set(self.decimals)
        for path, t in self.leaves.items():
            t = _base(t)
            if (t.get("type") if isinstance(t, dict) else t) in ("float", "double"):
                out.add(path)
        return out


def _base(t: Any) -> Any:
    if isinstance(t, list) and len(t) == 2 and "null" in t:
        t = t[1 - t.index("null")]
    return t


def field_mapping(p: PipelineConfig, reader: dict[str, Any]) -> FieldMapping:
    where = f"pipelines[{p.name}].input"
    leaves = leaf_types(reader)
    id_field = p.input.id_field
    if id_field is not None:
        t = _base(leaves.get(id_field))
        if t is None:
            raise ConfigError(f"{where}.id_field: {id_field!r} is not a field of the input schema "
                              f"(null: ids from <topic>:<partition>:<offset>); fields: {sorted(leaves)}")
        if (t.get("type") if isinstance(t, dict) else t) != "string" or isinstance(leaves[id_field], list):
            raise ConfigError(f"{where}.id_field: {id_field!r} must be a non-null string field")
    time_field = p.input.time_field
    scale = 1
    if time_field is not None:
        t = _base(leaves.get(time_field))
        if t is None:
            if "time_field" in p.input.model_fields_set:
                raise ConfigError(f"{where}.time_field: {time_field!r} is not a field of the input schema "
                                  f"(null: the Kafka timestamp); fields: {sorted(leaves)}")
            time_field = None     # the default name is absent: predictions carry the scoring time
        else:
            kind = t.get("type") if isinstance(t, dict) else t
            if kind not in ("long", "int"):
                raise ConfigError(f"{where}.time_field: {time_field!r} must be a long (epoch ms or a timestamp type)")
            scale = _TIME_SCALE.get(t.get("logicalType", "") if isinstance(t, dict) else "", 1)
    carry = {carried_name(path): path for path in p.output.carry}
    return FieldMapping(leaves, decimal_paths(reader), time_field, scale, carry)


# output.include_features: model input column -> the value the model was given
FEATURES_FIELD: dict[str, Any] = {"name": "features", "type": {"type": "map", "values": "double"}}


def register_output(p: PipelineConfig, mapping: FieldMapping, bundled: SchemaRegistry, client: RegistryClient | None,
                    shadow_topic: str | None, outputs: OutputSpec | None = None) -> tuple[dict[str, Any], int]:
    """The output schema (the prediction fields of the model's ``outputs`` + carried fields) and
    its id: registered under the output subject(s) when a registry is configured, else in the
    in-process table."""
    features = [FEATURES_FIELD] if p.output.include_features else []
    schema = output_schema([*prediction_fields(outputs), *features],
                           carried_fields(p.output.carry, mapping.leaves, mapping.decimals))
    if client is None:
        return schema, bundled.register(schema)
    topics = [p.output.topic] + ([shadow_topic] if shadow_topic and p.output.subject_strategy == "topic" else [])
    ids = {client.register(output_subject(t, p.output.subject_strategy, schema), schema) for t in topics}
    return schema, min(ids)
