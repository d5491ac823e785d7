# Two commands on a fresh machine: `make run` and `make test`. Both set themselves up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
JARS := deploy/kafka/target/libs/.complete

.PHONY: setup run test test-unit test-faults lint schemas bench bench-quick clean kafka-start kafka-stop

setup: $(STAMP) $(JARS)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# Apache Kafka's broker jars come from Maven Central (see deploy/kafka/pom.xml).
$(JARS): deploy/kafka/pom.xml
	mvn -q -B -f deploy/kafka/pom.xml dependency:copy-dependencies
	touch $@

## Local broker, one worker, simulated telephony and billing, live view (Ctrl-C stops all).
run: setup
	$(BIN)/meter demo

## The whole suite: unit, agent and integration tests (starts its own Kafka broker).
test: setup
	$(BIN)/pytest

test-unit: setup
	$(BIN)/pytest tests/unit tests/agents

## The long form of the fault suite: 20 kill -9 cycles (CI runs 5), then the other
## scenarios; 20 cycles outlast the suite's 300 s per-test limit, hence --timeout.
test-faults: setup
	METER_FAULT_CYCLES=20 $(BIN)/pytest --timeout=1800 -s \
		tests/integration/test_faults.py tests/integration/test_faults_more.py

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## Benchmark: ceiling vs one worker's drain rate, latency, recovery (bench/results.json;
## ~7.5 min; add --scaling by hand for the two-worker drain, ~4.5 min more).
bench: setup
	$(BIN)/python -m bench.run --out bench/results.json

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
	rm -rf $(VENV) deploy/kafka/target .run .pytest_cache .mypy_cache .ruff_cache
