# The two commands a fresh machine needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= 1

.PHONY: run test install install-dev lint worker beat serve catalog

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Stamp files make re-runs cheap: pip runs again only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

run: install
	$(BIN)/python manage.py migrate --no-input
	$(BIN)/python manage.py bootstrap_demo --host $(HOST) --port $(PORT)
	$(BIN)/python manage.py collectstatic --no-input --verbosity 0
	$(BIN)/python -m novakit.runtime.serve --process all --host $(HOST) --port $(PORT) --workers $(WORKERS)

test: install-dev
	$(BIN)/pytest $(PYTEST_ARGS)

# Regenerates the shipped catalog from genai-prices (platform/catalog/generate.py); review the diff.
catalog: install
	$(BIN)/pip install --quiet -e '.[catalog]'
	$(BIN)/python platform/catalog/generate.py

# ruff, mypy ([tool.mypy]), then the apps' layers (import-linter's contract: no import cycles).
lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

worker: install
	$(BIN)/celery -A novakit worker --loglevel=INFO

beat: install
	$(BIN)/celery -A novakit beat --loglevel=INFO

# --- Benchmark (bench/): `make bench` writes bench/results/REPORT.md and a plot;
# `make bench-quick` is a smaller run (under two minutes) into bench/results/quick/.
# Needs the local PostgreSQL and Redis; uses database BENCH_DB_NAME and BENCH_REDIS_URL.
LITELLM_VENV := bench/.venv-litellm
# Pinned: the newest litellm on PyPI (1.110.x) requires a `litellm-proxy` package
# that is not published there, so `litellm[proxy]` unpinned does not install.
LITELLM_SPEC ?= litellm[proxy]==1.106.12

.PHONY: bench bench-quick install-bench

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[bench]'
	touch $(VENV)/.installed $@

# A failed LiteLLM install does not stop the benchmark: the report says why
# (from bench/results/raw/litellm-install.log) and measures the other targets.
$(LITELLM_VENV)/.installed:
	@mkdir -p bench/results/raw
	test -x $(LITELLM_VENV)/bin/python || $(PYTHON) -m venv $(LITELLM_VENV)
	@if $(LITELLM_VENV)/bin/pip install --quiet '$(LITELLM_SPEC)' \
		> bench/results/raw/litellm-install.log 2>&1; then touch $@; \
	else echo "LiteLLM did not install (see bench/results/raw/litellm-install.log);" \
		"the benchmark goes on without it"; fi

install-bench: $(VENV)/.installed-bench
	@$(MAKE) --no-print-directory $(LITELLM_VENV)/.installed

bench: install-bench
	$(BIN)/python bench/run.py

bench-quick: install-bench
	$(BIN)/python bench/run.py --quick
