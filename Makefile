# streamscore: `make demo` and `make test` set everything up from nothing.
# Set-up is quiet: one line per step; apt, pip and mvn write to $(SETUP_LOG) (printed on failure).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=
SETUP_LOG := build/setup.log
SETUP  := SETUP_LOG=$(SETUP_LOG) PYTHON=$(PYTHON) .ci/setup

# Debian packages as package:command (the command on PATH means the package is there).
# The demo: a JDK and Maven fetch and run the Kafka broker, redis-server, gcc for the codec's C kernels.
DEMO_PKGS := openjdk-17-jre-headless:java maven:mvn redis-server:redis-server gcc:cc
# The tests, on top: promtool and the Prometheus server (rules and scrape tests), Chromium (dashboard test),
# stress-ng for the chaos runs' CPU hog (a busy-loop process stands in without it).
TEST_PKGS := $(DEMO_PKGS) prometheus:promtool chromium:chromium stress-ng:stress-ng
# pip extras of this package (pyproject.toml): none for the demo, [dev] for the tests.
DEMO_EXTRAS :=
TEST_EXTRAS := dev

.PHONY: setup setup-demo kafka-jars registry-jar native demo test unit integration bench chaos lint dev-up dev-down clean

# What the tests (and bench, chaos, lint) need; `make demo` needs less (setup-demo).
setup:
	@$(SETUP) apt $(TEST_PKGS)
	@$(SETUP) venv $(VENV) "$(TEST_EXTRAS)"
	@$(MAKE) -s --no-print-directory kafka-jars registry-jar native

setup-demo:
	@$(SETUP) apt $(DEMO_PKGS)
	@$(SETUP) venv $(VENV) "$(DEMO_EXTRAS)"
	@$(MAKE) -s --no-print-directory kafka-jars native

# Apache Kafka broker jars, resolved once with mvn into ~/.cache/streamscore (outside the repo).
kafka-jars:
	@$(SETUP) report "kafka jars" $(BIN)/python -c "from streamscore.dev.kafka import ensure_kafka_libs; print(ensure_kafka_libs())"

# Apicurio Registry (the Confluent schema-registry API) for dev and tests: fetched once with mvn, unpacked into ~/.cache/streamscore.
registry-jar:
	@$(SETUP) report "schema registry" $(BIN)/python -c "from streamscore.dev.registry import APICURIO_VERSION, apicurio_jar; from streamscore.dev.util import cache_root; c = (cache_root() / f'apicurio-{APICURIO_VERSION}' / '.complete').exists(); apicurio_jar(); print('cached' if c else 'fetched')"

# The codec's C kernels (byte copies, the non-ASCII scan), the aggregates' window loop and the key index, compiled once into ~/.cache/streamscore/native (numpy fallback without a compiler).
native:
	@$(SETUP) report "native kernels" $(BIN)/python -c "from schemas.codec.native import lib; print('built' if lib() else 'unavailable, numpy fallback')"
	@$(SETUP) report "aggregate kernel" $(BIN)/python -c "from models.agg_window import lib; print('built' if lib() else 'unavailable, numpy fallback')"
	@$(SETUP) report "key index kernel" $(BIN)/python -c "from models.key_index import lib; print('built' if lib() else 'unavailable, numpy fallback')"
	@$(SETUP) report "native consume helper" $(BIN)/python -c "from consumers.native_consume import helper_path; print('built' if helper_path() else 'unavailable, Consumer.consume')"

demo: setup-demo
	@$(BIN)/streamscore demo --seconds 30 --rate 20000

# Type check, unit tests (no services), then integration tests (a real broker and Redis, started by the fixtures).
test: setup
	$(BIN)/python -m mypy consumers sinks schemas models streamscore monitoring
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit $(PYTEST_ARGS)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/integration $(PYTEST_ARGS)

unit: setup
	$(BIN)/python -m pytest -q tests/unit $(PYTEST_ARGS)

integration: setup
	$(BIN)/python -m pytest -q tests/integration $(PYTEST_ARGS)

bench: setup
	$(BIN)/python -m bench.run

# The chaos scenarios on a local 3-broker cluster (about 30 minutes here), then the README's table from their results.
CHAOS_ARGS ?=
chaos: setup
	$(BIN)/python -m bench.chaos $(CHAOS_ARGS); rc=$$?; $(BIN)/python -m bench.chaos --table --write-readme; exit $$rc

lint: setup
	$(BIN)/python -m mypy consumers sinks schemas models streamscore monitoring

dev-up: setup-demo
	$(BIN)/streamscore dev up

dev-down:
	$(BIN)/streamscore dev down

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache
