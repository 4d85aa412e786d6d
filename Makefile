# One command per job. `make chat` and `make test` are the README's two commands: each sets up what it needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)
# llama-cpp-python has no Linux wheel: it compiles from source once (a few minutes); use every core, and skip its
# multimodal library (mtmd/llava), which miniagent never loads: 6.5 instead of 8.5-9.5 minutes on 2 cores here.
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)
export CMAKE_ARGS ?= -DLLAVA_BUILD=OFF

.PHONY: help
help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

$(VENV)/.installed: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --all-extras --python $(PYTHON)
	@touch $@

.PHONY: install
install: $(VENV)/.installed ## Create .venv with every extra and the dev tools, from uv.lock

.PHONY: chat
chat: install ## Chat with the bundled local model, offline
	$(VENV)/bin/miniagent chat

.PHONY: format
format: install ## Format and fix lint in place
	$(VENV)/bin/ruff format src tests bench
	$(VENV)/bin/ruff check --fix src tests bench

.PHONY: lint
lint: install ## Ruff lint and format check
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

.PHONY: typecheck
typecheck: install ## mypy --strict on src, tests and bench
	$(VENV)/bin/mypy

.PHONY: services
services: ## Install what the tests drive if missing (apt-get, as root): redis-server and rabbitmq-server (the tests start their own), Node.js
	@bash scripts/ensure-redis.sh
	@bash scripts/ensure-rabbitmq.sh
	@bash scripts/ensure-node.sh

.PHONY: pytest
pytest: install services ## The test suite only (unit, integration with the real local model, chaos)
	rm -f .coverage .coverage.*
	$(VENV)/bin/coverage run -m pytest
	$(VENV)/bin/coverage combine --quiet
	$(VENV)/bin/coverage report --fail-under=85

.PHONY: test
test: ## Set up, then lint, type-check and run every test (what CI runs), printing each phase's duration
	@bash scripts/test.sh

.PHONY: bench
bench: install ## Overhead, concurrency, import and construction benchmarks vs the raw openai client
	$(VENV)/bin/python bench/run.py $(if $(wildcard .venv-peers/bin/python),--peers-python .venv-peers/bin/python,)
	$(VENV)/bin/python bench/resilience.py

.PHONY: bench-peers
bench-peers: $(UV) ## Install the peer frameworks into .venv-peers, then run the benchmark with them
	$(UV) venv --quiet --allow-existing --python $(PYTHON) .venv-peers
	$(UV) pip install --quiet --python .venv-peers/bin/python -r bench/requirements-peers.txt
	$(MAKE) bench

.PHONY: bench-server
bench-server: install ## The server's load test, soak and added-latency benchmark (about 6 minutes)
	$(VENV)/bin/python bench/server_load.py
	$(VENV)/bin/python bench/server_soak.py
	$(VENV)/bin/python bench/server_latency.py

.PHONY: bench-litellm
bench-litellm: $(UV) install ## Install LiteLLM's proxy into .venv-litellm, then run the latency benchmark against it
	$(UV) venv --quiet --allow-existing --python $(PYTHON) .venv-litellm
	$(UV) pip install --quiet --python .venv-litellm/bin/python -r bench/requirements-litellm.txt
	$(VENV)/bin/python bench/server_latency.py --litellm .venv-litellm/bin/litellm

.PHONY: bench-queue
bench-queue: install services ## Background runs: jobs/s and queue latency (SQLite, RabbitMQ, Redis; 1/2/4 workers), embedding batching
	$(VENV)/bin/python bench/queue_throughput.py
	$(VENV)/bin/python bench/embed_batching.py

.PHONY: clean
clean: ## Remove the virtual environments and caches
	rm -rf $(VENV) $(TOOLS) .venv-peers .venv-litellm .mypy_cache .ruff_cache .pytest_cache .coverage
