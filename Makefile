# make setup: create .venv and install the project with the tested versions (constraints.txt)
# make run:   the main job on the embedded MNIST 0/1/2 subset
# make test:  the test suite (what CI runs)
# make test-fast: unit tests only (no process launches, no training runs), < 2 min
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# make test runs test files on this many pytest-xdist workers: the CPU count, at most 4 (each slow
# test launches up to 2 processes of its own). Whole files per worker (loadfile): a file's module
# fixtures (DeepSpeed runs, a trained teacher) are built once.
TEST_JOBS ?= $(shell $(PYTHON) -c 'import os; print(min(4, len(os.sched_getaffinity(0))))')

.PHONY: setup run test test-fast lint bench

setup: $(STAMP)

# Plain `accelerate launch` (the README's commands) reads accelerate's default config; with none it warns
# and sets `--num_processes 0`. `accelerate config default` writes one (one process on this machine's
# device, or every GPU) unless there is one already: it never overwrites a user's own.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	$(VENV)/bin/accelerate config default
	touch $(STAMP)

run: setup
	$(PY) -m data_prep mnist --val-per-class 100 --large-test-rest --unlabeled-rest --out data/mnist012
	$(PY) launch/study.py

test: setup
	$(PY) -m pytest -q -n $(TEST_JOBS) --dist loadfile

test-fast: setup
	$(PY) -m pytest -q -n $(TEST_JOBS) -m "not slow"

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) benchmarks/bench_loader.py
	$(PY) benchmarks/bench_pretrain.py
