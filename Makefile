# Tend — the two commands of the quick start are `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON  ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
VAR     := $(CURDIR)/var
AS_OF   ?= $(shell date -u +%F)
CUSTOMERS ?= 2000
SEED    ?= 7

# Airflow starts its own components as `airflow ...` subprocesses: the venv must be on PATH.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

# Embedded defaults: SQLite files and a file outbox under var/, a project-local AIRFLOW_HOME.
export TEND_VAR_DIR            := $(VAR)
export TEND_OUTBOX_DIR         ?= $(VAR)/outbox
export AIRFLOW_HOME            := $(VAR)/airflow
export AIRFLOW__CORE__DAGS_FOLDER    := $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER := $(CURDIR)/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES  := False
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE := $(VAR)/airflow/passwords.json
export AIRFLOW_CONN_TEND_SHOP  ?= sqlite:///$(VAR)/shop.db
export AIRFLOW_CONN_TEND_STORE ?= sqlite:///$(VAR)/store.db
export TEND_SHOP_URL           ?= sqlite:///$(VAR)/shop.db
export TEND_STORE_URL          ?= sqlite:///$(VAR)/store.db

STAMP := $(VENV)/.installed

.PHONY: help install run test lint serve airflow airflow-db demo night clean-var lock bench-send

help:
	@echo "make run      set everything up and run one night on the demo shop (outbox in var/outbox)"
	@echo "make test     set everything up and run the whole test suite"
	@echo "make serve    serve the links in the emails (unsubscribe, preferences, survey) and SendGrid's events on :8090"
	@echo "make airflow  start Airflow (standalone) with Tend's DAGs on the same embedded defaults"
	@echo "make lint     ruff"
	@echo "make bench-send  100k messages end to end against the local SendGrid stand-in"
	@echo "make bench-render  messages rendered per second per core (every template, en/fr)"
	@echo "make bench-arbitration  claim 1M candidates against a 10M-row ledger (PostgreSQL)"
	@echo "make bench-signals  ingest and signals on 1M demo customers / ~12M order lines"
	@echo "make bench-read  the shop read alone (full and incremental) on that shop"
	@echo "make bench-features  the feature computation alone on that shop's orders"
	@echo "make bench-events  tend serve: signed webhook events/s (SQLite, PostgreSQL), unsubscribe p99"
	@echo "make bench-scale  a 1M-customer night through Airflow's CeleryExecutor, 1 then 2 workers"
	@echo "make bench-lift  how often the lift interval covers the demo's true uplift (2,000 seeds)"
	@echo "make clean-var  forget the demo shop, the contact store and the outbox"
	@echo "make test-stack  the compose file (static) and a night on two Celery workers (PostgreSQL, Redis)"

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(VENV)/bin/python requirements.txt requirements-dev.txt pyproject.toml
	$(BIN)/pip install --quiet -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps -e .
	@touch $@

install: $(STAMP) chromium

# Headless Chromium for `tend preview --png` and its test (which CI runs): Debian's chromium
# package, installed with apt-get when no Chromium is found (as root, or through sudo).
# Without apt-get it only warns locally (the PNG test then skips) and fails when CI=true.
.PHONY: chromium
chromium:
	@if [ -n "$$TEND_CHROMIUM" ] || command -v chromium >/dev/null 2>&1 \
	    || command -v chromium-browser >/dev/null 2>&1 || command -v google-chrome >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  echo "installing Debian's chromium for PNG previews (apt-get)"; \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
	    || { echo "could not install chromium"; [ "$${CI:-}" != true ] || exit 1; }; \
	else \
	  echo "no apt-get here: install Chromium yourself for PNG previews (tend preview --png)"; \
	  [ "$${CI:-}" != true ] || exit 1; \
	fi

$(VAR)/shop.db: | $(STAMP)
	@mkdir -p $(VAR)
	$(BIN)/tend demo-data --db sqlite:///$(VAR)/shop.db --customers $(CUSTOMERS) --seed $(SEED) --as-of $(AS_OF)

demo: $(VAR)/shop.db

$(AIRFLOW_HOME)/airflow.db: | $(STAMP)
	@mkdir -p $(AIRFLOW_HOME) $(VAR)/logs
	$(BIN)/airflow db migrate > $(VAR)/logs/airflow-db-migrate.log 2>&1 || { tail -30 $(VAR)/logs/airflow-db-migrate.log; exit 1; }

# The pool that bounds concurrent send tasks (tend_programs.send); created once per metadata DB.
$(AIRFLOW_HOME)/.pool-tend_send: $(AIRFLOW_HOME)/airflow.db
	$(BIN)/airflow pools set tend_send 4 "Tend senders" > $(VAR)/logs/airflow-pools.log 2>&1 || { tail -30 $(VAR)/logs/airflow-pools.log; exit 1; }
	@touch $@

airflow-db: $(AIRFLOW_HOME)/airflow.db $(AIRFLOW_HOME)/.pool-tend_send

# One night through Airflow: ingest, then programs (as the asset schedule would), then totals.
# Each DAG run goes through `airflow dags test --use-executor` beside a short-lived Execution
# API server (tend_airflow.dagtest), so every task writes its log file where `make airflow`'s
# UI reads it.
run: install demo airflow-db
	@mkdir -p $(VAR)/logs $(TEND_OUTBOX_DIR)
	$(BIN)/tend migrate
	@echo "airflow dags test tend_ingest $(AS_OF)   (log: var/logs/tend_ingest-$(AS_OF).log)"
	@$(BIN)/python -m tend_airflow.dagtest tend_ingest $(AS_OF) --api-log $(VAR)/logs/execution-api.log > $(VAR)/logs/tend_ingest-$(AS_OF).log 2>&1 \
	  || { tail -40 $(VAR)/logs/tend_ingest-$(AS_OF).log; exit 1; }
	@grep -q "state=success" $(VAR)/logs/tend_ingest-$(AS_OF).log || { tail -40 $(VAR)/logs/tend_ingest-$(AS_OF).log; exit 1; }
	@echo "airflow dags test tend_programs $(AS_OF) (log: var/logs/tend_programs-$(AS_OF).log)"
	@$(BIN)/python -m tend_airflow.dagtest tend_programs $(AS_OF) --api-log $(VAR)/logs/execution-api.log > $(VAR)/logs/tend_programs-$(AS_OF).log 2>&1 \
	  || { tail -40 $(VAR)/logs/tend_programs-$(AS_OF).log; exit 1; }
	@grep -q "state=success" $(VAR)/logs/tend_programs-$(AS_OF).log || { tail -40 $(VAR)/logs/tend_programs-$(AS_OF).log; exit 1; }
	@echo
	@$(BIN)/tend summary --as-of $(AS_OF)
	@echo
	@echo "Messages: $$(ls $(TEND_OUTBOX_DIR) | grep -c '\.eml$$') .eml files in $(TEND_OUTBOX_DIR)"
	@echo "Why did a customer get (or not get) a message?  $(BIN)/tend why C000042 --as-of $(AS_OF)"

# Same as run but without Airflow, for quick iterations.
night: install demo
	$(BIN)/tend night --as-of $(AS_OF)

# The suite on TEST_WORKERS pytest-xdist workers (0: in this process; docs/testing.md). Three on
# two cores: much of the suite waits on subprocesses and sockets, and a third worker uses that time.
TEST_WORKERS ?= 3
test: install
	$(BIN)/pytest -n $(TEST_WORKERS)

lint: install
	$(BIN)/ruff check .

# The public endpoints (unsubscribe, preferences, survey, SendGrid events) on the embedded store:
# the demo emails' links (TEND_BASE_URL's default, http://localhost:8090) lead here.
serve: install
	@$(BIN)/tend migrate
	$(BIN)/tend serve

airflow: install demo airflow-db
	@$(BIN)/tend migrate
	@test -f $(VAR)/airflow/passwords.json || \
	  $(BIN)/python -c "import json,secrets; print(json.dumps({'admin': secrets.token_urlsafe(12)}))" > $(VAR)/airflow/passwords.json
	@echo "Airflow UI: http://localhost:8080  login: admin  password: $$($(BIN)/python -c "import json; print(json.load(open('$(VAR)/airflow/passwords.json'))['admin'])")"
	$(BIN)/airflow standalone

# 100k messages end to end (render + ledger + HTTP) against `tend fake-sendgrid --latency-ms 20`,
# beside the official sendgrid client measured in the same run. BENCH_ARGS="--messages 20000" etc.
bench-send: install
	$(BIN)/python bench/send_bench.py $(BENCH_ARGS)

clean-var:
	rm -rf $(VAR)/shop.db* $(VAR)/store.db* $(VAR)/outbox $(VAR)/logs

lock: install
	$(BIN)/pip freeze --exclude-editable | grep -viE '^(pytest|pytest-timeout|pytest-xdist|execnet|hypothesis|ruff|iniconfig|sortedcontainers|tend)==' > requirements.lock.new
	@echo "review requirements.lock.new, then fold it into requirements.txt"

# Arbitration + cap check for 1M candidates against a 10M-row ledger on PostgreSQL
# (BENCH_DATABASE_URL, default the local test database; the ledger is generated once).
bench-arbitration: install
	$(BIN)/python bench/bench_arbitration.py

# Messages rendered per second per core: every template in en/fr for different customers,
# CSS already inlined at load. BENCH_RENDER_ARGS="--messages 50000 --rounds 7" etc.
.PHONY: bench-render
bench-render: install
	$(BIN)/python bench/bench_render.py $(BENCH_RENDER_ARGS)

# Ingest + signals on 1M demo customers / ~12M order lines (the shop is generated once and
# cached under var/bench/): full rebuild, a 1% incremental night, detect_all, BG/NBD fit.
bench-signals: install
	$(BIN)/python bench/bench_signals.py

# The two halves of the full rebuild alone, on the shop bench-signals caches (run it first).
.PHONY: bench-read bench-features
bench-read: install
	$(BIN)/python bench/bench_read.py

bench-features: install
	$(BIN)/python bench/bench_features.py

# One tend serve process: signed SendGrid webhook batches of 1,000 events into SQLite and
# PostgreSQL (BENCH_DATABASE_URL), then one-click unsubscribe latency with 200 clients.
# BENCH_EVENTS_ARGS="--events 20000 --backends sqlite" etc.
.PHONY: bench-events
bench-events: install
	$(BIN)/python bench/bench_events.py $(BENCH_EVENTS_ARGS)


# How often the report's 95 % interval covers the demo's true uplift over many seeds (the test
# checks 60): BENCH_LIFT_ARGS="--seeds 500" etc.
.PHONY: bench-lift
bench-lift: install
	$(BIN)/python bench/lift_coverage.py $(BENCH_LIFT_ARGS)

# Demo nights whose customers answer at a known rate, then `tend report` (docs/results.md): a
# demo shop of its own under var/results/, ending RESULTS_NIGHTS + 32 days ago so that every
# night and every answer is in the past.
RESULTS_NIGHTS ?= 30
RESULTS_DIR    := $(VAR)/results
.PHONY: demo-nights
demo-nights: install
	@mkdir -p $(RESULTS_DIR)
	@rm -f $(RESULTS_DIR)/shop.db* $(RESULTS_DIR)/store.db*
	@start=$$(date -u -d "-$$(( $(RESULTS_NIGHTS) + 32 )) days" +%F); \
	  $(BIN)/tend demo-data --db sqlite:///$(RESULTS_DIR)/shop.db --customers $(CUSTOMERS) \
	    --seed $(SEED) --as-of $$start && \
	  TEND_OUTBOX_DIR=$(RESULTS_DIR)/outbox $(BIN)/tend demo-nights \
	    --db sqlite:///$(RESULTS_DIR)/shop.db --store sqlite:///$(RESULTS_DIR)/store.db \
	    --from $$(date -u -d "$$start + 1 day" +%F) --nights $(RESULTS_NIGHTS)


# The deployment's checks without a container engine: docker-compose.yaml against the Compose
# Specification and the settings the code reads, then a night on Airflow's CeleryExecutor with
# two workers (one killed mid-send) on the local PostgreSQL and Redis (TEST_DATABASE_URL,
# TEST_REDIS_URL; ~3 minutes).
.PHONY: test-stack
test-stack: install
	$(BIN)/pytest -q tests/deploy tests/integration/test_celery_cluster.py


# Targeting accuracy against the demo's ground truth across seeds (not a timing): the lapse
# ranking's AUC beside BG/NBD and recency, seasonal and check-up precision and recall.
# BENCH_TARGETING_ARGS="--seeds 1 2 3 4 5 6 7 --customers 50000 --markdown" etc.
.PHONY: bench-targeting
bench-targeting: install
	$(BIN)/python bench/bench_targeting.py $(BENCH_TARGETING_ARGS)


# A demo night end to end through Airflow's CeleryExecutor (the Celery test's cluster, on the
# local PostgreSQL and Redis) with 1 then 2 workers, against the SendGrid stand-in answering
# after 20 ms: stage times, CPU per process group, every message sent once (bench/RESULTS.md,
# docs/capacity.md). The 1M-customer shop is generated once under var/bench/ (a few minutes).
# BENCH_SCALE_ARGS="--customers 250000 --workers 1,2 --batch-size 20000" etc.
.PHONY: bench-scale
bench-scale: install
	$(BIN)/python bench/bench_scale.py $(BENCH_SCALE_ARGS)
