#!/usr/bin/env bash
# The one producer of the shipped filter module:
#
#   target/switchyard/switchyard_filter.wasm
#
# `make wasm`, the benchmarks and the tests (tests/proxy-host `build::filter_wasm()`) all
# run this script, so every user loads exactly the module `make wasm` makes. Nothing else
# writes that path. Steps:
#   1. cargo build --profile wasm --target wasm32-wasip1 -p switchyard-filter
#      (cargo decides what is stale: every file of filter/ and filter/policy-doc/, the
#      root Cargo.toml with its [profile.wasm], Cargo.lock, the toolchain, RUSTFLAGS);
#   2. wasm-opt (binaryen) from cargo's artifact target/wasm32-wasip1/wasm/ into a
#      temporary file, renamed over the output, so a reader never sees half a module.
# Step 2 runs only when its inputs changed: cargo's module (sha256), the wasm-opt version
# and flags. They are recorded next to the output in switchyard_filter.wasm.inputs, so a
# second run with nothing changed rewrites nothing. Without wasm-opt the module is
# cargo's, copied unoptimised to the same path with a warning (and optimised on the next
# run once wasm-opt is installed).
#
# Prints the module's absolute path on stdout; progress and warnings go to stderr.
#   scripts/build-wasm.sh [-q]     -q: cargo quiet
#   WASM_OPT [wasm-opt]  CARGO [cargo]
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# The output path is fixed: ignore a CARGO_TARGET_DIR from the caller's environment.
export CARGO_TARGET_DIR="$root/target"
CARGO="${CARGO:-cargo}"
WASM_OPT="${WASM_OPT:-wasm-opt}"
# -Os --low-memory-unused (was -O3, whose binaryen inlining bought ~1% of Envoy CPU per
# request): degraded mode's queue fallback (issue 15) needed ~4.5 KB the 400 KB budget did
# not have. -Os saves ~2 KB, --low-memory-unused ~3 KB by folding constant offsets into
# loads and stores; its premise, nothing lives below address 1024, holds for Rust's wasm32
# layout (the 1 MB stack comes first and grows down towards 0, so only a stack within
# 1 KB of overflowing would reach it; data starts at 1 MB). Measured with bench/paired.sh
# (docs/BENCHMARKS.md). The features are post-MVP ones V8 has (rustc emits them).
WASM_OPT_FLAGS=(-Os --low-memory-unused --enable-bulk-memory --enable-sign-ext --enable-mutable-globals --enable-nontrapping-float-to-int)
BUDGET=409600 # bytes (400 KB)

raw="$root/target/wasm32-wasip1/wasm/switchyard_filter.wasm"
out_dir="$root/target/switchyard"
out="$out_dir/switchyard_filter.wasm"
record="$out.inputs"

quiet=()
[ "${1:-}" = -q ] && quiet=(-q)

log() { printf 'build-wasm: %s\n' "$*" >&2; }

mkdir -p "$out_dir"
# One build at a time: several test processes may ask for the module at once.
if command -v flock >/dev/null; then
  exec 9>"$out_dir/.build-wasm.lock"
  flock 9
fi

if command -v rustup >/dev/null && ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
  log "installing the wasm32-wasip1 Rust target"
  rustup target add wasm32-wasip1 >&2
fi

"$CARGO" build "${quiet[@]}" --profile wasm --target wasm32-wasip1 -p switchyard-filter
[ -f "$raw" ] || { log "error: cargo produced no $raw"; exit 1; }

if command -v "$WASM_OPT" >/dev/null; then
  optimiser="$("$WASM_OPT" --version) ${WASM_OPT_FLAGS[*]}"
else
  optimiser="none"
fi
inputs="module $(sha256sum <"$raw" | cut -d' ' -f1); optimiser $optimiser"

# Up to date: same inputs, and the output is still the module they produced.
if [ -f "$out" ] && [ -f "$record" ] &&
  [ "$(sed -n 1p "$record")" = "$inputs" ] &&
  [ "$(sed -n 2p "$record")" = "output $(sha256sum <"$out" | cut -d' ' -f1)" ]; then
  log "$(stat -c %s "$out") bytes, up to date: ${out#"$root"/}"
  printf '%s\n' "$out"
  exit 0
fi

tmp="$out_dir/.switchyard_filter.wasm.$$"
trap 'rm -f "$tmp"' EXIT
if [ "$optimiser" != none ]; then
  "$WASM_OPT" "${WASM_OPT_FLAGS[@]}" "$raw" -o "$tmp"
  how="optimised by $("$WASM_OPT" --version)"
else
  log "warning: $WASM_OPT not found (Debian: apt-get install binaryen; 'make setup' does it):"
  log "warning: the module is cargo's, unoptimised (larger than the 400 KB budget, slower in V8)"
  cp "$raw" "$tmp"
  how="NOT optimised"
fi
mv -f "$tmp" "$out"
printf '%s\noutput %s\n' "$inputs" "$(sha256sum <"$out" | cut -d' ' -f1)" >"$record"

size="$(stat -c %s "$out")"
log "$size bytes, $how: ${out#"$root"/}"
[ "$size" -le "$BUDGET" ] || log "warning: $size bytes is over the 400 KB budget ($BUDGET bytes)"
printf '%s\n' "$out"
