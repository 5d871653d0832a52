# Two commands do all the set-up on a fresh Debian machine (as root):
#   make deploy   -> system packages + venv, then `ensemble deploy` of the embedded local fleet
#   make test     -> system packages + venv, then the whole test suite (real hosts included)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: deploy test lint bench system venv clean-local

system:
	scripts/install-system-packages

$(BIN)/ensemble: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/ensemble

deploy: system venv
	$(BIN)/ensemble deploy

test: system venv
	$(BIN)/ruff check .
	$(BIN)/pytest -ra $(PYTEST_ARGS)

bench: system venv
	$(BIN)/python bench/run_all.py

clean-local: venv
	$(BIN)/ensemble fleet destroy --yes
