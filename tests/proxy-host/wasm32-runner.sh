#!/bin/sh
# Cargo runner for wasm32-wasip1 (see .cargo/config.toml): runs a wasm32 test binary on
# the proxy-host crate's wasmtime WASI runner, building the runner first if needed.
root="$(cd "$(dirname "$0")/../.." && pwd)"
runner="$root/target/debug/wasm32-runner"
if [ ! -x "$runner" ] || [ -n "$(find "$root/tests/proxy-host/src" -newer "$runner" -name '*.rs' 2>/dev/null | head -1)" ]; then
    env -u CARGO_TARGET_DIR -u CARGO_BUILD_TARGET cargo build -q --manifest-path "$root/tests/proxy-host/Cargo.toml" --bin wasm32-runner >&2 || exit 2
fi
exec "$runner" "$@"
