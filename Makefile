# Two commands on a fresh machine: `make run` and `make test`. Both set themselves up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
JARS := deploy/kafka/target/libs/.complete
# The worker's per-record path compiled with mypyc (processor/ops/compiled.py), rebuilt
# whenever a file of the packages changes.
COMPILED := .build/compiled/manifest.json
# Every Python package, the dev tools and the build backend included, pinned with its
# hashes for CPython 3.11 on Linux x86_64 (`make lock` writes it from pyproject.toml).
LOCK := requirements.lock

.PHONY: setup run test test-unit test-faults lint lock schemas bench bench-quick clean kafka-start kafka-stop

setup: $(STAMP) $(JARS) $(COMPILED)

# Only what the lock names, each file checked against its hash, wheels only (nothing is
# compiled); then the project itself, editable, with the lock's setuptools.
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --require-hashes --only-binary :all: -r $(LOCK)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $@

# A failed compile is written in the manifest and the worker runs interpreted.
$(COMPILED): $(STAMP) $(shell find processor schemas -type f -not -path '*/__pycache__/*')
	$(BIN)/python -m processor.ops.compiled

# Apache Kafka's broker jars come from Maven Central (see deploy/kafka/pom.xml).
$(JARS): deploy/kafka/pom.xml
	mvn -q -B -f deploy/kafka/pom.xml dependency:copy-dependencies
	touch $@

## Local broker, one worker, simulated telephony and billing, live view (Ctrl-C stops all).
run: setup
	$(BIN)/meter demo

## The whole suite: unit, agent and integration tests (starts its own Kafka broker).
## Two processes, each with its own broker and PostgreSQL (pytest-xdist; a file's tests
## stay together, so module fixtures such as the console's stack start once).
test: setup
	$(BIN)/pytest -n 2 --dist loadfile --durations=15

test-unit: setup
	$(BIN)/pytest tests/unit tests/agents

## The long form of the fault suite: 20 kill -9 cycles (CI runs 5), then the other
## scenarios; 20 cycles outlast the suite's 300 s per-test limit, hence --timeout.
test-faults: setup
	METER_FAULT_CYCLES=20 $(BIN)/pytest --timeout=1800 -s \
		tests/integration/test_faults.py tests/integration/test_faults_more.py

## Lint, format, types and import layers ([tool.importlinter] in pyproject.toml); the
## git hooks in .pre-commit-config.yaml run the same.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

## Rewrite requirements.lock after changing a dependency in pyproject.toml; pins that
## still fit are kept (`make lock LOCK_FLAGS=--upgrade` moves everything to the newest).
## tests/unit/test_lock.py fails while the two disagree.
lock: setup
	$(BIN)/python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))' \
	| $(BIN)/uv pip compile --quiet pyproject.toml - --extra dev --generate-hashes \
		--python-version 3.11 --python-platform x86_64-unknown-linux-gnu --only-binary :all: \
		--custom-compile-command 'make lock' $(LOCK_FLAGS) -o $(LOCK)

## Benchmark: ceiling vs one worker's drain rate, latency, recovery, marks, and the
## drain of two workers and of `--processes 2` (bench/results.json; ~10 min).
bench: setup
	$(BIN)/python -m bench.run --processes 2 --scaling --out bench/results.json

bench-quick: setup
	$(BIN)/python -m bench.run --quick --out bench/results-quick.json

## Regenerate schemas/json from the pydantic models.
schemas: setup
	$(BIN)/python -m schemas.export

kafka-start: setup
	$(BIN)/meter kafka start

kafka-stop: setup
	$(BIN)/meter kafka stop

clean:
	rm -rf $(VENV) deploy/kafka/target .build .run .pytest_cache .mypy_cache .ruff_cache
