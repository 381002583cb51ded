# The README's two commands. Both build .venv from scratch when it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint clean venv-base venv-full

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Base install: the runtime only (no torch).
$(VENV)/.base: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

# Everything for the test suite. torch is pinned to the CPU build that lies on this
# machine's disk; installing it first keeps the train extra from pulling a CUDA build.
$(VENV)/.full: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[train,dev]'
	touch $@

demo: $(VENV)/.base
	$(BIN)/streamcad demo

test: $(VENV)/.full
	$(BIN)/python -m pytest -q -ra

lint: $(VENV)/.full
	$(BIN)/ruff check streamcad train engines benchmarks tests

clean:
	rm -rf $(VENV) build *.egg-info
