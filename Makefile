# nettrain: `make run` (the first comparison) and `make test` (test suite).
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

# The first run: five methods on one non-IID problem with stragglers (configs/default.toml),
# timelines of a synchronous and an asynchronous one, then the HTML report of all five.
SHOWCASE := dpsgd,gradient_tracking,next,swarm,easgd_async
run: $(STAMP)
	$(BIN)/nettrain compare configs/default.toml --algorithms $(SHOWCASE) \
		swarm.quantizer=lattice swarm.bits=8 dpsgd.timeline=true swarm.timeline=true \
		--out runs/default
	$(BIN)/nettrain report runs/default

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
