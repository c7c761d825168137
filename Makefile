# Everyday commands. `make test` is exactly what CI runs after installing (see .ci/run).
PY ?= python3

.PHONY: install test test-fast lint format bench gpu-suite

install:
	$(PY) -m pip install -q torch==2.13.0 "setuptools>=77.0.3" ninja
	$(PY) -m pip install -q --no-build-isolation -e ".[dev,train]"

test:
	$(PY) -m pytest -q -n 2 --dist loadfile

# No slow, distributed or GPU tests: a quick loop while editing.
test-fast:
	$(PY) -m pytest -q -m "not slow and not distributed and not gpu"

lint:
	ruff check .
	ruff format --check .

format:
	ruff check --fix .
	ruff format .

# CPU benchmarks, one after the other (never two timing runs at once).
bench:
	$(PY) -m benchmarks.bench_contrastive
	$(PY) -m benchmarks.bench_soft_target
	$(PY) -m benchmarks.bench_augment

# On a GPU machine: build, GPU tests, benchmarks, summary into OUT (see benchmarks/gpu_suite.sh).
gpu-suite:
	bash benchmarks/gpu_suite.sh $(or $(OUT),out/gpu)
