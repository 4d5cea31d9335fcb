# hookline — the two commands are `make dev` and `make test`; both install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: dev test test-fast bench lint typecheck tools deps system-deps clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

system-deps:
	@command -v redis-server >/dev/null || { $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; }

deps: system-deps $(STAMP)

## the real peers the tests start (kube-apiserver, etcd, kubectl, helm, jaeger, fake-gcs-server)
tools:
	tools/build.sh

## the local stack: redis, receiver, dispatcher and a demo sink (TRACING=1: traces over OTLP, docs/tracing.md)
dev: deps
	$(BIN)/hookline dev $(if $(TRACING),--tracing)

lint: deps
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: deps
	$(BIN)/mypy

## every test tier, against real peers
test: deps tools lint typecheck
	$(BIN)/pytest

## throughput and latency against bare baselines, JSON lines (docs/benchmarks.md)
bench: deps tools
	@command -v wrk >/dev/null || { $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .cache var .mypy_cache .pytest_cache .ruff_cache
