# One entry point for people and CI. `make test` is what .ci/run runs.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
STAMP := .make-installed

.PHONY: install run test test-fast bench bench-e2e lint clean

$(STAMP): pyproject.toml setup.py native/ring.c native/ring_core.h
	$(PIP) install --quiet -e '.[test]'
	$(PYTHON) -c "import ringgate.ring as r; print('ringgate ring implementation:', r.IMPL_NAME)"
	@touch $(STAMP)

install: $(STAMP)

## run the gateway on the default sink (local files under ./ringgate-data)
run: install
	ringgate serve

## the whole test suite: unit, integration (real PostgreSQL, S3 protocol, real processes), faults
test: install
	$(PYTHON) -m pytest

## without the slow multi-process floods and fault injections
test-fast: install
	$(PYTHON) -m pytest -m "not slow"

## micro benchmarks (pytest-benchmark), each beside its baseline in the same run (~40 s); not
## --benchmark-only: that would skip bench/test_bench_pgcopy.py's interleaved A/B report
bench: install
	$(PYTHON) -m pytest bench -p no:randomly -o testpaths=bench

## end to end over loopback (wrk from apt; FastAPI baseline from the bench extra; S3 = moto), ~12 minutes
bench-e2e: install
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(PIP) install --quiet -e '.[bench]'
	$(PYTHON) bench/e2e.py --sink file --sink postgresql --sink s3 --retry-after-ms 1000 --json-out .benchmarks/e2e.json
	$(PYTHON) bench/e2e.py --report .benchmarks/e2e.json

lint: install
	$(PYTHON) -m ruff check ringgate tests bench

clean:
	rm -rf build dist *.egg-info ringgate/_ring*.so .pytest_cache .benchmarks $(STAMP) ringgate-data ringgate-dead-letter
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
