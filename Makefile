# ntkflow: `make run` runs the default experiment, `make test` the test suite; each sets up .venv.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
PRESET  ?= quick
ARGS    ?=

.PHONY: venv run test test-fast bench lint clean chromium gpu-wheels gpu-check

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

# Bytecode first: where PYTHONDONTWRITEBYTECODE is set (as on CI's machines), no process would
# write it, and each of the suite's hundreds of Python processes would compile ntkflow, flows and
# the test helpers again (~0.4 CPU-s each; compileall skips files whose bytecode is current).
BYTECODE := $(BIN)/python -m compileall -q ntkflow flows tests benchmarks

test: venv chromium
	$(BIN)/ruff check .
	$(BYTECODE)
	$(BIN)/pytest -q -n 4 --dist loadgroup --timeout=900 --durations=15

# About a minute: no end-to-end runs (-m "not slow") and no S3 backend cases (moto_server);
# `make test` runs both.
test-fast: venv
	$(BYTECODE)
	$(BIN)/pytest -q -n 2 -m "not slow" -k "not s3" --durations=15

bench: venv
	$(BIN)/python benchmarks/gram.py
	$(BIN)/python benchmarks/gram_dask.py
	$(BIN)/python benchmarks/kernels_only_run.py
	$(BIN)/python benchmarks/trial_large.py
	$(BIN)/python benchmarks/train_step.py --steps 50
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/prefect_floor.py
	$(BIN)/python benchmarks/cluster_paths.py
	$(BIN)/python benchmarks/s3_requests.py

# A lent GPU machine has no package index: `make gpu-wheels` (here, with PyPI) puts the wheels
# that benchmarks/gpu_check.py needs and it lacks into .whl/ (CPython 3.12, manylinux x86_64,
# pinned in benchmarks/gpu_wheels.txt), then checks the set offline and prints its total.
GPU_WHEEL_TAGS := --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
	--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64
gpu-wheels: venv
	rm -rf .whl
	$(BIN)/pip download -q --disable-pip-version-check --no-deps $(GPU_WHEEL_TAGS) -d .whl \
		-r benchmarks/gpu_wheels.txt
	$(BIN)/python benchmarks/gpu_wheels.py .whl

# On the GPU machine, with its own Python (torch, cupy): the whole check in under 8 minutes
# (docs/gpu.md). No venv: nothing can be installed there but the wheels in .whl/.
# `make gpu-check ARGS=--dry-run` runs every step on the CPU at tiny sizes.
gpu-check:
	$(PY) benchmarks/gpu_check.py $(ARGS)

lint: venv
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) runs .pytest_cache
