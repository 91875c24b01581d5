# The two commands of the README quick start each set themselves up: a virtualenv in .venv,
# then the CUDA-capable torch pinned below (pip finds it on disk where it is cached), then the project.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: help install fit test test-slow lint format tensorboard mutation clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

install: $(STAMP)  ## create .venv and install torch and the project (make fit/test do it themselves)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e '.[dev,notebooks,export,timm,loggers]'
	touch $(STAMP)

fit: $(STAMP)  ## train the default digits config, print the validation accuracy
	$(BIN)/twinloop fit -c configs/digits.yaml

# Two pytest-xdist workers, one per core, each running torch on one thread (tests/conftest.py); tests that
# read one shared run carry an xdist_group mark, and --dist loadgroup keeps each such group in one worker.
XDIST := -n 2 --dist loadgroup

test: $(STAMP)  ## the test suite but its few slow end-to-end runs (offline, CPU, 2 workers)
	$(BIN)/python -m pytest -q $(XDIST) -m "not slow"

test-slow: $(STAMP)  ## the slow end-to-end runs (stop/restart cycles, notebooks, log files, ...); CI runs them too
	$(BIN)/python -m pytest -q $(XDIST) -m slow

lint: $(STAMP)  ## ruff check, ruff format --check and mypy (configured in pyproject.toml)
	$(BIN)/ruff check project tests benchmarks
	$(BIN)/ruff format --check project tests benchmarks
	$(BIN)/mypy

format: $(STAMP)  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix project tests benchmarks
	$(BIN)/ruff format project tests benchmarks

tensorboard: $(STAMP)  ## TensorBoard over lightning_logs on port 6006
	$(BIN)/tensorboard --logdir lightning_logs

# Mutation testing of the parts both loops share (configured under [tool.mutmut] in pyproject.toml).
# A fresh run each time: mutants/ holds the mutated copy and the results (`mutmut show NAME`).
$(VENV)/.installed-mutation: $(STAMP) pyproject.toml
	$(BIN)/pip install -q -e '.[dev,notebooks,export,timm,loggers,mutation]'
	touch $@

mutation: $(VENV)/.installed-mutation  ## mutation testing of the shared parts with mutmut (20-30 min on 2 cores; not in make test); see docs/MUTATION.md
	rm -rf mutants
	$(BIN)/mutmut run
	$(BIN)/mutmut export-cicd-stats
	@cat mutants/mutmut-cicd-stats.json; echo
	$(BIN)/mutmut results

clean:  ## remove run outputs (lightning_logs, runs, mutants) and caches
	rm -rf lightning_logs runs mutants .pytest_cache
