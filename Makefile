# The two commands of the README. Each sets up its virtual environments on a fresh machine, then runs.
# TORCH pins the CPU build that lies on this project's machines; on a GPU machine: make demo TORCH=torch
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
# The lowest supported release of every dependency (pyproject's lower bounds), for the second test run.
MIN_VENV := .venv-min
# The oldest transformers a checkpoint's remote code must load on, without this package.
REMOTE_VENV := .venv-remote-code

$(BIN)/llava: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

$(MIN_VENV)/bin/llava: pyproject.toml constraints-minimum.txt
	$(PYTHON) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/pip install --quiet --upgrade pip
	$(MIN_VENV)/bin/pip install --quiet -c constraints-minimum.txt torch
	$(MIN_VENV)/bin/pip install --quiet -c constraints-minimum.txt -e ".[test]"
	touch $@

$(REMOTE_VENV)/ready: constraints-remote-code.txt
	$(PYTHON) -m venv $(REMOTE_VENV)
	$(REMOTE_VENV)/bin/pip install --quiet --upgrade pip
	$(REMOTE_VENV)/bin/pip install --quiet -c constraints-remote-code.txt torch transformers pillow
	touch $@

.PHONY: setup demo test test-newest test-minimum lint
setup: $(BIN)/llava

demo: setup
	$(BIN)/llava demo

# The whole suite against the newest releases (slow tests included, remote code also on the oldest transformers),
# then the fast part again against the lowest supported releases.
test: test-newest test-minimum

# lmms-eval for tests/test_lmms_eval.py, without the dependencies it declares (they would replace the CPU torch with
# a multi-GB CUDA build): itself and what importing its evaluator needs.
LMMS_EVAL_IMPORTS := lmms-eval loguru evaluate sacrebleu portalocker tabulate colorama lxml tenacity aiohttp multidict \
	yarl propcache aiohappyeyeballs aiosignal frozenlist pytablewriter DataProperty chardet mbstrdecoder pathvalidate \
	python-dateutil six tabledata tcolorpy typepy
$(VENV)/lmms-eval-ready: $(BIN)/llava
	$(BIN)/pip install --quiet --no-deps $(LMMS_EVAL_IMPORTS)
	touch $@

test-newest: setup $(REMOTE_VENV)/ready $(VENV)/lmms-eval-ready
	$(BIN)/ruff check .
	LLAVA_REMOTE_CODE_PYTHON=$(CURDIR)/$(REMOTE_VENV)/bin/python $(BIN)/python -m pytest -q

test-minimum: $(MIN_VENV)/bin/llava
	$(MIN_VENV)/bin/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
