"""A local schema-id resolver standing in for a Confluent schema registry.

The Confluent wire format carries a 4-byte schema id in front of every value; we
resolve those ids from an in-process table instead of an HTTP registry.

Invariants: an id maps to exactly one canonical schema, and registering a schema
whose Parsing Canonical Form is already known returns the existing id.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import fastavro
from fastavro.schema import to_parsing_canonical_form

from schemas.errors import SchemaError, UnknownSchemaError

_PACKAGE = "schemas"
_IDS_FILE = "ids.json"


def _read_text(filename: str) -> str:
    try:
        return resources.files(_PACKAGE).joinpath(filename).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SchemaError(f"cannot read bundled schema file {filename!r}") from exc


def parse_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Parse (validate and expand names of) a schema dict with fastavro."""
    try:
        parsed = fastavro.parse_schema(schema, _write_hint=False)
    except Exception as exc:  # fastavro raises several unrelated types
        raise SchemaError(f"invalid Avro schema: {exc}") from exc
    if not isinstance(parsed, dict):
        raise SchemaError("a registered schema must be a record (a JSON object)")
    return parsed


def load_schema(name: str) -> dict[str, Any]:
    """Load the bundled ``schemas/<name>.avsc`` and parse it with fastavro."""
    text = _read_text(f"{name}.avsc")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchemaError(f"{name}.avsc is not valid JSON") from exc
    return parse_schema(raw)


def bundled_ids() -> dict[str, int]:
    """The fixed ids of the bundled schemas (``schemas/ids.json``)."""
    try:
        ids = json.loads(_read_text(_IDS_FILE))
    except json.JSONDecodeError as exc:
        raise SchemaError(f"{_IDS_FILE} is not valid JSON") from exc
    return {str(k): int(v) for k, v in ids.items()}


class SchemaRegistry:
    """In-process table of schema id <-> parsed schema, with optional names."""

    def __init__(self) -> None:
        self._by_id: dict[int, dict[str, Any]] = {}
        self._by_canonical: dict[str, int] = {}
        self._by_name: dict[str, int] = {}

    @classmethod
    def default(cls) -> SchemaRegistry:
        """A registry holding the bundled schemas under their fixed ids."""
        registry = cls()
        for name, schema_id in sorted(bundled_ids().items(), key=lambda kv: kv[1]):
            registry._add(schema_id, load_schema(name), name)
        return registry

    def _add(self, schema_id: int, parsed: dict[str, Any], name: str | None) -> None:
        if schema_id in self._by_id:
            raise SchemaError(f"schema id {schema_id} registered twice")
        canonical = to_parsing_canonical_form(parsed)
        self._by_id[schema_id] = parsed
        self._by_canonical.setdefault(canonical, schema_id)
        if name is not None:
            self._by_name[name] = schema_id

    def register(self, schema: dict[str, Any], name: str | None = None) -> int:
        """Register ``schema`` and return its id; the same canonical schema keeps its id."""
        parsed = parse_schema(schema)
        canonical = to_parsing_canonical_form(parsed)
        schema_id = self._by_canonical.get(canonical)
        if schema_id is None:
            schema_id = max(self._by_id, default=0) + 1
            self._add(schema_id, parsed, None)
        if name is not None:
            self._by_name[name] = schema_id
        return schema_id

    def find(self, schema: dict[str, Any]) -> int | None:
        """The id of ``schema`` if it is registered, without registering it."""
        return self._by_canonical.get(to_parsing_canonical_form(parse_schema(schema)))

    def by_id(self, schema_id: int) -> dict[str, Any]:
        """The parsed schema registered under ``schema_id``."""
        try:
            return self._by_id[schema_id]
        except KeyError as exc:
            raise UnknownSchemaError(f"unknown schema id {schema_id}") from exc

    def id_for(self, name: str) -> int:
        """The id registered under ``name``."""
        try:
            return self._by_name[name]
        except KeyError as exc:
            raise SchemaError(f"no schema registered under the name {name!r}") from exc

    def schema(self, name: str) -> dict[str, Any]:
        """The parsed schema registered under ``name``."""
        return self._by_id[self.id_for(name)]

    def __contains__(self, schema_id: object) -> bool:
        return schema_id in self._by_id
