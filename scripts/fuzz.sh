#!/usr/bin/env bash
# `make fuzz`: every fuzz target for FUZZ_SECONDS (default 60) each, then a summary line
# per target (executions, crashes, corpus size) for docs/RELIABILITY.md.
#
#   FUZZ_SECONDS=600 scripts/fuzz.sh                  all targets, 10 minutes each
#   FUZZ_TARGETS="policy cookie" scripts/fuzz.sh      some targets
#
# Engine: libFuzzer (libfuzzer-sys, the fuzz/libfuzzer crate in cargo-fuzz's layout),
# built by stable rustc with the SanitizerCoverage flags cargo-fuzz passes (stable codegen
# options), without AddressSanitizer: the fuzzed crates forbid or deny unsafe code, so
# ASan would find nothing safe Rust does not already check; debug assertions and
# overflow checks stay on. With cargo-fuzz and nightly the same targets run with ASan:
#   cargo +nightly fuzz run --fuzz-dir fuzz/libfuzzer policy
# The ABI-boundary target drives the built .wasm on the wasmtime host, where libFuzzer's
# coverage cannot see inside the guest: it runs as a seeded random search instead
# (fuzz/examples/abi.rs), for the same time.
#
# New inputs that add coverage go to target/fuzz/corpus/<target>/ (not checked in);
# `scripts/fuzz.sh merge` minimises them into the checked-in fuzz/corpus/. A crash lands
# in fuzz/artifacts/<target>/: add it to fuzz/regressions/<target>/ with its fix.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${FUZZ_SECONDS:-60}
TARGETS=${FUZZ_TARGETS:-"policy cookie classify snapshot telemetry abi"}
OUT=target/fuzz
FUZZ_TARGET_DIR=$PWD/$OUT/build
SANCOV="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"
# An explicit --target keeps RUSTFLAGS off build scripts and proc macros (as cargo-fuzz does).
HOST=$(rustc -vV | sed -n 's/^host: //p')
BIN=$FUZZ_TARGET_DIR/$HOST/release

build() {
  CARGO_TARGET_DIR=$FUZZ_TARGET_DIR RUSTFLAGS="$SANCOV" cargo build --release --manifest-path fuzz/libfuzzer/Cargo.toml --bins --target "$HOST"
}

if [ "${1:-}" = merge ]; then
  build
  for t in policy cookie classify snapshot telemetry; do
    [ -d "$OUT/corpus/$t" ] || continue
    mkdir -p "$OUT/merged/$t"
    "$BIN/$t" -merge=1 -max_len=4096 "$OUT/merged/$t" fuzz/corpus/$t "$OUT/corpus/$t" 2>/dev/null
  done
  echo "merged corpora in $OUT/merged/ (copy the ones worth keeping into fuzz/corpus/)"
  exit 0
fi

build
# The dev profile (dependencies at opt-level 1): the guest runs compiled by cranelift
# either way, and a release build of wasmtime costs minutes.
cargo build -p switchyard-fuzz --example abi
printf '%-10s %8s %14s %8s %8s\n' target seconds executions crashes corpus | tee "$OUT/summary.txt"
status=0
for t in $TARGETS; do
  mkdir -p "$OUT/corpus/$t" "fuzz/artifacts/$t"
  log=$OUT/$t.log
  if [ "$t" = abi ]; then
    set +e
    target/debug/examples/abi --seconds "$SECONDS_EACH" --artifacts fuzz/artifacts/abi >"$log" 2>&1
    rc=$?
    set -e
    execs=$(sed -n 's/^executions: //p' "$log" | tail -1)
    corpus=-
  else
    set +e
    "$BIN/$t" -max_total_time="$SECONDS_EACH" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$t/" \
      "$OUT/corpus/$t" "fuzz/corpus/$t" >"$log" 2>&1
    rc=$?
    set -e
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    corpus=$(ls "$OUT/corpus/$t" | wc -l)
  fi
  crashes=$(find "fuzz/artifacts/$t" -type f | wc -l)
  [ "$rc" -eq 0 ] && [ "$crashes" -eq 0 ] || status=1
  printf '%-10s %8s %14s %8s %8s\n' "$t" "$SECONDS_EACH" "${execs:-?}" "$crashes" "$corpus" | tee -a "$OUT/summary.txt"
done
[ $status -eq 0 ] || echo "fuzz: crashes or errors; see $OUT/<target>.log and fuzz/artifacts/" >&2
exit $status
