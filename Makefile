# The two set-up commands of the README (`make local`, `make test`), the fast gate `make check`, and
# `make lock`. Each creates .venv and installs the hashed dev lock it needs.
PYTHON ?= python3
VENV ?= .venv
BIN ?= $(VENV)/bin
# `make check INSTALL= BIN=/path/to/venv/bin` runs the gate with an existing virtualenv, installing nothing.
INSTALL ?= install
RUFF ?= $(BIN)/ruff
# Without the incremental cache: a stale cache once passed here what a fresh CI checkout failed.
MYPY ?= $(BIN)/mypy --no-incremental
# checkov (tests/test_terraform.py) pins libraries that conflict with requirements.txt, so it
# lives in its own virtualenv.
TOOLS := .venv-tools
CHECKOV_VERSION := 3.3.30
# uv resolves the lock files; it runs from a virtualenv of its own.
LOCKER := .venv-lock
UV_VERSION := 0.13.9
# The fast tier: no HTTP stand-in, functions-framework process, load run, checkov, clean venv or fresh clone.
FAST := not emulator and not load and not terraform and not freshclone and not slow

.PHONY: local test check lint install tools bench lock

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check --require-hashes -r requirements-dev.txt

# Only the tests need checkov.
tools: $(TOOLS)/.checkov-$(CHECKOV_VERSION)

$(TOOLS)/.checkov-$(CHECKOV_VERSION):
	rm -rf $(TOOLS)
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check checkov==$(CHECKOV_VERSION)
	touch $@

# Emulator + function + event bridge; uploads samples/, prints the rows, stops.
local: install
	$(BIN)/python -m devtools.local up --demo --once

lint:
	@status=0; $(RUFF) check . || status=1; $(RUFF) format --check . || status=1; $(MYPY) || status=1; exit $$status

# For every edit: lint, types and the tests that need no server, subprocess or virtualenv.
check: $(INSTALL)
	@status=0; $(MAKE) --no-print-directory lint || status=1; \
		$(BIN)/python -m pytest -q -m "$(FAST)" || status=1; exit $$status

# Everything, as CI runs it.
test: install tools
	@status=0; $(MAKE) --no-print-directory lint || status=1; $(BIN)/python -m pytest || status=1; exit $$status

bench: install
	$(BIN)/python benchmarks/bench.py

# Re-resolve requirements.txt (deployed) and requirements-dev.txt from the .in files, with hashes.
# The dev lock is constrained to the deployed one, so tests run exactly what is deployed.
lock: $(LOCKER)/.uv-$(UV_VERSION)
	$(LOCKER)/bin/uv pip compile requirements.in -o requirements.txt --generate-hashes --universal \
		--python-version 3.11 --custom-compile-command "make lock" --quiet
	$(LOCKER)/bin/uv pip compile requirements-dev.in -o requirements-dev.txt --generate-hashes --universal \
		--python-version 3.11 --custom-compile-command "make lock" --quiet

$(LOCKER)/.uv-$(UV_VERSION):
	rm -rf $(LOCKER)
	$(PYTHON) -m venv $(LOCKER)
	$(LOCKER)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	touch $@
