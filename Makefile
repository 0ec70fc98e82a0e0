# The commands of the README: `make demo` (the main job), `make test-fast` (every test that
# needs neither a real server nor a Prefect server, spread over the cores: under 90 s on 2 cores)
# and `make test` (every test: `make test-suite`, the whole suite, then `make test-min`, the
# Prefect-facing tests without Dovecot against the lowest Prefect that pyproject.toml allows).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

# The floor in pyproject.toml (`prefect>=...`): 3.4.10 is the first with concurrency
# leases. Prefect 3.4 sets no upper bound on FastAPI and today's FastAPI breaks its server,
# so the floor is tested with the FastAPI of its time. Prefect 3.4's block test suite
# imports Pillow.
MIN_PREFECT := 3.4.10
MIN_VENV := .venv-minprefect
MIN_PY := $(MIN_VENV)/bin/python
MIN_PINS := 'prefect==$(MIN_PREFECT)' 'fastapi<0.116' pillow
# The mailbox lock uses Prefect's concurrency client (tasks/lock.py): its tests run against
# the lowest Prefect too, with a real server restarted and killed under it.
MIN_TESTS := tests/test_block.py tests/test_flows.py tests/test_thin_path.py tests/test_cli.py \
	tests/test_first_contact.py tests/test_lock.py tests/test_lock_retries.py \
	tests/test_events_bounded.py tests/test_failed_runs.py \
	tests/test_prefect_outages.py::test_a_holder_keeps_the_mailbox_through_a_restart_and_a_waiter_enters_after_it \
	tests/test_prefect_outages.py::test_slots_of_a_holder_gone_with_its_lease_are_reclaimed_after_the_grace_period \
	tests/test_prefect_outages.py::test_a_release_that_finds_its_lease_gone_gives_the_slots_back_by_name
# A test of the events client that Prefect 3.4 does not have (the events themselves are sent).
MIN_DESELECT := --deselect tests/test_flows.py::test_receive_all_results_artifacts_and_events
# What meets Prefect's API (blocks, the CLI, the lock, events) needs no POP3 server: the
# Dovecot runs are the whole suite's.
MIN_MARKERS := -m 'not dovecot'
# The markers of every real server (pyproject.toml; tests/conftest.py fails a test that
# starts one without its marker), and of the long and opt-in runs.
FAST_MARKERS := -m 'not (dovecot or interop or browser or prefect or s3 or sftp or postgres or slow or soak)'

.PHONY: demo test test-fast test-suite test-min venv venv-min packages bench lint

# $(call install,EXTRA): .venv with the project editable and the packages of EXTRA.
define install
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(1)]'
	touch $@
endef

$(VENV)/.installed: pyproject.toml
	$(call install,test)

# The demo needs a throwaway CA (trustme) and Dovecot, none of the test tools.
$(VENV)/.demo-installed: pyproject.toml
	$(call install,demo)

$(MIN_VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(MIN_VENV)
	$(MIN_PY) -m pip install -q --upgrade pip
	$(MIN_PY) -m pip install -q -e '.[test]' $(MIN_PINS)
	touch $@

venv: $(VENV)/.installed

venv-min: $(MIN_VENV)/.installed

packages:
	bash tests/setup/debian-packages.sh
	bash tests/setup/pop3-servers.sh

demo: $(VENV)/.demo-installed
	bash tests/setup/debian-packages.sh demo
	$(PY) -m prefect_pop3mail.flows.demo

test:
	bash tests/setup/run-tests.sh

test-fast: venv
	$(PY) -m pytest -n auto --dist worksteal $(FAST_MARKERS) $(PYTEST_ARGS)

test-suite: venv packages
	$(PY) -m pytest $(PYTEST_ARGS)

test-min: venv-min packages
	$(MIN_PY) -c 'import prefect; assert prefect.__version__ == "$(MIN_PREFECT)", prefect.__version__'
	$(MIN_PY) -m pytest $(MIN_MARKERS) $(MIN_TESTS) $(MIN_DESELECT) $(PYTEST_ARGS)

bench: venv packages
	$(PY) -m bench

lint: venv
	$(VENV)/bin/ruff check .
