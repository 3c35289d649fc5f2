# nettrain: `make run` (the first comparison) and `make test` (test suite).
# Both create .venv when missing; torch==2.13.0 is installed first so that pip
# takes the local CPU build instead of resolving a CUDA wheel for `torch>=2.4`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench mutants clean

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

# Mutation testing of the mathematical core (docs/testing.md), in its own venv so that .venv
# stays as `make test` made it; not part of `make test` or CI. Modules and tests:
# [tool.mutmut] in pyproject.toml; results are kept in mutants/ (a rerun retests what changed).
MUT_VENV := .venv-mut
MUT_STAMP := $(MUT_VENV)/.installed
MUT_CHILDREN ?= 2

$(MUT_STAMP): pyproject.toml
	test -x $(MUT_VENV)/bin/python || $(PYTHON) -m venv $(MUT_VENV)
	$(MUT_VENV)/bin/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(MUT_VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[test,mutation]'
	touch $(MUT_STAMP)

mutants: $(MUT_STAMP)
	OMP_NUM_THREADS=1 $(MUT_VENV)/bin/mutmut run --max-children $(MUT_CHILDREN)
	@$(MUT_VENV)/bin/mutmut results --all true | awk -F': ' ' \
		{ name = $$1; sub(/^ +/, "", name); sub(/\.[^.]*$$/, "", name); \
		  mods[name] = 1; count[name, $$2]++; total[name]++ } \
		END { printf "%-32s %9s %7s %8s %7s %8s %6s\n", "module", "generated", "killed", \
		        "survived", "timeout", "no tests", "other"; \
		      for (m in mods) { other = total[m] - count[m, "killed"] - count[m, "survived"] \
		                                - count[m, "timeout"] - count[m, "no tests"]; \
		        printf "%-32s %9d %7d %8d %7d %8d %6d\n", m, total[m], count[m, "killed"], \
		          count[m, "survived"], count[m, "timeout"], count[m, "no tests"], other } }' | sort
	@echo "survivors: $(MUT_VENV)/bin/mutmut results; one diff: $(MUT_VENV)/bin/mutmut show NAME"

clean:
	rm -rf $(VENV) $(MUT_VENV) mutants runs build src/*.egg-info
