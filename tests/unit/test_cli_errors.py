"""Every subcommand, given missing or wrong arguments: exit 2 and a short message, never a traceback.

Runs the CLI in-process (``streamscore.cli.main``); nothing here needs Kafka or Redis: a wrong
address is refused or times out fast (the Redis cases use a closed loopback port).
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from models import DEMO_REGISTRY
from streamscore.cli import main


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("cli")
    reg = d / "reg"
    shutil.copytree(DEMO_REGISTRY, reg)
    (d / "unknown_key.yaml").write_text("pipelines:\n  - {name: a, input: {topic: t}, model: {name: fraud-mlp},"
                                        " output: {topic: o}, batching: {max_sise: 3}}\n")
    (d / "missing_ca.yaml").write_text("kafka: {security_protocol: SSL, ssl_ca_location: /nonexistent/ca.pem}\n"
                                       "pipelines:\n  - {name: a, input: {topic: t}, model: {name: fraud-mlp},"
                                       " output: {topic: o}}\n")
    (d / "not_yaml.yaml").write_text("pipelines: [\n")
    (d / "ok.yaml").write_text("kafka: {bootstrap_servers: '127.0.0.1:1'}\n"
                               "pipelines:\n  - {name: a, input: {topic: t}, model: {name: fraud-mlp}, output: {topic: o}}\n")
    agg = ("kafka: {bootstrap_servers: '127.0.0.1:1'}\n"
           "pipelines:\n  - {name: a, input: {topic: t}, model: {name: fraud-mlp}, output: {topic: o},"
           " lookups: [{name: acct, redis: {key: 'acct:{account_id}', fields: [limit]}}], aggregates: [%s]}\n")
    for name, entry in {"agg_op": "{name: n, key: account_id, op: median, field: amount, window: 10m}",
                        "agg_window": "{name: n, key: account_id, op: count, window: 10x}",
                        "agg_field": "{name: n, key: account_id, op: sum, window: 1h}",
                        "agg_key": "{name: n, op: count, window: 1h}",
                        "agg_lookup": "{name: acct, key: account_id, op: count, window: 1h}",
                        "agg_input": "{name: amount, key: account_id, op: count, window: 1h}",
                        "agg_unknown_key": "{name: n, key: acct_no, op: count, window: 1h}",
                        "agg_unknown_field": "{name: n, key: account_id, op: max, field: amt, window: 1h}"}.items():
        (d / f"{name}.yaml").write_text(agg % entry)
    (d / "monitor_bad.yaml").write_text("broker: 127.0.0.1:9092\nwindow_mss: 5\nk: 0\n")
    (d / "monitor_list.yaml").write_text("- broker\n")
    (d / "spec_top_level.json").write_text('{"features": [{"name": "amount"}]}')
    (d / "spec_bad.json").write_text("{not json")
    return {"dir": str(d), "reg": str(reg), "onnx": str(reg / "fraud-mlp" / "1" / "model.onnx"),
            "pt": str(reg / "fraud-mlp-torch" / "1" / "model.pt"), "redis": f"redis://127.0.0.1:{_closed_port()}/0",
            "kafka": f"127.0.0.1:{_closed_port()}"}


CASES: list[tuple[str, str]] = [
    ("", ""),
    ("bogus", ""),
    ("dev", ""),
    ("dev sideways", ""),
    ("serve", ""),
    ("serve -c {dir}/nope.yaml", "does not exist"),
    ("serve -c {dir}/unknown_key.yaml", "valid keys here"),
    ("serve -c {dir}/missing_ca.yaml", "kafka.ssl_ca_location"),
    ("serve -c {dir}/not_yaml.yaml", "not valid YAML"),
    ("serve -c {dir}/unknown_key.yaml --processes x", ""),
    ("produce -n x", ""),
    ("produce --format xml", ""),
    ("produce --drift start=x --bootstrap 127.0.0.1:1", "drift"),
    ("serve -c {dir}/agg_op.yaml", "'median' is not one of ['count', 'sum', 'mean', 'min', 'max', 'distinct_count']"),
    ("serve -c {dir}/agg_window.yaml", "window '10x': expected a positive whole number and a unit"),
    ("serve -c {dir}/agg_field.yaml", "aggregates[n].field: op 'sum' needs a field"),
    ("serve -c {dir}/agg_key.yaml", "key"),
    ("serve -c {dir}/agg_lookup.yaml", "aggregates ['acct']: names clash with lookups"),
    ("serve --check -c {dir}/agg_input.yaml", "aggregates[amount]: the name 'amount' clashes with an input field"),
    ("serve --check -c {dir}/agg_unknown_key.yaml", "aggregates[n].key: 'acct_no' is not in the input schema"),
    ("serve --check -c {dir}/agg_unknown_field.yaml", "aggregates[n].field: 'amt' is not in the input schema"),
    ("models", ""),
    ("models show --registry {reg}", "missing NAME"),
    ("models show no-such-model --registry {reg}", "no model named"),
    ("models show fraud-mlp 9 --registry {reg}", "no version '9'"),
    ("models promote --registry {reg}", "missing NAME and VERSION"),
    ("models promote fraud-mlp --registry {reg}", "missing VERSION"),
    ("models promote fraud-mlp 9 --registry {reg}", "no version '9'"),
    ("models promote fraud-mlp 1 --stage live --registry {reg}", "unknown model stage"),
    ("models rollback --registry {reg}", "missing NAME"),
    ("models rollback fraud-mlp --registry {reg}", "no archived former production version"),
    ("models register --registry {reg}", "missing NAME"),
    ("models register fraud-mlp --registry {reg}", "missing --artifact"),
    ("models register fraud-mlp --artifact {dir}/nope.onnx --registry {reg}", "does not exist"),
    ("models register fraud-mlp --artifact {pt} --registry {reg}", "refusing to register"),
    ("models register fraud-mlp --artifact {onnx} --format torchscript --registry {reg}", "refusing to register"),
    ("models register fraud-mlp --artifact {onnx} --format pickle --registry {reg}", ""),
    ("models register fraud-mlp --artifact {onnx} --threshold 1.5 --registry {reg}", "--threshold"),
    ("models register fraud-mlp --artifact {onnx} --threshold x --registry {reg}", ""),
    ("models register newmodel --artifact {onnx} --registry {reg}", "pass --input-spec"),
    ("models register newmodel --artifact {onnx} --input-spec {dir}/nope.json --registry {reg}", "nope.json"),
    ("models register newmodel --artifact {onnx} --input-spec {dir}/spec_bad.json --registry {reg}", "spec_bad"),
    # a top-level "features" list stands for input_spec; one feature does not fit the 16-wide graph
    ("models register newmodel --artifact {onnx} --input-spec {dir}/spec_top_level.json --registry {reg}",
     "does not match 1 features"),
    ("models register ../evil --artifact {onnx} --registry {reg}", "directory name"),
    ("produce --concept-drift 5 --bootstrap 127.0.0.1:1", "needs --labels"),
    ("models compare", "missing NAME"),
    ("models compare fraud-mlp --redis-url {redis}", "Redis"),
    ("models compare fraud-mlp --level 1.5 --redis-url {redis}", "--level"),
    ("models compare fraud-mlp --challenger nocolons --redis-url {redis}", "expected MODEL:VERSION:VARIANT"),
    ("models compare fraud-mlp --method magic", ""),
    ("monitor", ""),
    ("monitor -c {dir}/nope.yaml", "cannot read monitor config"),
    ("monitor -c {dir}/monitor_bad.yaml", "window_mss: unknown key (valid keys here:"),
    ("monitor -c {dir}/monitor_list.yaml", "must be a mapping"),
    ("alerts", ""),
    ("alerts tail -n x", ""),
    ("alerts tail --redis-url {redis}", "Redis"),
    ("alerts tail --redis-url not-a-url", "Redis"),
    ("drift", ""),
    ("drift show --redis-url {redis}", "Redis"),
    ("dashboard --port x", ""),
    ("dashboard --port 70000", ""),
    ("demo --seconds x", ""),
    ("demo --seconds -1", ""),
    ("demo --rate 0", ""),
    ("demo --partitions 0", ""),
    ("produce -n -3", ""),
    ("produce -n 0", ""),
    ("produce --rate -5", ""),
    ("produce --partitions 0", ""),
    ("produce --start -1", ""),
    ("produce -n 10 --bootstrap {kafka}", "did not answer within"),
    ("serve -c {dir}/ok.yaml --processes 0", ""),
    ("serve -c {dir}/ok.yaml --max-seconds -1", ""),
    ("alerts tail -n 0", ""),
    ("backfill", ""),
    ("backfill -c {dir}/ok.yaml --from 0", ""),
    ("backfill -c {dir}/ok.yaml --from 0 --to-topic t --to-file x.parquet", ""),
    ("backfill -c {dir}/nope.yaml --from 0 --to-file x.parquet", "does not exist"),
    ("backfill -c {dir}/ok.yaml --from yesterday --to-file x.parquet", "neither ISO-8601"),
    ("backfill -c {dir}/ok.yaml --from 2026-01-02 --to 2026-01-01 --to-file x.parquet", "must be after"),
    ("backfill -c {dir}/ok.yaml --to-file x.parquet", "--from is required"),
    ("backfill -c {dir}/ok.yaml --from 0 --to-file x.parquet --max-rate 0", "--max-rate"),
    ("backfill -c {dir}/ok.yaml --from 0 --to-file x.parquet --model @3", "NAME@VERSION"),
    ("backfill -c {dir}/ok.yaml --input-file {dir}/nope.csv --to-file x.parquet", "does not exist"),
    ("serve-http", ""),
    ("serve-http -c {dir}/nope.yaml", "does not exist"),
    ("serve-http -c {dir}/ok.yaml --port x", ""),
    ("serve-http -c {dir}/ok.yaml --port 70000", ""),
]


@pytest.mark.parametrize("argv,says", CASES, ids=[c[0].split(" --registry")[0] or "<none>" for c in CASES])
def test_bad_arguments_exit_2_without_a_traceback(argv: str, says: str, files: dict[str, str],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    args = argv.format(**files).split()
    try:
        code = main(args)
    except SystemExit as exc:          # argparse: usage line + error line
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    assert code == 2, f"exit {code}\nstdout: {out}\nstderr: {err}"
    assert "Traceback" not in err + out
    lines = err.strip().splitlines()
    if says:
        assert says in err and lines[0].startswith("streamscore: error:"), err
        assert len(lines) <= 4, err
    else:                              # an argparse error: the usage, then one line naming the problem
        assert lines[-1].startswith("streamscore") and ": error: " in lines[-1], err


def test_a_registration_copies_nothing_that_was_refused(files: dict[str, str]) -> None:
    from models.registry import ModelRegistry

    assert [e.version for e in ModelRegistry(Path(files["reg"])).list("fraud-mlp")] == ["1"]
    assert ModelRegistry(Path(files["reg"])).list("newmodel") == []


def test_dashboard_takes_several_metrics_urls_and_a_repeated_flag() -> None:
    from streamscore.cli import build_parser

    args = build_parser().parse_args(["dashboard", "--metrics-url", "http://a/metrics", "http://b/metrics",
                                      "--metrics-url", "http://c/metrics", "--host", "0.0.0.0"])
    assert args.metrics_url == ["http://a/metrics", "http://b/metrics", "http://c/metrics"]
    assert args.host == "0.0.0.0"
