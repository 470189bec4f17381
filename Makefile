# make setup: create .venv and install the project with the tested versions (constraints.txt)
# make run:   the main job on the embedded MNIST 0/1/2 subset
# make test:  the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run test lint bench

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

run: setup
	$(PY) -m data_prep mnist --out data/mnist012
	$(PY) launch/study.py

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) benchmarks/bench_loader.py
	$(PY) benchmarks/bench_pretrain.py
