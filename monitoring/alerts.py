"""Alert hysteresis per (model, feature): raise after k drifted windows in a row, clear after m clean ones.

The state is a small JSON-safe dict so it can live in a Faust table next to the windows.
Alert records carry the fields of ``schemas/drift_alert.avsc`` plus ``state``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Severity = Literal["info", "warning", "critical"]
State = Literal["raised", "cleared"]


@dataclass(frozen=True)
class Hysteresis:
    raise_after: int = 2   # k
    clear_after: int = 3   # m

    def __post_init__(self) -> None:
        if self.raise_after < 1 or self.clear_after < 1:
            raise ValueError(f"k and m must be >= 1, got k={self.raise_after}, m={self.clear_after}")


def initial_state() -> dict[str, Any]:
    return {"raised": False, "bad": 0, "good": 0}


def severity_of(value: float, threshold: float) -> Severity:
    return "critical" if value >= 2.0 * threshold else "warning"


def step(state: Mapping[str, Any], drifted: bool, rule: Hysteresis) -> tuple[dict[str, Any], State | None]:
    """The next state after one closed window, and the transition it makes (if any)."""
    raised = bool(state["raised"])
    bad = int(state["bad"]) + 1 if drifted else 0
    good = 0 if drifted else int(state["good"]) + 1
    transition: State | None = None
    if not raised and bad >= rule.raise_after:
        raised, transition = True, "raised"
    elif raised and good >= rule.clear_after:
        raised, transition = False, "cleared"
    return {"raised": raised, "bad": bad, "good": good}, transition


def alert_record(*, model: str, version: str, feature: str, statistic: str, value: float, threshold: float,
                 window_start: int, window_end: int, state: State, raised_at: int) -> dict[str, Any]:
    """One alert: the DriftAlert fields plus ``state`` (raised | cleared)."""
    severity: Severity = "info" if state == "cleared" else severity_of(value, threshold)
    return {"model": model, "version": version, "feature": feature, "statistic": statistic,
            "value": float(value), "threshold": float(threshold), "window_start": int(window_start),
            "window_end": int(window_end), "severity": severity, "raised_at": int(raised_at), "state": state}
