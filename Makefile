# The two set-up commands of the README. Each creates .venv, installs what it needs, and runs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: local test install bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt

# Emulator + function + event bridge; uploads samples/, prints the rows, stops.
local: install
	$(BIN)/python -m segmentation.local up --demo --once

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/bench.py
