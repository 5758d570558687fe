"""Backfill's arguments and result."""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from schemas.errors import ConfigError


def parse_time(text: str, what: str) -> int:
    """Epoch milliseconds from ISO-8601 (``2026-12-01T10:00:00Z``; naive means UTC) or an integer of ms."""
    s = text.strip()
    if s.lstrip("-").isdigit():
        ms = int(s)
        if ms < 0:
            raise ConfigError(f"{what}: {text!r} is before 1970")
        return ms
    try:
        t = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{what}: {text!r} is neither ISO-8601 (e.g. 2026-12-01T10:00:00Z) nor epoch milliseconds") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return int(t.timestamp() * 1000)


def parse_model(text: str) -> tuple[str, str | None]:
    """``NAME@VERSION`` (or ``NAME:VERSION``, or ``NAME`` for its production version)."""
    for sep in ("@", ":"):
        if sep in text:
            name, _, version = text.partition(sep)
            if not name or not version:
                raise ConfigError(f"--model: {text!r} is not NAME@VERSION")
            return name, version
    if not text:
        raise ConfigError("--model: empty model name")
    return text, None


@dataclass(frozen=True)
class BackfillArgs:
    from_ms: int | None
    to_ms: int | None
    model: tuple[str, str | None] | None = None
    to_topic: str | None = None
    to_file: Path | None = None
    input_file: Path | None = None
    resume: bool = False
    state_dir: Path | None = None
    pipeline: str | None = None
    max_rate: float | None = None        # events/s ceiling (None: flat out)
    chunk_events: int = 100_000          # a chunk closes on this many events or chunk_seconds
    chunk_seconds: float = 2.0
    progress: Callable[[str, bool], None] | None = None   # (line, is_final)
    compare: bool = False                # also score with production (as a shadow) and compare with --model


@dataclass
class BackfillResult:
    events: int = 0
    predictions: int = 0
    dead_letters: int = 0
    seconds: float = 0.0
    skipped: int = 0                  # events a previous run already covered (--resume)
    output: str = ""
    complete: bool = False            # False: interrupted; the state directory is kept for --resume
    compare: dict[str, Any] | None = None   # --compare: streamscore.backfill.compare.Comparison.report()

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["events_per_s"] = round(self.events / self.seconds) if self.seconds > 0 else 0
        d["seconds"] = round(self.seconds, 3)
        if self.compare is None:
            del d["compare"]
        return d
