# Every target does its own set-up (scripts/bootstrap is idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: demo test lint unit integration bench bench-smoke setup clean

demo:
	@scripts/bootstrap venv
	@$(VENV)/bin/vmworker demo

setup:
	@scripts/bootstrap all

lint: 
	@scripts/bootstrap venv
	$(VENV)/bin/ruff check worker handlers vmworker tests bench
	$(VENV)/bin/ruff format --check worker handlers vmworker tests bench
	$(VENV)/bin/mypy worker handlers vmworker bench

test: setup lint
	$(VENV)/bin/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# as any user: no broker, no libvirtd (a venv of one's own needs only the Debian packages);
# in parallel, one pytest-xdist worker per core (PYTEST_ARGS="-n 0" runs them in one process)
unit:
	@scripts/bootstrap venv
	$(VENV)/bin/pytest -q -n auto tests/unit $(PYTEST_ARGS)

bench:
	@scripts/bootstrap all
	$(VENV)/bin/pip install -q -e ".[bench]"
	$(PY) -m bench.run $(BENCH_ARGS)

bench-smoke:
	@scripts/bootstrap all
	$(VENV)/bin/pip install -q -e ".[bench]"
	$(PY) -m bench.run --smoke

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
