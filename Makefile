# PaymentPulse: `make run` serves on SQLite, `make test` runs the suite. Nothing else is needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
RUNTIME := $(VENV)/.installed-runtime
TESTING := $(VENV)/.installed-test
LINTING := $(VENV)/.installed-lint

.PHONY: run demo test lint bench clean

# `make run` installs only what serving needs; `make test` adds the test extra on top.
$(RUNTIME): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -e .
	touch $(RUNTIME)

$(TESTING): $(RUNTIME)
	$(PIP) -e '.[test]'
	touch $(TESTING)

$(LINTING): $(RUNTIME)
	$(PIP) -e '.[lint]'
	touch $(LINTING)

run: $(RUNTIME)
	$(PY) run.py serve

# A sandbox project (the built-in Stripe simulator: offline, no Stripe account), then `make run`.
demo: $(RUNTIME)
	$(PY) run.py create-project Demo --sandbox
	$(PY) run.py serve

test: $(TESTING)
	$(PY) -m pytest $(PYTEST_ARGS)

# Findings fail; `$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .` fixes most of them.
lint: $(LINTING)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: $(TESTING)
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
