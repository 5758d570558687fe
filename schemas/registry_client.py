"""Writer schemas by id from a Confluent-API schema registry (Confluent, Apicurio, Karapace, Redpanda).

A thin wrapper over confluent-kafka's ``SchemaRegistryClient``. Invariants:
- a schema id, once fetched, is cached for the life of the process (ids are immutable);
- an outage never turns into a per-record error: ``by_id`` for an uncached id waits,
  with backoff, until the registry answers (or ``stop`` is set: ``RegistryUnavailableError``);
- only an answer from the registry that the id does not exist (404) raises ``UnknownSchemaError``.
"""

from __future__ import annotations

import json
import logging
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Callable

from schemas.backoff import Backoff
from schemas.errors import ConfigError, RegistryUnavailableError, SchemaError, UnknownSchemaError
from schemas.registry import parse_schema

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegistrySettings:
    url: str
    basic_auth: tuple[str, str] | None = None     # (user, password)
    ssl_ca_location: str | None = None
    cache_ttl_s: float = 300.0                     # how long "latest version of a subject" is trusted
    timeout_s: float = 5.0


def _is_not_found(exc: BaseException) -> bool:
    return getattr(exc, "http_status_code", None) == 404


def _is_outage(exc: BaseException) -> bool:
    """No answer, or a server-side failure: worth waiting for (never the record's fault)."""
    status = getattr(exc, "http_status_code", None)
    if status is not None:
        return int(status) >= 500 or int(status) in (408, 429)
    return isinstance(exc, (OSError, TimeoutError)) or type(exc).__module__.startswith(("httpx", "httpcore"))


def _quiet_import() -> None:
    """Import the client without authlib's warning about its own httpx module (printed at every start).

    authlib installs an "always" filter for its warning class when imported, so ours goes in after it.
    """
    try:
        import authlib.deprecate  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import confluent_kafka.schema_registry  # noqa: F401


class RegistryClient:
    """Schemas by id (cached, outage-tolerant), latest-of-subject lookups and registration."""

    def __init__(self, settings: RegistrySettings, *, stop: threading.Event | None = None,
                 on_wait: Callable[[float], None] | None = None, max_backoff_s: float = 5.0) -> None:
        _quiet_import()
        from confluent_kafka.schema_registry import SchemaRegistryClient

        logging.getLogger("httpx").setLevel(logging.WARNING)     # one INFO line per HTTP request otherwise

        conf: dict[str, Any] = {"url": settings.url, "max.retries": 0, "timeout": settings.timeout_s,
                                "cache.latest.ttl.sec": settings.cache_ttl_s}
        if settings.basic_auth is not None:
            conf["basic.auth.user.info"] = ":".join(settings.basic_auth)
        if settings.ssl_ca_location:
            conf["ssl.ca.location"] = settings.ssl_ca_location
        try:
            self._client = SchemaRegistryClient(conf)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"schema_registry: {exc}") from exc
        self.url = settings.url
        self.stop = stop or threading.Event()
        self.on_wait = on_wait
        self.max_backoff_s = max_backoff_s
        self._by_id: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()

    # -- reads ---------------------------------------------------------------------------------
    def check(self) -> None:
        """Startup: the registry answers, else one clear error naming the URL."""
        try:
            self._client.get_subjects()
        except Exception as exc:
            raise ConfigError(f"schema registry {self.url} unreachable: {type(exc).__name__}: {exc}") from exc

    def by_id(self, schema_id: int) -> dict[str, Any]:
        """The parsed writer schema of ``schema_id``; waits out an outage (see the module doc)."""
        cached = self._by_id.get(schema_id)
        if cached is not None:
            return cached
        text = self._retrying(lambda: self._client.get_schema(schema_id).schema_str, f"schema id {schema_id}",
                              not_found=lambda: UnknownSchemaError(f"unknown schema id {schema_id} "
                                                                   f"(registry {self.url} answered 404)"))
        parsed = parse_schema(json.loads(text))
        with self._lock:
            self._by_id[schema_id] = parsed
        return parsed

    def find(self, schema: dict[str, Any]) -> int | None:
        """JSON input has no writer ids; nothing to find."""
        return None

    def subject_schema(self, subject: str, version: int | None = None) -> tuple[int, dict[str, Any]]:
        """(id, parsed schema) of ``subject`` at ``version`` (None: latest)."""
        def get() -> Any:
            if version is None:
                return self._client.get_latest_version(subject)
            return self._client.get_version(subject, version)

        reg = self._retrying(get, f"subject {subject!r}", not_found=lambda: ConfigError(
            f"schema registry {self.url}: no subject {subject!r}" + ("" if version is None else f" version {version}")))
        return int(reg.schema_id), parse_schema(json.loads(reg.schema.schema_str))

    # -- writes --------------------------------------------------------------------------------
    def register(self, subject: str, schema: dict[str, Any]) -> int:
        """Register ``schema`` under ``subject``; a refusal (incompatible) is a ConfigError naming both."""
        from confluent_kafka.schema_registry import Schema
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            return int(self._client.register_schema(subject, Schema(json.dumps(schema), "AVRO")))
        except SchemaRegistryError as exc:
            if _is_outage(exc):
                raise ConfigError(f"schema registry {self.url} unreachable registering {subject!r}: {exc}") from exc
            raise ConfigError(f"schema registry {self.url} refused the output schema for subject {subject!r} "
                              f"(HTTP {exc.http_status_code}): {exc.error_message}") from exc
        except Exception as exc:
            raise ConfigError(f"schema registry {self.url} unreachable registering {subject!r}: "
                              f"{type(exc).__name__}: {exc}") from exc

    # -- the wait ------------------------------------------------------------------------------
    def _retrying(self, call: Callable[[], Any], what: str, *, not_found: Callable[[], Exception]) -> Any:
        backoff = Backoff(self.stop, max_s=self.max_backoff_s, on_wait=self.on_wait)
        while True:
            try:
                result = call()
            except Exception as exc:
                if _is_not_found(exc):
                    raise not_found() from exc
                if not _is_outage(exc):
                    raise SchemaError(f"schema registry {self.url}, {what}: {type(exc).__name__}: {exc}") from exc
                if backoff.failed():
                    log.warning("schema registry %s unreachable fetching %s; waiting (%s)", self.url, what, exc)
                if not backoff.pause():
                    raise RegistryUnavailableError(f"stopped while waiting for schema registry {self.url} ({what})"
                                                   ) from exc
                continue
            if backoff.started is not None:
                log.warning("schema registry %s answers again after %.1fs", self.url, backoff.waited_s())
            return result
