# The two set-up commands: `make up` runs Gatehouse on its embedded defaults, `make test` runs
# the whole suite. Both build .venv from setup.cfg on a machine with Python 3.11, make and apt.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: up test bench clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Stamp files re-run the install when the package metadata changes.
$(VENV)/.installed: $(BIN)/activate setup.cfg pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(BIN)/activate setup.cfg pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

up: $(VENV)/.installed
	$(BIN)/gatehouse up

test: $(VENV)/.installed-test
	$(BIN)/pytest

bench: $(VENV)/.installed-test
	$(BIN)/python bench/registry.py

clean:
	rm -rf $(VENV) build *.egg-info
