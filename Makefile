# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv system-deps test lint demo clean e2e

$(VENV)/.installed: requirements.lock requirements-dev.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes -r requirements.lock -r requirements-dev.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

venv: $(VENV)/.installed

lint: venv
	$(BIN)/ruff check emailsync tests demo
	$(BIN)/mypy --strict emailsync

# Tools the tests run besides Python: faketime (hosts with skewed clocks), openssl (a self-signed backend).
system-deps:
	@command -v faketime >/dev/null && command -v openssl >/dev/null || \
		{ apt-get update -qq && apt-get install -y -qq faketime openssl >/dev/null; }

test: lint system-deps
	$(BIN)/pytest

# End-to-end: email-sync under a real systemd in a Debian 12 container (root; caches under /var/cache/email-sync-e2e).
e2e: venv
	$(BIN)/pytest tests/e2e

demo: venv
	$(BIN)/python demo/demo.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
