"""What a resumed backfill needs, in a file written atomically."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from schemas.errors import ConfigError

STATE_FILE = "state.json"


@dataclass
class State:
    """What a resumed run needs: the planned ranges, where it got to, the parts written."""

    fingerprint: str
    group: str
    ranges: dict[int, tuple[int, int]]
    positions: dict[int, int] = field(default_factory=dict)
    parts: list[str] = field(default_factory=list)
    rows: int = 0

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        data = {"fingerprint": self.fingerprint, "group": self.group,
                "ranges": {str(p): list(r) for p, r in self.ranges.items()},
                "positions": {str(p): o for p, o in self.positions.items()}, "parts": self.parts, "rows": self.rows}
        with open(tmp, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> State:
        try:
            d = json.loads(path.read_text())
            return cls(fingerprint=d["fingerprint"], group=d["group"],
                       ranges={int(p): (int(r[0]), int(r[1])) for p, r in d["ranges"].items()},
                       positions={int(p): int(o) for p, o in d["positions"].items()},
                       parts=list(d["parts"]), rows=int(d["rows"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"backfill state {path} is unreadable ({exc}); remove its directory to start over") from exc
