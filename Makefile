# Two entry points: `make demo` (the whole pipeline on the embedded digits sample, CPU)
# and `make test` (the test suite). Both create .venv and .venv-triton on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch/torchvision versions that this project is developed and tested with.
TORCH := torch==2.14.1 torchvision==0.29.1
# The local Triton server's own Python environment (nvidia-pytriton, numpy<2 for its Python
# backend stub), where rtk looks by default: beside .venv (toolkit/triton/backend_env.py).
TRITON_ENV := $(VENV)-triton

.PHONY: demo test setup lint clean

# numpy>=2: rtk's own environment runs numpy 2, as current PyTorch stacks do (an older .venv
# is upgraded); only .venv-triton keeps numpy<2.
$(BIN)/rtk: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[test]' 'numpy>=2'
	touch $(BIN)/rtk

# rtk triton-env creates the environment or brings its packages up to date; the stamp is
# written only once it succeeded, so an interrupted install is redone.
$(TRITON_ENV)/rtk.stamp: $(BIN)/rtk toolkit/triton/backend_env.py
	$(BIN)/rtk triton-env $(TRITON_ENV)
	touch $@

setup: $(BIN)/rtk $(TRITON_ENV)/rtk.stamp

demo: setup
	PATH=$(CURDIR)/$(BIN):$$PATH ./scripts/demo.sh

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check toolkit tests benchmarks

clean:
	rm -rf demo .pytest_cache
