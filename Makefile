# The two commands of the README quick start each set themselves up: a virtualenv in .venv,
# then the CUDA-capable torch pinned below (pip finds it on disk where it is cached), then the project.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install fit test lint tensorboard clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e '.[dev,notebooks]'
	touch $(STAMP)

fit: $(STAMP)
	$(BIN)/twinloop fit -c configs/digits.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check project tests benchmarks

tensorboard: $(STAMP)
	$(BIN)/tensorboard --logdir lightning_logs

clean:
	rm -rf lightning_logs runs .pytest_cache
