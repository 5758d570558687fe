# streamscore: `make demo` and `make test` set everything up from nothing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: setup system-deps kafka-jars registry-jar native demo test unit integration bench chaos lint dev-up dev-down clean

setup: system-deps $(STAMP) kafka-jars registry-jar native

# Debian packages: redis-server for Redis, Maven + a JDK to fetch and run the Kafka broker,
# prometheus (promtool + the server) and chromium for the operations tests, gcc for the codec's kernels,
# stress-ng for the chaos runs' CPU hog (a busy-loop process stands in without it).
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || missing="$$missing redis-server"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v mvn >/dev/null 2>&1 || missing="$$missing maven"; \
	command -v java >/dev/null 2>&1 || missing="$$missing openjdk-17-jre-headless"; \
	command -v cc >/dev/null 2>&1 || missing="$$missing gcc"; \
	command -v stress-ng >/dev/null 2>&1 || missing="$$missing stress-ng"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

# Apache Kafka broker jars, resolved once with mvn into ~/.cache/streamscore (outside the repo).
kafka-jars: $(STAMP)
	@$(BIN)/python -c "from streamscore.dev.kafka import kafka_libs; print('kafka jars:', kafka_libs())"

# Apicurio Registry (the Confluent schema-registry API) for dev and tests: fetched once with mvn, unpacked into ~/.cache/streamscore.
registry-jar: $(STAMP)
	@$(BIN)/python -c "from streamscore.dev.registry import apicurio_jar; print('schema registry:', apicurio_jar())"

# The codec's C kernels (byte copies, the non-ASCII scan), compiled once into ~/.cache/streamscore/native (numpy fallback without a compiler).
native: $(STAMP)
	@$(BIN)/python -c "from schemas.codec.native import lib; print('native kernels:', 'built' if lib() else 'unavailable, numpy fallback')"

demo: setup
	$(BIN)/streamscore demo --seconds 30 --rate 20000

# Type check, unit tests (no services), then integration tests (a real broker and Redis, started by the fixtures).
test: setup
	$(BIN)/python -m mypy consumers sinks schemas models streamscore monitoring
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit $(PYTEST_ARGS)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/integration $(PYTEST_ARGS)

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit $(PYTEST_ARGS)

integration: setup
	$(BIN)/python -m pytest -q tests/integration $(PYTEST_ARGS)

bench: setup
	$(BIN)/python -m bench.run

# The chaos scenarios on a local 3-broker cluster (about 30 minutes here), then the README's table from their results.
CHAOS_ARGS ?=
chaos: setup
	$(BIN)/python -m bench.chaos $(CHAOS_ARGS); rc=$$?; $(BIN)/python -m bench.chaos --table --write-readme; exit $$rc

lint: $(STAMP)
	$(BIN)/python -m mypy consumers sinks schemas models streamscore

dev-up: setup
	$(BIN)/streamscore dev up

dev-down:
	$(BIN)/streamscore dev down

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache
