# `make train` and `make test` set everything up in .venv (Python 3.10+) and run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install train test lint clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/install_export_deps.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev,onnx]"
	bash scripts/install_export_deps.sh $(BIN)/python
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/python train.py model=xxs

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache .ruff_cache
