# ntkflow: `make run` runs the default experiment, `make test` the test suite; each sets up .venv.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
PRESET  ?= quick
ARGS    ?=

.PHONY: venv run test test-fast bench lint clean chromium

venv: $(VENV)/.installed

# torch first, pinned to the CPU build on disk/PyPI (a bare `torch` would pull CUDA wheels).
$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,cluster]'
	touch $@

run: venv
	$(BIN)/ntkflow run --preset $(PRESET) $(ARGS)

# Debian's chromium + chromium-driver for tests/test_browser.py (skipped without them).
chromium:
	.ci/install-chromium

test: venv chromium
	$(BIN)/ruff check .
	$(BIN)/pytest -q -n 4 --dist loadgroup --timeout=900 --durations=15

test-fast: venv
	$(BIN)/pytest -q -n 2 -m "not slow"

bench: venv
	$(BIN)/python benchmarks/gram.py
	$(BIN)/python benchmarks/gram_dask.py
	$(BIN)/python benchmarks/kernels_only_run.py
	$(BIN)/python benchmarks/trial_large.py
	$(BIN)/python benchmarks/train_step.py --steps 50
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/prefect_floor.py
	$(BIN)/python benchmarks/cluster_paths.py

lint: venv
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) runs .pytest_cache
