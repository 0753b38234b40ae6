# The two set-up commands of the README. Each creates .venv, installs what it needs, and runs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# checkov (tests/test_terraform.py) pins libraries that conflict with requirements.txt, so it
# lives in its own virtualenv.
TOOLS := .venv-tools
CHECKOV_VERSION := 3.3.30

.PHONY: local test install tools bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt

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

test: install tools
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/bench.py
