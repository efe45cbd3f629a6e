# One entry point for people and CI. `make test` is what .ci/run runs.
#
# Every target works inside .venv, created with the machine's python3: a distribution's Python
# refuses `pip install` into itself (PEP 668, "externally-managed-environment", e.g. Debian 12),
# and a venv also keeps the project's packages away from the system's.
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
PIP := $(VPY) -m pip
STAMP := $(VENV)/.ringgate-installed

.PHONY: install venv run test test-fast bench bench-e2e lint clean

# A venv without pip (made by a python3 lacking ensurepip, or an interrupted run) is made anew.
# Debian and Ubuntu ship venv's ensurepip in a package of its own: name it rather than let
# `python3 -m venv` fail half way.
$(VPY):
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null || { \
	  echo "ringgate needs Python 3.11 or newer as $(PYTHON) (found: $$($(PYTHON) --version 2>&1)); set PYTHON=..." >&2; exit 1; }
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || { \
	  v=$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	  echo "$(PYTHON) cannot create a virtual environment: its venv/ensurepip module is missing." >&2; \
	  echo "On Debian or Ubuntu: apt-get install python3-venv (or python$$v-venv), then run make again." >&2; \
	  exit 1; }
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(VPY) pyproject.toml setup.py native/ring.c native/ring_core.h
	@$(PIP) --version >/dev/null 2>&1 || { rm -rf $(VENV); $(MAKE) --no-print-directory $(VPY); }
	$(PIP) install --quiet --disable-pip-version-check -e '.[test]'
	$(VPY) -c "import ringgate.ring as r; print('ringgate ring implementation:', r.IMPL_NAME)"
	@touch $(STAMP)

venv: $(VPY)

install: $(STAMP)

## run the gateway on the default sink (local files under ./ringgate-data)
run: install
	exec $(VENV)/bin/ringgate serve

## the whole test suite: unit, integration (real PostgreSQL, S3 protocol, real processes), faults
test: install
	$(VPY) -m pytest

## without the slow multi-process floods and fault injections
test-fast: install
	$(VPY) -m pytest -m "not slow"

## micro benchmarks (pytest-benchmark), each beside its baseline in the same run (~40 s); not
## --benchmark-only: that would skip bench/test_bench_pgcopy.py's interleaved A/B report
bench: install
	$(VPY) -m pytest bench -p no:randomly -o testpaths=bench

## end to end over loopback (wrk from apt; FastAPI baseline from the bench extra): issue 12's run, files
## and PostgreSQL, 429s resent at once and Retry-After honoured, ~8 minutes (add --sink s3 for moto)
bench-e2e: install
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(PIP) install --quiet --disable-pip-version-check -e '.[bench]'
	$(VPY) bench/e2e.py --json-out .benchmarks/e2e.json
	$(VPY) bench/e2e.py --report .benchmarks/e2e.json

lint: install
	$(VPY) -m ruff check ringgate tests bench

## everything built or installed here, the venv included
clean:
	rm -rf build dist *.egg-info ringgate/_ring*.so .pytest_cache .benchmarks .make-installed $(VENV) ringgate-data ringgate-dead-letter
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
