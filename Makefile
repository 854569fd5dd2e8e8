# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint unit fmt bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## run: start the bridge (SQLite under ./data/ unless config.toml says otherwise)
run: $(STAMP)
	$(BIN)/coder-bridge serve

## test: lint, type-check, then the whole test suite (needs PostgreSQL on 127.0.0.1:5432)
test: lint
	$(BIN)/python -m pytest --basetemp=$(CURDIR)/.pytest-tmp

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy --strict service
	$(BIN)/lint-imports
	VENV=$(VENV) bash deploy/lint.sh

fmt: $(STAMP)
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/e2e.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
