# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# `make run` installs only what the service needs; the tools of tests, lint, the demo and
# the benchmarks come with the first target that needs them.
RUNTIME := $(VENV)/.installed-runtime
DEV     := $(VENV)/.installed-dev

.PHONY: run test lint demo fmt bench clean

$(RUNTIME): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $(RUNTIME)

$(DEV): $(RUNTIME)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(DEV)

## run: start the bridge (SQLite under ./data/ unless config.toml says otherwise)
run: $(RUNTIME)
	$(BIN)/coder-bridge serve

## test: lint, type-check, then the whole test suite (needs PostgreSQL on 127.0.0.1:5432)
test: lint
	$(BIN)/python -m pytest --basetemp=$(CURDIR)/.pytest-tmp

lint: $(DEV)
	$(BIN)/ruff check .
	$(BIN)/mypy --strict service
	$(BIN)/lint-imports
	VENV=$(VENV) bash deploy/lint.sh

## demo: the bridge against the Coder and GitHub fakes: link, serve, a labelled issue, its comment
demo: $(DEV)
	$(BIN)/python -m tests.fakes.demo run

fmt: $(DEV)
	$(BIN)/ruff check --fix .

bench: $(DEV)
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/e2e.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
