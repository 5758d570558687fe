"""Hot swap: follow a model's registry stage and hand freshly loaded versions to a swap callback.

``RegistryWatcher`` polls ``<registry>/<name>/stages.json`` with one ``os.stat`` per
interval. When the file changes and the stage's version differs from the one serving,
it loads that version in its own thread through ``ModelRegistry.load`` (sha256 check +
smoke check + the optional ``validate`` hook) and only then calls ``on_swap``. A version
that fails to load is never swapped in: the old model keeps serving, the failure is
logged and ``on_error`` fires; the watcher retries it only when ``stages.json`` changes
again or after ``retry_after_s``.

Invariant: ``on_swap`` is called from the watcher thread, once per successful load, in
stage-change order; it must not block for long (``ModelSlot.swap`` is a pointer swap).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.base import Model
from models.registry import ModelEntry, ModelSource

log = logging.getLogger(__name__)

SwapCallback = Callable[[ModelEntry, Model], Any]
ErrorCallback = Callable[[str, "str | None", BaseException], None]
Validator = Callable[[ModelEntry, Model], None]
Loader = Callable[[ModelSource, ModelEntry], Model]


@dataclass(frozen=True)
class _Seen:
    """What identifies one state of stages.json (os.replace gives each write a new inode)."""

    ino: int
    mtime_ns: int
    size: int


class RegistryWatcher:
    """Follow ``name``'s ``stage`` in ``registry`` and swap newly staged versions in.

    ``on_swap(entry, model)`` receives the loaded, smoke-checked model. If it returns an
    object with ``close()`` (the model it replaced), the watcher closes that object
    ``retire_after_s`` seconds later, leaving time for a batch already holding it to finish.
    ``on_error(name, version_or_None, exc)`` fires when a staged version cannot be loaded
    or validated, or the stage has no version.

    Loading is ``registry.load(entry, **load_options)`` unless ``loader(registry, entry)``
    is given (e.g. ``models.device.DeviceModel.from_entry`` for a GPU device worker); a
    loader must verify the artifact and smoke-check the model as ``registry.load`` does.
    """

    def __init__(
        self,
        registry: ModelSource,
        name: str,
        *,
        on_swap: SwapCallback,
        on_error: ErrorCallback | None = None,
        stage: str = "production",
        current_version: str | None = None,
        interval_s: float = 0.5,
        retry_after_s: float = 60.0,
        retire_after_s: float = 5.0,
        validate: Validator | None = None,
        load_options: Mapping[str, Any] | None = None,
        loader: Loader | None = None,
    ) -> None:
        self.registry = registry
        self.name = name
        self.stage = stage
        self.interval_s = interval_s
        self.retry_after_s = retry_after_s
        self.retire_after_s = retire_after_s
        self._on_swap = on_swap
        self._on_error = on_error
        self._validate = validate
        self._load_options = dict(load_options or {})
        self._loader = loader
        self._current = current_version
        self._seen: object = None
        self._failed: dict[str, float] = {}          # version -> monotonic time of failure
        self._retiring: list[tuple[float, Any]] = []  # (close at, object)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()                # one check at a time (thread vs poll_once)
        self.swaps = 0
        self.errors = 0

    @property
    def current_version(self) -> str | None:
        """The version most recently swapped in (or given at construction)."""
        return self._current

    @property
    def stages_path(self) -> str:
        return os.fspath(Path(getattr(self.registry, "root", ".")) / self.name / "stages.json")

    # --- lifecycle ----------------------------------------------------------------------

    def load_initial(self) -> tuple[ModelEntry, Model]:
        """Load the stage's version synchronously (raises on failure); it becomes current."""
        with self._lock:
            self._seen = self._stat()
            entry = self.registry.get(self.name, stage=self.stage)
            model = self._load(entry)
            self._current = entry.version
            return entry, model

    def start(self) -> RegistryWatcher:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"watch-{self.name}", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float = 30.0) -> None:
        """Stop polling, wait for an in-progress load, close every model still waiting to retire."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._retire(force=True)

    def __enter__(self) -> RegistryWatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # noqa: BLE001 - the watcher must outlive any one bad poll
                log.exception("registry watcher for %s: poll failed", self.name)
            self._retire(force=False)
            self._stop.wait(self.interval_s)

    # --- one poll -----------------------------------------------------------------------

    def poll_once(self) -> bool:
        """Check the stage once; load and swap if it moved. Returns True if a swap happened."""
        with self._lock:
            seen = self._stat()
            changed = seen != self._seen
            retry_due = any(time.monotonic() - t >= self.retry_after_s for t in self._failed.values())
            if not changed and not retry_due:
                return False
            self._seen = seen
            if changed:
                self._failed.clear()
            try:
                entry = self.registry.get(self.name, stage=self.stage)
            except Exception as exc:  # noqa: BLE001 - UnknownModelError, unreadable stages.json
                self._report(None, exc)
                return False
            if entry.version == self._current:
                return False
            failed_at = self._failed.get(entry.version)
            if failed_at is not None and time.monotonic() - failed_at < self.retry_after_s:
                return False
            try:
                model = self._load(entry)
            except Exception as exc:  # noqa: BLE001 - every load failure keeps the old model
                self._failed[entry.version] = time.monotonic()
                self._report(entry.version, exc)
                return False
            self._failed.pop(entry.version, None)
            try:
                old = self._on_swap(entry, model)
            except Exception as exc:  # noqa: BLE001
                model.close()
                self._report(entry.version, exc)
                return False
            log.info("model %s: swapped %s -> %s", self.name, self._current, entry.version)
            self._current = entry.version
            self.swaps += 1
            if old is not None and hasattr(old, "close"):
                self._retiring.append((time.monotonic() + self.retire_after_s, old))
            return True

    def _stat(self) -> object:
        token = getattr(self.registry, "change_token", None)
        if token is not None:      # a registry without files to stat (MLflow): the alias's version
            return token(self.name, self.stage)
        try:
            st = os.stat(self.stages_path)
        except FileNotFoundError:
            return None
        return _Seen(st.st_ino, st.st_mtime_ns, st.st_size)

    def _load(self, entry: ModelEntry) -> Model:
        if self._loader is not None:
            model = self._loader(self.registry, entry)
        else:
            model = self.registry.load(entry, **self._load_options)
        if self._validate is not None:
            try:
                self._validate(entry, model)
            except BaseException:
                model.close()
                raise
        return model

    def _report(self, version: str | None, exc: BaseException) -> None:
        self.errors += 1
        log.error("model %s: version %s not swapped in, the current version %s keeps serving: %s",
                  self.name, version, self._current, exc)
        if self._on_error is not None:
            try:
                self._on_error(self.name, version, exc)
            except Exception:  # noqa: BLE001
                log.exception("on_error callback failed")

    def _retire(self, *, force: bool) -> None:
        now = time.monotonic()
        keep = []
        for when, obj in self._retiring:
            if force or now >= when:
                try:
                    obj.close()
                except Exception:  # noqa: BLE001
                    log.exception("closing a retired model of %s failed", self.name)
            else:
                keep.append((when, obj))
        self._retiring = keep


__all__ = ["ErrorCallback", "Loader", "RegistryWatcher", "SwapCallback", "Validator"]
