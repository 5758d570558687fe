"""Every repository path README.md names exists (globs such as ``schemas/*.avsc`` match something)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# a run of path characters with at least one "/", not part of a URL or a home-relative path
_PATH = re.compile(r"(?<![\w./~:-])([A-Za-z0-9_.*-]+(?:/[A-Za-z0-9_.*-]+)+/?)")
# files the README tells the reader a command makes (git ignores them)
MADE = {"build/setup.log": "make writes it", "deploy/compose/secrets.env": "cp from secrets.env.example"}


def named_paths(text: str) -> set[str]:
    """Tokens whose first component is a top-level entry of the repository."""
    tops = {p.name for p in ROOT.iterdir() if not p.name.startswith(".git")}
    return {m.rstrip("/") for m in _PATH.findall(text) if m.split("/")[0] in tops}


def test_every_path_in_the_readme_exists() -> None:
    paths = named_paths((ROOT / "README.md").read_text())
    assert len(paths) > 20, sorted(paths)            # the pattern finds the paths the README names
    missing = sorted(p for p in paths - set(MADE) if not (any(ROOT.glob(p)) if "*" in p else (ROOT / p).exists()))
    assert not missing, missing


def test_the_check_finds_a_missing_path() -> None:
    assert named_paths("see `consumers/no_such_module.py` and https://example.com/consumers/x") == {
        "consumers/no_such_module.py"}
