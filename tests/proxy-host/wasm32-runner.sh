#!/bin/sh
# Cargo runner for wasm32-wasip1 (.cargo/config.toml): runs a wasm32 test binary, e.g.
#   cargo test -p switchyard-filter --target wasm32-wasip1 --lib   (make test-wasm32)
# on the proxy-host crate's wasmtime WASI runner (src/bin/wasm32-runner.rs). The runner
# is (re)built first by cargo, which knows when it is stale; a no-op build takes well
# under a second.
root="$(cd "$(dirname "$0")/../.." && pwd)"
#
# SWITCHYARD_RUNNER_FRESH=1 (set by `make test`, right after `cargo test --workspace` built
# the runner with the workspace's feature set) skips that build: building the bin on its
# own resolves features for proxy-host alone and would recompile wasmtime a second time.
runner="$root/target/debug/wasm32-runner"
if [ -z "${SWITCHYARD_RUNNER_FRESH:-}" ] || [ ! -x "$runner" ]; then
    env -u CARGO_TARGET_DIR -u CARGO_BUILD_TARGET cargo build -q --manifest-path "$root/tests/proxy-host/Cargo.toml" \
        --bin wasm32-runner >&2 || exit 2
fi
exec "$runner" "$@"
