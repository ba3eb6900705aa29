# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv system-deps test unit integration lint demo clean e2e docs

$(VENV)/.installed: requirements.lock requirements-dev.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes -r requirements.lock -r requirements-dev.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

venv: $(VENV)/.installed

# Style and layers: ruff's rules and formatting, mypy --strict, the layer contract in pyproject.toml (import-linter),
# and spelling (codespell).
lint: venv
	$(BIN)/ruff check emailsync harness tests demo bench
	$(BIN)/ruff format --check emailsync harness tests demo bench
	$(BIN)/mypy --strict emailsync harness
	$(BIN)/lint-imports
	$(BIN)/codespell emailsync harness tests docs demo bench debian packaging systemd README.md CONTRIBUTING.md Makefile

# Tools the tests run besides Python: faketime (hosts with skewed clocks), openssl (a self-signed backend),
# pgbouncer (email-sync behind a connection pooler; the tests start their own, Debian's service stays off),
# PostgreSQL's server tools (tests/postgres.py: the session's throwaway cluster, initdb and pg_ctl; tests/standby.py
# builds a primary and a streaming standby with pg_basebackup),
# promtool from Debian's prometheus (checks the metrics textfile and the alerting rules; without its recommended
# node-exporter).
system-deps:
	@command -v faketime >/dev/null && command -v openssl >/dev/null && test -x /usr/sbin/pgbouncer && \
		ls /usr/lib/postgresql/*/bin/pg_basebackup >/dev/null 2>&1 && command -v promtool >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq faketime openssl pgbouncer \
			postgresql >/dev/null && \
		  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

# Every tier pytest runs by itself (pyproject.toml's testpaths): tests/unit, tests/integration and tests/deb.
test: lint system-deps
	$(BIN)/pytest

# tests/unit: each module's tests, the cycle on SQLite; no database server, no network beyond 127.0.0.1, no
# PostgreSQL binaries needed. Well under a minute.
unit: venv
	$(BIN)/pytest tests/unit

# tests/integration: PostgreSQL (a throwaway cluster of the session's own), PgBouncer, the standby, whole processes.
integration: venv system-deps
	$(BIN)/pytest tests/integration

# End-to-end: email-sync under a real systemd in a Debian 12 container (root; caches under /var/cache/email-sync-e2e).
e2e: venv
	$(BIN)/pytest tests/e2e

# The example configuration (every key) and the configuration reference, rendered from the keys in
# emailsync/config/settings.py; commit both.
docs: venv
	$(BIN)/email-sync config --sample >packaging/email-sync.toml.new && mv packaging/email-sync.toml.new packaging/email-sync.toml
	$(BIN)/email-sync config --markdown >docs/configuration.md.new && mv docs/configuration.md.new docs/configuration.md

demo: venv
	$(BIN)/python demo/demo.py

clean:
	rm -rf $(VENV) $(BENCH_VENV) .mypy_cache .ruff_cache .pytest_cache

# Benchmark (not a test): seeds PostgreSQL on 127.0.0.1:5432, runs real `email-sync run` cycles against a loopback
# backend, compares with the old sequential loop, writes bench/results/<timestamp>.json. About 15-20 minutes;
# `make bench BENCH_ARGS=--quick` for a 2-minute smoke run. See bench/bench.py --help for the options.
# It measures email-sync as the package runs it: in a venv of Debian's /usr/bin/python3 (the interpreter the .deb's
# venv is bound to; .venv's may be another build, e.g. pyenv's without PGO, and slower), with the locked deps and
# this tree's emailsync installed afresh, not editable. BENCH_VENV_BIN=.venv/bin measures the development venv.
BENCH_VENV := .bench-venv
BENCH_VENV_BIN ?= $(BENCH_VENV)/bin
$(BENCH_VENV)/.installed: requirements.lock
	@/usr/bin/python3 -c 'import ensurepip' 2>/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; }
	/usr/bin/python3 -m venv --clear $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --require-hashes -r requirements.lock
	touch $@

.PHONY: bench
bench: venv $(BENCH_VENV)/.installed
	rm -rf build  # setuptools builds in the tree: a module deleted since the last build would stay in build/lib
	$(BENCH_VENV)/bin/pip install --quiet --no-deps --force-reinstall .
	BENCH_VENV_BIN=$(BENCH_VENV_BIN) $(BIN)/python bench/bench.py $(BENCH_ARGS)

# Debian packages, one per supported release (packaging/releases): dist/<release>/email-sync_<version>+deb<N>_<arch>.deb
# and its source package (.dsc, orig tarballs with the wheels), each built in a clean chroot of its release (root;
# caches under /var/cache/email-sync-build), and their proofs: the release's lintian and piuparts, the installed
# package feature by feature in a booted container of the release (from the signed repository), a rebuild from the
# source package alone to the same bytes, and (newest release only) three hosts on one database upgraded one at a
# time by unattended-upgrades from the previous release (tests/rolling). SUITE=trixie: one release only.
.PHONY: deb deb-test repo
deb:
	SUITE="$(SUITE)" packaging/deb-build.sh

deb-test: venv
	SUITE="$(SUITE)" packaging/deb-test.sh

# A signed apt repository of the built packages in dist/repo (dists/<release>, component main), signed with the key
# in $$EMAIL_SYNC_REPO_KEY (an armored secret key file), or a throwaway test key it makes and says so.
repo:
	SUITE="$(SUITE)" packaging/repo.sh
