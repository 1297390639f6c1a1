# clipsearch: the targets the README names.
#   make demo   serve MNIST and emoji search (first models within minutes, final ones trained behind them), http://localhost:8080
#   make test   lint, type-check and run the whole test suite (CI), printing the 15 slowest tests
#   make test-fast   the tests not marked slow (no lint)
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup protos lint test test-fast demo bench clean

$(STAMP): pyproject.toml requirements.lock
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, exactly pinned: a looser spec would pull the multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	# Every service's extra: the demo and the tests run them all.
	$(PY) -m pip install -q -c requirements.lock -e '.[encoder,gateway,indexer,training,dev]'
	touch $(STAMP)

setup: $(STAMP)

protos: $(STAMP)
	$(PY) scripts/gen_protos.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest -q --durations=15

test-fast: $(STAMP)
	$(VENV)/bin/pytest -q -m "not slow"

demo: $(STAMP)
	$(PY) -m scripts.demo

bench: $(STAMP)
	$(PY) -m bench.encoder
	$(PY) -m bench.indexer
	$(PY) -m bench.gateway

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
