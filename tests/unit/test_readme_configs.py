"""Every YAML block of the README is a config the loaders accept, so a snippet cannot drift from the code.

A block with a top-level ``pipelines`` key is a pipeline file (``streamscore.config.load_config``);
one whose first line is ``# monitor.yaml`` is a monitor config (``monitoring.monitor_app.load_config``).
Any other YAML block fails the test unless its first line is ``# readme: partial``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from monitoring.monitor_app import load_config as load_monitor_config
from streamscore.config import load_config

README = Path(__file__).resolve().parents[2] / "README.md"
PARTIAL = "# readme: partial"


def yaml_blocks(text: str | None = None) -> list[tuple[int, str]]:
    """(line number, body) of every ```yaml fenced block."""
    text = README.read_text() if text is None else text
    out = []
    for m in re.finditer(r"^```ya?ml[ \t]*\n(.*?)^```", text, flags=re.S | re.M):
        out.append((text.count("\n", 0, m.start()) + 1, m.group(1)))
    return out


def kind_of(body: str) -> str:
    first = body.lstrip().splitlines()[0].strip() if body.strip() else ""
    if first == PARTIAL:
        return "partial"
    if first == "# monitor.yaml":
        return "monitor"
    raw = yaml.safe_load(body)
    return "pipeline" if isinstance(raw, dict) and "pipelines" in raw else "unknown"


BLOCKS = yaml_blocks()


def test_the_readme_has_the_configs_it_documents() -> None:
    kinds = [kind_of(b) for _, b in BLOCKS]
    assert kinds.count("pipeline") >= 2 and kinds.count("monitor") >= 1, kinds


@pytest.mark.parametrize("line,body", BLOCKS, ids=[f"README.md:{n}" for n, _ in BLOCKS])
def test_readme_yaml_block_loads(line: int, body: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("KAFKA_BOOTSTRAP", "REDIS_URL", "STREAMSCORE_SECRETS_FILE", "KAFKA_SSL_CA_LOCATION"):
        monkeypatch.delenv(var, raising=False)
    kind = kind_of(body)
    path = tmp_path / "snippet.yaml"
    path.write_text(body)
    if kind == "pipeline":
        cfg = load_config(path)
        assert cfg.pipelines
    elif kind == "monitor":
        assert load_monitor_config(path).telemetry_topic
    else:
        assert kind == "partial", (f"README.md:{line}: a YAML block that is neither a pipeline file (top-level "
                                   f"`pipelines`) nor a monitor config (first line `# monitor.yaml`); mark it "
                                   f"`{PARTIAL}` if it is partial on purpose")


def test_a_drifted_snippet_fails() -> None:
    """The check is not vacuous: a README whose snippet names a key the code does not know is caught."""
    from schemas.errors import ConfigError

    bad = "```yaml\npipelines:\n  - {name: a, input: {topic: t}, model: {name: m}, output: {topic: o}, batch: {}}\n```\n"
    ((_, body),) = yaml_blocks(bad)
    assert kind_of(body) == "pipeline"
    with pytest.raises(ConfigError, match=r"pipelines\[0\].batch: unknown key"):
        from streamscore.config import parse_config

        parse_config(yaml.safe_load(body), env={})
