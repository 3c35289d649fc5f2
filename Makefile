# nettrain: `make run` (default comparison) and `make test` (test suite).
# Both create .venv when missing; torch==2.13.0 is installed first so that pip
# takes the local CPU build instead of resolving a CUDA wheel for `torch>=2.4`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,tensorboard]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/nettrain compare configs/default.toml --out runs/default --force

test: $(STAMP)
	$(BIN)/ruff check .
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python benchmarks/sim_throughput.py

clean:
	rm -rf $(VENV) runs build src/*.egg-info
