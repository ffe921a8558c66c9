# The README's two commands: `make demo` and `make test`. Both install what they need first.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
WORKDIR ?= work

.PHONY: install demo test lint typecheck unit serve clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/feedforge demo --workdir $(WORKDIR)

lint: install
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest

test: lint typecheck unit

serve: install
	$(BIN)/feedforge serve --workdir $(WORKDIR)

clean:
	rm -rf $(VENV) $(WORKDIR) .pytest_cache .mypy_cache .ruff_cache
