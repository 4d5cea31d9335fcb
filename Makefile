# hookline — the two commands are `make dev` and `make test`; both install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: dev test test-fast test-ui screenshot bench lint typecheck tools image deps system-deps \
        browser-deps clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

## the node tier's container runtime and image builders (gcc and libc6-dev: the static pause binary)
NODE_PKGS := containerd runc containernetworking-plugins iptables conntrack mmdebstrap buildah gcc libc6-dev

system-deps:
	@command -v redis-server >/dev/null || { $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; }
	@missing=$$(for p in $(NODE_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | \
	  grep -q '^install ok installed$$' || echo $$p; done); \
	[ -z "$$missing" ] || { $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; }

deps: system-deps $(STAMP)

## the browser tier's browser: Debian's chromium (Playwright drives it, never one it downloads)
browser-deps:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

## the real peers the tests start (kube-apiserver, etcd, kubectl, helm, jaeger, fake-gcs-server, promtool, the node tier's)
tools:
	tools/build.sh

## the node tier's images as docker-archive tarballs in .cache/images (images.json), built with buildah
image: system-deps
	tools/build.sh jaeger
	$(SUDO) tools/image.sh

## the local stack: redis, receiver, dispatcher and a demo sink (TRACING=1: and a Jaeger to trace
## into, its UI at 127.0.0.1:16686 when HOOKLINE_JAEGER_UI names a built one; docs/tracing.md)
dev: deps
	$(if $(TRACING),tools/build.sh jaeger)
	$(BIN)/hookline dev $(if $(TRACING),--tracing)

lint: deps
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports

typecheck: deps
	$(BIN)/mypy

## every test tier, against real peers
test: deps tools image lint typecheck
	$(BIN)/pytest

## the browser tier, not in `make test`: the Jaeger UI in headless Chromium. It needs
## HOOKLINE_JAEGER_UI, a Jaeger UI built outside this repository (tools/README.md), and fails
## without it. The page's screenshot goes to var/jaeger-trace.png.
test-ui: deps browser-deps
	tools/build.sh jaeger
	HOOKLINE_SCREENSHOT=$${HOOKLINE_SCREENSHOT:-var/jaeger-trace.png} $(BIN)/pytest -m ui tests/browser

## docs/jaeger-trace.png, the screenshot docs/tracing.md shows: the browser tier, written there
screenshot:
	$(MAKE) test-ui HOOKLINE_SCREENSHOT=docs/jaeger-trace.png

## the unit tier alone: hookline's pure code, no Redis, no Go-built peers, no network (seconds)
test-fast: deps
	$(BIN)/pytest tests/unit

## throughput and latency against bare baselines, JSON lines (docs/benchmarks.md)
bench: deps tools
	@command -v wrk >/dev/null || { $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .cache var .mypy_cache .pytest_cache .ruff_cache
