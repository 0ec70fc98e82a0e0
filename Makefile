# The two commands of the README: `make demo` (the main job) and `make test` (every test).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test venv venv-test packages bench lint

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

packages:
	bash tests/setup/debian-packages.sh

demo: venv packages
	$(PY) -m prefect_pop3mail.flows.demo

test: venv packages
	$(PY) -m pytest $(PYTEST_ARGS)

bench: venv packages
	$(PY) -m bench

lint: venv
	$(VENV)/bin/ruff check .
