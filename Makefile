# Quick start: `make demo` (sample image → convolve with the defaults → PNG) and `make test`.
# Both create .venv and install what they need on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# numba and ducc0 are core dependencies (`make demo` gets them without an extra); TensorFlow is
# installed for the tests so the conformance suite covers it too.
TEST_EXTRAS := test,tensorflow
# `make gpu-check` runs with this Python as it is (it installs nothing): .venv's when present.
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))

.PHONY: demo test test-latest constraints install bench gpu-check gpu-wheels clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed-demo: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[demo]'
	touch $@

# Tests install the versions known to pass (constraints/test.txt), so a new release of a test
# tool cannot turn CI red unseen; `make test-latest` runs the suite on the newest releases, and
# `make constraints` refreshes the pins on purpose, recording what changed.
$(VENV)/.installed-test: pyproject.toml constraints/test.txt | $(BIN)/python
	$(BIN)/python -m pip install -q -c constraints/test.txt -e '.[$(TEST_EXTRAS)]'
	touch $@

install: $(VENV)/.installed-demo

demo: $(VENV)/.installed-demo
	$(BIN)/python examples/demo.py

# Lint and format check first (ruff, configured in pyproject.toml), then the suite.
test: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

# The suite against the newest releases pyproject's ranges allow, in a venv of its own: a failure
# here and not in `make test` is a new release, not our change.
test-latest:
	rm -rf .venv-latest
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install -q --upgrade pip
	.venv-latest/bin/python -m pip install -q -e '.[$(TEST_EXTRAS)]'
	.venv-latest/bin/python -m pytest

constraints:
	PYTHON=$(PYTHON) EXTRAS=$(TEST_EXTRAS) constraints/refresh.sh

# The whole benchmark suite (≤ 20 min on 2 cores): rewrites benchmarks/RESULTS.md.
bench: $(VENV)/.installed-test
	$(BIN)/python benchmarks/run_all.py

# Every GPU test (pytest -m gpu, the numba-cuda simulator and PTX checks) and the GPU benchmark,
# in under 8 minutes, without network: gpu-check/results.md, JUnit XML and logs beside it.
# Needs CuPy (cupy-cuda12x or cupy-cuda13x) and numba-cuda in GPU_PYTHON; TensorFlow optional.
gpu-check:
	$(GPU_PYTHON) benchmarks/gpu_check.py --out gpu-check

# The wheels a lent GPU machine lacks (no network there), into .whl/ for the run call's carry:
# `make gpu-wheels KIND=h200` (or h100); docs/gpu.md gives the command to run there.
KIND ?= h100
gpu-wheels:
	$(PYTHON) benchmarks/device_wheels.py --kind $(KIND)

clean:
	rm -rf $(VENV) .venv-latest demo-output gpu-check build dist *.egg-info
