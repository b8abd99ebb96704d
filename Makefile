# Quick start on a fresh machine: `make demo`, then `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hivemem-installed

.PHONY: install demo test test-fast bench lint clean

install: $(STAMP)

# torch must be installed (pinned, CPU build) before anything that depends on it pulls a CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/hivemem demo

test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -ra

# The inner loop: no model export, no torch, no PostgreSQL, no slow multi-process test (see
# tests/conftest.py). tests/fast_guard makes every process of the run fail on importing torch or
# the PostgreSQL wheel.
FAST := fast and not slow and not model and not pg
test-fast: install
	HF_HUB_OFFLINE=1 PYTHONPATH=$(CURDIR)/tests/fast_guard$${PYTHONPATH:+:$$PYTHONPATH} \
		$(PY) -m pytest -q -ra -m "$(FAST)"

lint: install
	$(VENV)/bin/ruff check hivemem tests benchmarks
	$(VENV)/bin/ruff format --check hivemem tests benchmarks
	$(VENV)/bin/mypy

# Heavy: minutes each. Every script prints a table and a final JSON line.
BENCHMARKS ?= embed shared memory tasks pool http_api cluster mcp_fleet
bench: install
	for b in $(BENCHMARKS); do HF_HUB_OFFLINE=1 $(PY) benchmarks/$$b.py || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
