# Two entry points: `make demo` (the whole pipeline on the embedded digits sample, CPU)
# and `make test` (the test suite). Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch/torchvision versions that this project is developed and tested with.
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test setup lint clean

$(BIN)/rtk: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(BIN)/rtk

setup: $(BIN)/rtk

demo: setup
	PATH=$(CURDIR)/$(BIN):$$PATH ./scripts/demo.sh

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check toolkit tests benchmarks

clean:
	rm -rf demo .pytest_cache
