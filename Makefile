# The two quick-start commands: `make demo` and `make test`. Each sets everything up from nothing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-all bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	# pin the CPU wheel first: an unpinned torch would pull a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/gaugec demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m ''

bench: $(STAMP)
	$(BIN)/python -m gaugec.bench discover

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis
