"""``streamscore``: the command line. Each subcommand parses, builds via the app, and runs."""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from schemas.errors import ConfigError, ModelError, ServiceError, StreamscoreError
from streamscore.config import monitor_env_overrides

if TYPE_CHECKING:
    from consumers.scorer import Scorer
    from streamscore.config import PipelineFile

log = logging.getLogger("streamscore")


def _setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose == 1 else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# ---------------------------------------------------------------- dev services
def cmd_dev(args: argparse.Namespace) -> int:
    from streamscore.dev.services import services_down, services_status, services_up

    if args.action == "up":
        if args.brokers != 1 and args.brokers < 3:
            raise ConfigError(f"--brokers must be 1 or at least 3 (replication factor 3), not {args.brokers}")
        state = services_up(brokers=args.brokers)
        print(json.dumps(state, indent=2))
        print(f"\nexport KAFKA_BOOTSTRAP={state['kafka_bootstrap']} REDIS_URL={state['redis_url']} "
              f"SCHEMA_REGISTRY_URL={state.get('schema_registry_url')}")
        return 0 if state.get("running") else 1
    if args.action == "down":
        print(json.dumps(services_down(purge=args.purge)))
        return 0
    state = services_status()
    print(json.dumps(state, indent=2))
    return 0 if state.get("running") else 3


# ---------------------------------------------------------------- serve
def quiet_gc() -> None:
    """Keep the cyclic garbage collector out of the latency tail.

    Everything alive after startup (numpy, onnxruntime, the model, the clients: a few
    hundred thousand objects) moves to the permanent generation, so a full collection no
    longer walks it; and generation 0 runs every 50,000 allocations instead of 700 (a
    2,000-row batch allocates thousands of messages and bytes; they are freed by reference
    counting, cycles are rare). Measured at 105k events/s offered: p99 185 -> 63 ms.
    """
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1_000)


def short_gil_slices(ms: float) -> None:
    """How long one of the scorer's threads may run Python before another may take the GIL.

    The stages (consume + decode, model, encode + produce) are threads; a batch that is ready
    for the next stage waits until the running thread gives the GIL up, by default after
    5 ms. At 182k events/s offered on 2 cores, 1 ms took p50 from 41-54 ms to 32-34 and p99
    from 231-546 ms to 133-141 (two interleaved runs each, bench.run.run_latency); throughput
    on a 1.5M backlog was the same (400k/421k at 5 ms, 434k/428k at 1 ms).
    """
    sys.setswitchinterval(ms / 1000.0)


def cmd_serve(args: argparse.Namespace) -> int:
    from streamscore.config import load_config

    cfg = load_config(args.config)
    if args.check:
        from streamscore.app import check_config

        print(check_config(cfg))
        return 0
    if args.processes > 1:
        return _serve_many(args, cfg)
    from streamscore.stopping import StopSignals, build_unless_stopped

    # Installed before the scorer is built: a stop asked for during startup is a clean stop too.
    stops = StopSignals(cfg.stop_timeout_s)

    def build() -> Scorer:                 # from the first moment a signal can raise StoppedDuringStartup
        stops.install()
        faulthandler.register(signal.SIGUSR1, all_threads=True)   # `kill -USR1 PID`: every thread's stack to stderr
        from streamscore.app import build_scorer

        scorer = build_scorer(cfg, instance=args.instance, index=args.process_index)
        stops.on_stop = scorer.stop
        if stops.backstop is not None:      # asked while building: the watcher had nobody to tell
            scorer.stop()
        return scorer

    scorer = build_unless_stopped(stops, build)
    if scorer is None:
        log.info("stopped while starting")
        return 0
    t0 = time.monotonic()
    quiet_gc()
    short_gil_slices(cfg.gil_switch_ms)
    scorer.run(max_seconds=args.max_seconds)
    s = scorer.stats
    print(json.dumps({"consumed": s.consumed, "produced": s.produced, "dead_letters": s.dead, "batches": s.batches,
                      "scored_inline": s.scored_inline, "emitted_inline": s.emitted_inline, "seconds": round(time.monotonic() - t0, 3)}), flush=True)
    return 0


def _serve_many(args: argparse.Namespace, cfg: "PipelineFile") -> int:
    """N single-consumer processes in one group, each restarted if it exits abnormally (streamscore.supervisor).

    With ``metrics_port`` set, this parent serves ``streamscore_child_restarts_total`` on
    ``metrics_port + N`` (the children take ``metrics_port .. + N-1``).
    """
    from monitoring.metrics import SupervisorMetrics, metrics_port_for, start_metrics_server
    from streamscore.supervisor import Supervisor

    base = args.instance or "scorer"
    children = []
    for i in range(args.processes):
        cmd = [sys.executable, "-m", "streamscore", *(["-v"] * args.verbose), "serve", "-c", args.config,
               "--instance", f"{base}-{i}", "--process-index", str(i)]
        if args.max_seconds is not None:
            cmd += ["--max-seconds", str(args.max_seconds)]
        children.append((f"{base}-{i}", cmd))
    metrics = SupervisorMetrics(instance=base)
    port = metrics_port_for(cfg.metrics_port, args.processes)
    if port is not None:
        bound = start_metrics_server(port, host=cfg.metrics_host)
        log.info("supervisor metrics on http://%s:%d/metrics", cfg.metrics_host, bound)
    supervisor = Supervisor(children, on_restart=metrics.child_restarted)
    signal.signal(signal.SIGTERM, lambda signum, _frame: supervisor.request_stop(signum))
    signal.signal(signal.SIGINT, lambda signum, _frame: supervisor.request_stop(signum))
    return supervisor.run()


# ---------------------------------------------------------------- backfill and serve-http
def cmd_backfill(args: argparse.Namespace) -> int:
    from streamscore.backfill import BackfillArgs, parse_model, parse_time, run_backfill, terminal_progress
    from streamscore.config import load_config

    cfg = load_config(args.config)
    bargs = BackfillArgs(
        from_ms=parse_time(args.from_, "--from") if args.from_ is not None else None,
        to_ms=parse_time(args.to, "--to") if args.to is not None else None,
        model=parse_model(args.model) if args.model else None,
        to_topic=args.to_topic, to_file=Path(args.to_file) if args.to_file else None,
        input_file=Path(args.input_file) if args.input_file else None, resume=args.resume,
        state_dir=Path(args.state_dir) if args.state_dir else None, pipeline=args.pipeline,
        max_rate=args.max_rate, progress=None if args.quiet else terminal_progress(), compare=args.compare)
    compare_out = Path(args.compare_out) if args.compare_out else None
    if compare_out is not None and not args.compare:
        raise ConfigError("--compare-out: only with --compare")
    quiet_gc()
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        res = run_backfill(cfg, bargs, stop=stop)   # a signal ends it after the current chunk is durable
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if res.compare is not None:
        from streamscore.backfill.compare import summary_lines

        print("\n".join(summary_lines(res.compare)), file=sys.stderr, flush=True)
        if compare_out is not None:
            compare_out.write_text(json.dumps(res.compare, indent=2) + "\n")
    print(json.dumps(res.to_dict()), flush=True)
    if not res.complete:
        print("streamscore: backfill interrupted; run the same command with --resume to continue", file=sys.stderr)
        return 3
    return 0


def cmd_serve_http(args: argparse.Namespace) -> int:
    from streamscore.config import load_config
    from streamscore.http_server import run_http

    cfg = load_config(args.config)
    quiet_gc()
    run_http(cfg, host=args.host, port=args.port, pipeline=args.pipeline, max_body_bytes=args.max_body_bytes,
             max_wait_ms=args.max_wait_ms)
    return 0


# ---------------------------------------------------------------- produce
def cmd_produce(args: argparse.Namespace) -> int:
    from models.demo_data import DriftSpec
    from streamscore.config import kafka_from_env
    from streamscore.produce import produce_events

    from consumers.kafka_client import connection_error

    kafka = kafka_from_env(args.bootstrap)
    drift = DriftSpec.parse(args.drift) if args.drift else None
    if args.concept_drift is not None and not args.labels:
        raise ConfigError("produce: --concept-drift changes the labels, so it needs --labels TOPIC")
    problem = connection_error(kafka.client_settings())   # else librdkafka retries a missing broker for ever
    if problem:
        raise ConfigError(f"produce: {problem} (start one with `streamscore dev up`, or pass --bootstrap)")
    if args.partitions:
        from consumers.kafka_client import ensure_topics

        ensure_topics(kafka.client_settings(), {args.topic: args.partitions})
    last = [time.monotonic()]

    def progress(n: int) -> None:
        if time.monotonic() - last[0] >= 2:
            last[0] = time.monotonic()
            print(f"  produced {n:,}/{args.count:,}", file=sys.stderr, flush=True)

    res = produce_events(kafka.client_settings(), args.topic, args.count, rate=args.rate, seed=args.seed,
                         start=args.start, drift=drift, fmt=args.format, progress=progress)
    out: dict[str, Any] = {"topic": args.topic, "events": res.events, "seconds": round(res.seconds, 3),
                           "events_per_s": round(res.rate)}
    if args.labels:
        from streamscore.produce import label_records, produce_labels

        records = label_records(res.events, seed=args.seed, start=args.start, drift=drift,
                                now_ms=int(time.time() * 1000), max_delay_ms=args.label_delay_ms,
                                dup=args.label_dup, missing=args.label_missing, concept_from=args.concept_drift)
        out |= {"labels_topic": args.labels, "labels": produce_labels(kafka.client_settings(), args.labels, records)}
    print(json.dumps(out))
    return 0


# ---------------------------------------------------------------- models
MODELS_USAGE = {
    "show": "models show NAME [VERSION]",
    "register": "models register NAME --artifact FILE [--format F] [--input-spec FILE] [--threshold T]",
    "promote": "models promote NAME VERSION [--stage S]",
    "rollback": "models rollback NAME",
    "check": "models check NAME [VERSION] --sample FILE [--schema NAME] [--hook-path DIR]",
    "schema": "models schema NAME [VERSION]",
    "compare": "models compare NAME [--challenger MODEL:VERSION:VARIANT] [--window START_MS] [--level L] [--json]",
}


def cmd_models(args: argparse.Namespace) -> int:
    from models import DEMO_REGISTRY
    from models.registry import ModelRegistry

    if args.registry and args.registry.startswith("mlflow+"):
        raise ConfigError("models: --registry takes a registry directory; an MLflow registry (mlflow+...) is read by "
                          "`serve` and managed with MLflow's own tools")
    root = Path(args.registry) if args.registry else DEMO_REGISTRY
    # register and train-demo make their registry; the rest read one that must exist
    reg = ModelRegistry(root) if args.action in ("register", "train-demo") else ModelRegistry.existing(root)
    need = {"show": ("name",), "register": ("name", "artifact"), "promote": ("name", "version"),
            "rollback": ("name",), "check": ("name", "sample"), "schema": ("name",),
            "compare": ("name",)}.get(args.action, ())
    missing = [n.upper() if n not in ("artifact", "sample") else f"--{n}" for n in need if getattr(args, n) is None]
    if missing:
        raise ConfigError(f"models {args.action}: missing {' and '.join(missing)} (usage: streamscore "
                          f"{MODELS_USAGE[args.action]})")
    if args.action == "train-demo":
        from models.train import train_demo

        res = train_demo(root, seed=args.seed)
        print(json.dumps(_jsonable(res), indent=2, default=str))
        return 0
    if args.action == "list":
        entries = reg.list(args.name)
        for e in entries:
            print(f"{e.name:24} {e.version:>6}  {e.stage:11} {e.format:12} {e.sha256[:12]}  {e.created_at}")
        if not entries:
            print(f"no {'versions of ' + repr(args.name) if args.name else 'models'} in {root}", file=sys.stderr)
        return 0
    if args.action == "show":
        e = reg.get(args.name, args.version, stage=None if args.version else "production")
        print(json.dumps(_jsonable(e), indent=2, default=str))
        return 0
    if args.action == "register":
        return _register(reg, args)
    if args.action == "compare":
        return _compare(args)
    if args.action == "check":
        from streamscore.check import check_sample

        dead: dict[str, int] = {}
        rows = 0
        for rec in check_sample(reg, args.name, args.version, Path(args.sample), schema=args.schema,
                                hook_path=args.hook_path):
            print(json.dumps(rec, default=str))
            rows += 1
            if "dead_letter" in rec:
                dead[str(rec["dead_letter"])] = dead.get(str(rec["dead_letter"]), 0) + 1
        if rows == 0:
            raise ConfigError(f"models check: sample {args.sample} holds no rows")
        why = ", ".join(f"{k}: {v}" for k, v in sorted(dead.items()))
        print(f"{rows} rows: {rows - sum(dead.values())} scored, {sum(dead.values())} dead-lettered"
              + (f" ({why})" if why else ""), file=sys.stderr)
        return 0
    if args.action == "schema":
        from schemas.prediction import prediction_schema

        e = reg.get(args.name, args.version, stage=None if args.version else "production")
        print(json.dumps(prediction_schema(e.outputs), indent=2))
        return 0
    if args.action == "promote":
        e = reg.promote(args.name, args.version, args.stage or "production")
        print(f"{e.name}:{e.version} is now {e.stage}")
        return 0
    if args.action == "rollback":
        e = reg.rollback(args.name)
        print(f"{e.name}:{e.version} is now {e.stage}")
        return 0
    raise AssertionError(args.action)


def _compare(args: argparse.Namespace) -> int:
    """Primary vs challenger AUC on the same labelled window, from what the monitor keeps in Redis."""
    from monitoring.canary_report import build_report, render
    from monitoring.redis_state import connect

    if not 0 < args.level < 1:
        raise ConfigError(f"models compare: --level must be within (0, 1), got {args.level}")
    url = _redis_url(args)
    with _redis_errors(url):
        rep = build_report(connect(url), args.prefix, args.name, primary_version=args.version,
                           challenger=args.challenger, window=args.window, level=args.level, method=args.method,
                           min_class=args.min_labels, seed=args.seed)
    print(json.dumps(rep.as_dict()) if args.json else render(rep))
    return 0


def _register(reg: Any, args: argparse.Namespace) -> int:
    """The spec comes from --input-spec, else from the model's latest version, else (a new ONNX
    model whose inputs are single named columns) from the graph; the output spec, when none is
    given, is inferred from the graph; the artifact must load and score with them."""
    from models.registry import RegistrationSpec

    artifact = Path(args.artifact)
    if not artifact.is_file():
        raise ConfigError(f"models register: artifact {artifact} does not exist")
    inferred = None
    if args.format == "onnx":
        from models.infer import infer_specs

        try:
            inferred = infer_specs(artifact)
        except ModelError as exc:
            raise ConfigError(f"refusing to register {artifact} as --format onnx: {exc}") from exc
    prev = reg.list(args.name)
    if args.input_spec:
        spec = RegistrationSpec.read(Path(args.input_spec), inferred=inferred)
    elif prev:
        spec = RegistrationSpec.from_entry(reg.get(args.name, None, stage=None))
    elif inferred is not None and RegistrationSpec.columns_only(inferred):
        spec = RegistrationSpec.from_inferred(inferred)
    else:
        raise ConfigError(f"models register: {args.name!r} is a new model in {reg.root}, so there is no earlier "
                          f"version to copy its input spec from; pass --input-spec FILE (see --help)")
    threshold = args.threshold if args.threshold is not None else spec.decision_threshold
    if threshold is None:
        threshold = 0.5
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"models register: --threshold must be within [0, 1], got {threshold}")
    reg.check_artifact(artifact, format=args.format, input_spec=spec.input_spec, output_spec=spec.output_spec)
    e = reg.register(args.name, artifact, format=args.format, input_spec=spec.input_spec,
                     output_spec=spec.output_spec, reference_profile=spec.reference_profile or None,
                     metrics=spec.metrics or None, stage=args.stage or "staging", version=args.version,
                     decision_threshold=threshold, hooks=spec.hooks or None)
    print(f"registered {e.name}:{e.version} ({e.stage}) threshold={e.decision_threshold:g} sha256={e.sha256}")
    print(f"  inputs:  {', '.join(f'{k} {d}[{w}]' for k, (d, w) in e.input_spec.inputs.items())} "
          f"from fields {', '.join(e.input_spec.fields)}")
    print(f"  outputs: {json.dumps(e.outputs.to_dict())} -> prediction fields {', '.join(e.outputs.fields())}")
    return 0


def _jsonable(obj: Any) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return obj


# ---------------------------------------------------------------- side stream and ops
def cmd_monitor(args: argparse.Namespace) -> int:
    from monitoring.monitor_app import load_config as load_monitor_config
    from monitoring.monitor_app import run_monitor

    cfg = load_monitor_config(args.config)
    overrides = monitor_env_overrides(file_registry=cfg.schema_registry_url)
    if overrides:
        cfg = cfg.model_copy(update=overrides)
    if args.check:
        from monitoring.monitor_app import check_config

        print(check_config(cfg))
        return 0
    run_monitor(cfg)
    return 0


def cmd_alerts(args: argparse.Namespace) -> int:
    from monitoring.redis_state import alerts_tail

    url = _redis_url(args)
    with _redis_errors(url):
        for line in alerts_tail(url, follow=args.follow, count=args.count, prefix=args.prefix):
            print(line, flush=True)
    return 0


def cmd_drift(args: argparse.Namespace) -> int:
    from monitoring.redis_state import drift_show

    url = _redis_url(args)
    with _redis_errors(url):
        print(drift_show(url, prefix=args.prefix))
    return 0


@contextlib.contextmanager
def _redis_errors(url: str) -> Iterator[None]:
    """An unreachable Redis or a malformed URL is one line naming the (redacted) URL."""
    import redis

    from monitoring.redis_state import redact

    try:
        yield
    except (redis.RedisError, ValueError) as exc:
        raise ServiceError(f"Redis at {redact(url)}: {exc}") from exc


def cmd_dashboard(args: argparse.Namespace) -> int:
    from monitoring.dashboard import serve_dashboard

    if args.check:
        from monitoring.dashboard.server import check_options

        print(check_options(_redis_url(args), args.metrics_url, args.port))
        return 0
    url = _redis_url(args)
    try:
        with _redis_errors(url):
            server, port = serve_dashboard(url, args.metrics_url, args.host, args.port, prefix=args.prefix)
    except OSError as exc:
        raise ServiceError(f"cannot serve the dashboard on {args.host}:{args.port}: {exc.strerror or exc}") from exc
    print(f"streamscore dashboard on http://{args.host}:{port}/ (Ctrl-C stops)", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.close()
    return 0


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is a number from 0 to 65535, got {text!r}")
    return port


def _redis_url(args: argparse.Namespace) -> str:
    from streamscore.config import redis_url_from_env

    return args.redis_url or redis_url_from_env()


# ---------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    from streamscore.demo import run_demo

    return run_demo(seconds=args.seconds, rate=args.rate, partitions=args.partitions, keep=args.keep)


# ---------------------------------------------------------------- parser
def _at_least(low: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``low``."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = low - 1
        if v < low:
            raise argparse.ArgumentTypeError(f"expected a whole number of at least {low}, got {text!r}")
        return v
    return parse


_count, _whole = _at_least(1), _at_least(0)


def _positive(text: str) -> float:
    """A number > 0 (argparse type)."""
    try:
        v = float(text)
    except ValueError:
        v = 0.0
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}")
    return v


def _share(text: str) -> float:
    """A share in [0, 1] (argparse type)."""
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a share between 0 and 1, got {text!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="streamscore", description="Streaming inference over Kafka.")
    ap.add_argument("-v", "--verbose", action="count", default=0)
    sub = ap.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="local Kafka + Redis for development")
    dev.add_argument("action", choices=["up", "down", "status"])
    dev.add_argument("--brokers", type=int, default=1,
                     help="with up: 1 (a single broker) or 3+ (a local KRaft cluster, replication factor 3)")
    dev.add_argument("--purge", action="store_true",
                     help="with down: also delete the local broker's and Redis's data (it grows with every run)")
    dev.set_defaults(fn=cmd_dev)

    serve = sub.add_parser("serve", help="run the scoring service")
    serve.add_argument("-c", "--config", required=True, help="pipeline YAML file")
    serve.add_argument("--processes", type=_count, default=1, help="consumers in the group (one process each)")
    serve.add_argument("--instance", default=None, help="this process's name in the group (stable across restarts)")
    serve.add_argument("--process-index", type=int, default=0, help=argparse.SUPPRESS)
    serve.add_argument("--max-seconds", type=_positive, default=None, help="stop after this long (tests, benchmarks)")
    serve.add_argument("--check", action="store_true",
                       help="validate the file, load every model and schema; touch no broker; exit 0 or 2")
    serve.set_defaults(fn=cmd_serve)

    bf = sub.add_parser("backfill", help="re-score a topic's time range (or a file) with the pipeline's model")
    bf.add_argument("-c", "--config", required=True, help="pipeline YAML file")
    bf.add_argument("--from", dest="from_", default=None, help="start time: ISO-8601 (naive = UTC) or epoch ms")
    bf.add_argument("--to", default=None, help="end time, exclusive (default: the topic's end when the run starts)")
    bf.add_argument("--model", default=None, help="NAME@VERSION to score with (default: the pipeline's model)")
    out = bf.add_mutually_exclusive_group(required=True)
    out.add_argument("--to-topic", default=None, help="write predictions to this topic (transactional)")
    out.add_argument("--to-file", default=None, help="write predictions to this Parquet file")
    bf.add_argument("--input-file", default=None, help="read a Parquet or CSV file instead of the input topic")
    bf.add_argument("--resume", action="store_true", help="continue an interrupted run with the same arguments")
    bf.add_argument("--state-dir", default=None, help="checkpoint directory (default: OUT.parquet.backfill or .backfill-TOPIC)")
    bf.add_argument("--pipeline", default=None, help="which pipeline of the file (default: the first scoring one)")
    bf.add_argument("--max-rate", type=float, default=None, help="events/s ceiling (default: flat out)")
    bf.add_argument("--compare", action="store_true",
                    help="also score with the production version and compare it with --model (the candidate)")
    bf.add_argument("--compare-out", default=None, help="write the --compare report to this JSON file")
    bf.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    bf.set_defaults(fn=cmd_backfill)

    http = sub.add_parser("serve-http", help="the Open Inference Protocol V2 REST endpoint on the pipeline's model")
    http.add_argument("-c", "--config", required=True, help="pipeline YAML file")
    http.add_argument("--host", default="127.0.0.1")
    http.add_argument("--port", type=_port, default=8080)
    http.add_argument("--pipeline", default=None, help="which pipeline of the file (default: the first scoring one)")
    http.add_argument("--max-body-bytes", type=_count, default=8 * 1024 * 1024, help="larger request bodies get 413")
    http.add_argument("--max-wait-ms", type=float, default=0.0,
                      help="longest a request waits for batch-mates (the pipeline's latency target still applies)")
    http.set_defaults(fn=cmd_serve_http)

    prod = sub.add_parser("produce", help="write demo Transaction events")
    prod.add_argument("--topic", default="transactions")
    prod.add_argument("-n", "--count", type=_count, default=100_000)
    prod.add_argument("--rate", type=_positive, default=None, help="events/s (default: flat out)")
    prod.add_argument("--seed", type=int, default=0)
    prod.add_argument("--start", type=_whole, default=0, help="global index of the first event")
    prod.add_argument("--drift", default=None, help='e.g. "start=5000,shift=f03:2.0,scale=amount:3"')
    prod.add_argument("--format", choices=["avro", "json"], default="avro")
    prod.add_argument("--partitions", type=_count, default=None, help="create the topic with this many partitions")
    prod.add_argument("--bootstrap", default=None, help="bootstrap servers (default: $KAFKA_BOOTSTRAP)")
    prod.add_argument("--labels", default=None, metavar="TOPIC",
                      help="also write the events' true labels (JSON) to TOPIC: delayed, out of order, some twice, "
                           "some missing (docs/ground-truth.md)")
    prod.add_argument("--label-delay-ms", type=_whole, default=60_000, help="labels arrive up to this long after")
    prod.add_argument("--label-dup", type=_share, default=0.05, help="share of labels sent twice")
    prod.add_argument("--label-missing", type=_share, default=0.10, help="share of labels never sent")
    prod.add_argument("--concept-drift", type=int, nargs="?", const=0, default=None, metavar="START",
                      help="labels of events from global index START (default 0) follow a changed rule where f01 is "
                           "above its mean; the features' distributions stay the same")
    prod.set_defaults(fn=cmd_produce)

    from models.registry import SPEC_FILE_HELP

    mod = sub.add_parser("models", help="the model registry")
    mod.add_argument("action", choices=["train-demo", "list", "show", "register", "promote", "rollback", "check",
                                        "schema", "compare"])
    mod.add_argument("name", nargs="?")
    mod.add_argument("version", nargs="?")
    mod.add_argument("--registry", default=None, help="registry directory (default: the bundled demo registry)")
    mod.add_argument("--artifact", help="register: the artifact file")
    mod.add_argument("--format", default="onnx", choices=["onnx", "torchscript", "torch_export"])
    mod.add_argument("--input-spec", help=f"register: the spec of the new version (default: copy the latest version's); {SPEC_FILE_HELP}")
    mod.add_argument("--threshold", type=float, default=None,
                     help="register: decision threshold, score >= T decides true (default: the spec's, else 0.5)")
    mod.add_argument("--sample", help="check: JSON lines or CSV of input records to score")
    mod.add_argument("--schema", default="transaction", help="check: the input's reader schema (default transaction)")
    mod.add_argument("--hook-path", default=None, help="check: a directory to import hooks from")
    mod.add_argument("--stage", default=None, help="register: staging (default); promote: production (default)")
    mod.add_argument("--seed", type=int, default=7, help="train-demo: training seed; compare: bootstrap seed")
    mod.add_argument("--challenger", default=None, metavar="MODEL:VERSION:VARIANT",
                     help="compare: the arm to judge (default: the one other live arm; VERSION picks the primary)")
    mod.add_argument("--window", type=int, default=None, metavar="START_MS",
                     help="compare: one closed window (default: every kept window since the challenger went live)")
    mod.add_argument("--level", type=float, default=0.95, help="compare: confidence level of the AUC difference")
    mod.add_argument("--method", choices=["delong", "bootstrap"], default="delong", help="compare: the interval")
    mod.add_argument("--min-labels", type=_count, default=30,
                     help="compare: fewest positive and negative labels per arm for a verdict")
    mod.add_argument("--json", action="store_true", help="compare: one JSON object")
    mod.add_argument("--redis-url", default=None, help="compare: default $REDIS_URL, else redis://127.0.0.1:6379/0")
    mod.add_argument("--prefix", default="streamscore", help="compare: the monitor's redis_prefix")
    mod.set_defaults(fn=cmd_models)

    mon = sub.add_parser("monitor", help="the side stream: drift and shadow state into Redis (Faust)")
    mon.add_argument("-c", "--config", required=True, help="monitor config (YAML)")
    mon.add_argument("--check", action="store_true",
                     help="validate the config (Redis URL, registry, windows); touch no broker; exit 0 or 2")
    mon.set_defaults(fn=cmd_monitor)

    alerts = sub.add_parser("alerts", help="drift alerts from Redis")
    alerts.add_argument("action", choices=["tail"])
    alerts.add_argument("-f", "--follow", action="store_true", help="keep printing new alerts")
    alerts.add_argument("-n", "--count", type=_count, default=20)
    alerts.add_argument("--redis-url", default=None, help="default: $REDIS_URL, else redis://127.0.0.1:6379/0")
    alerts.add_argument("--prefix", default="streamscore")
    alerts.set_defaults(fn=cmd_alerts)

    drift = sub.add_parser("drift", help="current drift state from Redis")
    drift.add_argument("action", choices=["show"])
    drift.add_argument("--redis-url", default=None, help="default: $REDIS_URL, else redis://127.0.0.1:6379/0")
    drift.add_argument("--prefix", default="streamscore")
    drift.set_defaults(fn=cmd_drift)

    dash = sub.add_parser("dashboard", help="the ops web page (drift, alerts, shadow, throughput, lag)")
    dash.add_argument("--redis-url", default=None, help="default: $REDIS_URL, else redis://127.0.0.1:6379/0")
    dash.add_argument("--metrics-url", action="extend", nargs="+", default=[], metavar="URL",
                      help="scorers' /metrics URLs (one or more; the flag may also repeat)")
    dash.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    dash.add_argument("--port", type=_port, default=8050)
    dash.add_argument("--prefix", default="streamscore", help="the monitor's redis_prefix")
    dash.add_argument("--check", action="store_true", help="validate the options; connect to nothing; exit 0 or 2")
    dash.set_defaults(fn=cmd_dashboard)

    demo = sub.add_parser("demo", help="run producer + scorer + live summary, bounded")
    demo.add_argument("--seconds", type=_positive, default=30.0)
    demo.add_argument("--rate", type=_positive, default=20000.0)
    demo.add_argument("--partitions", type=_count, default=4)
    demo.add_argument("--keep", action="store_true",
                      help="keep the data directory of the Kafka and Redis it started (default: removed on exit)")
    demo.set_defaults(fn=cmd_demo)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return int(args.fn(args))
    except StreamscoreError as exc:
        print(f"streamscore: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
