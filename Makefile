# The README's two commands: `make demo` and `make test`. Each installs what it needs first:
# `make demo` (and `make serve`) the runtime dependencies only, `make test` also the dev tools,
# the benchmark clients and PySpark (extras dev, bench and spark). One stamp per install, so
# `make test` after `make demo` adds the extras, and `make demo` after `make test` installs
# nothing.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check
RUNTIME_STAMP := $(VENV)/.installed-runtime
DEV_STAMP     := $(VENV)/.installed-dev
WORKDIR ?= work

.PHONY: install install-dev demo test lint imports typecheck unit serve clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(RUNTIME_STAMP): pyproject.toml | $(BIN)/python
	$(PIP) -e .
	touch $@

# The dev install includes the runtime one: both stamps are fresh after it.
$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(PIP) -e ".[dev,bench,spark]"
	touch $(RUNTIME_STAMP) $@

install: $(RUNTIME_STAMP)

install-dev: $(DEV_STAMP)

demo: install
	$(BIN)/feedforge demo --workdir $(WORKDIR)

lint: install-dev
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

# The architecture's layers (import-linter contracts in pyproject.toml).
imports: install-dev
	$(BIN)/lint-imports

typecheck: install-dev
	$(BIN)/mypy

unit: install-dev
	$(BIN)/pytest

test: lint imports typecheck unit

serve: install
	$(BIN)/feedforge serve --workdir $(WORKDIR)

clean:
	rm -rf $(VENV) $(WORKDIR) .pytest_cache .mypy_cache .ruff_cache
