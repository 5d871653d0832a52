# Two commands do all the set-up on a fresh Debian machine (as root):
#   make deploy   -> system packages + venv, then `ensemble deploy` of the embedded local fleet
#   make test     -> system packages + venv, then lint, import contracts and the whole test suite
#                    (real hosts included)
# and, while working, the fast tier (a couple of minutes, no real hosts, nothing slow):
#   make check    -> system packages + venv, then lint, import contracts, unit and render tests
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# the fast tier: everything but real throwaway hosts and tests over a minute
FAST := not realhost and not slow
# two test processes (pytest-xdist), each taking whole files (module-scoped fleets stay in one process):
# real-host tests mostly wait on their guests, so two fleets at once on a 2-core machine finish sooner
PARALLEL ?= -n 2 --dist loadfile

.PHONY: deploy test check lint bench system venv clean-local

system:
	scripts/install-system-packages

# Exact versions from constraints.txt (regenerate after a deliberate upgrade:
# `$(BIN)/pip freeze --exclude-editable > constraints.txt`); re-run when either file changes.
$(BIN)/ensemble: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $@

venv: $(BIN)/ensemble

deploy: system venv
	$(BIN)/ensemble deploy

lint: venv
	$(BIN)/ruff check .
	$(BIN)/lint-imports

check: system venv lint
	$(BIN)/pytest -ra $(PARALLEL) -m "$(FAST)" $(PYTEST_ARGS)

test: system venv lint
	$(BIN)/pytest -ra $(PARALLEL) $(PYTEST_ARGS)

bench: system venv
	$(BIN)/python bench/run_all.py

clean-local: venv
	$(BIN)/ensemble fleet destroy --yes
