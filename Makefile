# The two commands of the README. Each sets up .venv on a fresh machine, then runs.
# TORCH pins the CPU build that lies on this project's machines; on a GPU machine: make demo TORCH=torch
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/llava: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

.PHONY: setup demo test lint
setup: $(BIN)/llava

demo: setup
	$(BIN)/llava demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
