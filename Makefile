# PaymentPulse: `make run` serves on SQLite, `make test` runs the suite. Nothing else is needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
RUNTIME := $(VENV)/.installed-runtime
TESTING := $(VENV)/.installed-test

.PHONY: run test bench clean

# `make run` installs only what serving needs; `make test` adds the test extra on top.
$(RUNTIME): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -e .
	touch $(RUNTIME)

$(TESTING): $(RUNTIME)
	$(PIP) -e '.[test]'
	touch $(TESTING)

run: $(RUNTIME)
	$(PY) run.py serve

test: $(TESTING)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(TESTING)
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
