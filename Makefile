# Quick start: `make demo` (sample image → convolve on the local cluster → PNG) and `make test`.
# Both create .venv and install what they need on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# CPU engines are installed for the tests so the conformance suite covers them.
TEST_EXTRAS := test,numba,tensorflow

.PHONY: demo test install bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed-demo: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[demo]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[$(TEST_EXTRAS)]'
	touch $@

install: $(VENV)/.installed-demo

demo: $(VENV)/.installed-demo
	$(BIN)/python examples/demo.py

# Lint and format check first (ruff, configured in pyproject.toml), then the suite.
test: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

# The whole benchmark suite (≤ 20 min on 2 cores): rewrites benchmarks/RESULTS.md.
bench: $(VENV)/.installed-test
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) demo-output build dist *.egg-info
