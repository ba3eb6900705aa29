# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv test lint demo clean

$(VENV)/.installed: requirements.lock requirements-dev.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes -r requirements.lock -r requirements-dev.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

venv: $(VENV)/.installed

lint: venv
	$(BIN)/ruff check emailsync tests demo
	$(BIN)/mypy --strict emailsync

test: lint
	$(BIN)/pytest

demo: venv
	$(BIN)/python demo/demo.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
