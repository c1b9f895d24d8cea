#!/usr/bin/env bash
# Data-plane benchmark: what does routing cost Envoy per request?
#
# Envoy under test runs with --concurrency 1 pinned to core 0; wrk (one thread, fixed
# connections) and the upstream (an Envoy answering direct_response 200 on five ports)
# share core 1. Variants run interleaved (A B C D, A B C D, ...), each in a fresh Envoy:
#   none        (a) no filter
#   trivial     (b) a wasm filter that reads one header and sets one (bench/trivial-filter)
#   switchyard  (c) Switchyard with bench/policies/realistic.json, affinity keys set
#   lua         (d) a Lua filter routing on headers to the same five stacks
# and, for profiling, on request (BENCH_VARIANTS):
#   sy-nokeys   realistic policy, no affinity keys (affinity off)
#   sy-default  no rules, default route only, no affinity
#   sy-norules  no rules, default route only, affinity on
#   sy-nocidrs  realistic policy without geo CIDR tables (no source.address lookup)
#   switchyard-alt  as (c) with another build of the filter, BENCH_ALT_WASM (A/B of a change)
#   hc-<kind>=<N>   (b) plus N extra host calls of one kind per request, to price them:
#                   kinds shared, pairs, time, header, status, prop, set, mix; decide runs
#                   Switchyard's decision N times in the VM (bench/trivial-filter)
# Per run: CPU time of the Envoy process (sum of its threads' schedstat run time) over
# the measured window / requests completed = CPU µs per request. Medians per variant and
# per-round ratios go to a markdown report.
#
# Environment (defaults in brackets):
#   BENCH_ROUNDS [5]  BENCH_DURATION [10] seconds  BENCH_WARMUP [3] seconds
#   BENCH_SETTLE [3] seconds of idle between warm-up and measurement
#   BENCH_CONNECTIONS [16]  BENCH_VARIANTS ["none trivial switchyard lua"]
#   BENCH_GOAL [1.15]  BENCH_OUT [target/bench/envoy-<UTC time>]  BENCH_SKIP_BUILD [0]
#   BENCH_ENVOY_CORE [0]  BENCH_LOAD_CORE [1]  ENVOY [.tools/envoy]
#   ports: see bench/envoy/render.sh (127.0.0.1 only)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

ROUNDS="${BENCH_ROUNDS:-5}"
DURATION="${BENCH_DURATION:-10}"
WARMUP="${BENCH_WARMUP:-3}"
SETTLE="${BENCH_SETTLE:-3}"
CONNS="${BENCH_CONNECTIONS:-16}"
VARIANTS="${BENCH_VARIANTS:-none trivial switchyard lua}"
GOAL="${BENCH_GOAL:-1.15}"
ENVOY_CORE="${BENCH_ENVOY_CORE:-0}"
LOAD_CORE="${BENCH_LOAD_CORE:-1}"
ENVOY="${ENVOY:-$root/.tools/envoy}"
KEYS="k1=0123456789abcdef0123" # benchmark-only affinity key
export BENCH_PORT="${BENCH_PORT:-19100}"
export BENCH_ADMIN_PORT="${BENCH_ADMIN_PORT:-19101}"
export BENCH_UP_ADMIN_PORT="${BENCH_UP_ADMIN_PORT:-19102}"
export BENCH_UP_PORT="${BENCH_UP_PORT:-19111}"
OUT="${BENCH_OUT:-$root/target/bench/envoy-$(date -u +%Y%m%dT%H%M%SZ)}"

log() { printf '[bench %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---- processes we start, stopped on any exit --------------------------------------
pids=()
stop_pid() {
  local pid="$1"
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
# Drop one pid from the list (exact match).
forget() {
  local keep=() p
  for p in "${pids[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  pids=("${keep[@]}")
}
cleanup() {
  local pid
  for pid in "${pids[@]}"; do stop_pid "$pid"; done
  pids=()
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# ---- prerequisites -------------------------------------------------------------------
[ -x "$ENVOY" ] || die "no Envoy at $ENVOY (run 'make setup' or set ENVOY)"
if ! command -v wrk >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing wrk (apt-get)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk) >/dev/null
  fi
  command -v wrk >/dev/null || die "wrk is not installed (Debian/Ubuntu: apt-get install wrk)"
fi
command -v python3 >/dev/null || die "python3 is needed for the load script and the report"
[ "$(nproc)" -ge 2 ] || log "warning: fewer than 2 cores; pinning cannot separate Envoy from the load"
for port in "$BENCH_PORT" "$BENCH_ADMIN_PORT" "$BENCH_UP_ADMIN_PORT" $(seq "$BENCH_UP_PORT" $((BENCH_UP_PORT + 4))); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "127.0.0.1:$port is in use (another benchmark?); set BENCH_PORT/BENCH_UP_PORT etc."
  fi
done

# Revision measured (taken before building; others may commit during a long run).
src_rev="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- filter/src bench 2>/dev/null || echo ' (filter/src or bench modified in the work tree)')"
[ "${BENCH_SKIP_BUILD:-0}" = 1 ] && src_rev="$src_rev (BENCH_SKIP_BUILD=1: .wasm files as found in target/)"
if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
  # The filter as it ships: scripts/build-wasm.sh (what `make wasm` runs: cargo with the
  # wasm profile, then wasm-opt when available); the baseline with the same profile.
  log "building the wasm filters (scripts/build-wasm.sh; cargo build -p switchyard-bench-trivial)"
  scripts/build-wasm.sh -q >/dev/null
  cargo build -q --profile wasm --target wasm32-wasip1 -p switchyard-bench-trivial
  if [[ " $VARIANTS " == *" hc-decide="* ]] && [ -z "${BENCH_HC_WASM:-}" ]; then
    # The baseline with Switchyard's routing core inside, in its own target dir so the
    # plain baseline build is not replaced.
    cargo build -q --profile wasm --target wasm32-wasip1 -p switchyard-bench-trivial --features price-decision \
      --target-dir target/bench-price-decision
    export BENCH_HC_WASM="$root/target/bench-price-decision/wasm32-wasip1/wasm/switchyard_bench_trivial.wasm"
  fi
fi
export SWITCHYARD_WASM="${SWITCHYARD_WASM:-$root/target/switchyard/switchyard_filter.wasm}"
export BENCH_TRIVIAL_WASM="${BENCH_TRIVIAL_WASM:-$root/target/wasm32-wasip1/wasm/switchyard_bench_trivial.wasm}"
[ -f "$SWITCHYARD_WASM" ] && [ -f "$BENCH_TRIVIAL_WASM" ] || die "missing .wasm files"

mkdir -p "$OUT"
log "output: $OUT"
# Measure copies: other builds in the same checkout may replace target/ artifacts mid-run.
cp "$SWITCHYARD_WASM" "$OUT/switchyard_filter.wasm"
cp "$BENCH_TRIVIAL_WASM" "$OUT/switchyard_bench_trivial.wasm"
export SWITCHYARD_WASM="$OUT/switchyard_filter.wasm" BENCH_TRIVIAL_WASM="$OUT/switchyard_bench_trivial.wasm"
if [[ " $VARIANTS " == *" switchyard-alt "* ]]; then
  [ -f "${BENCH_ALT_WASM:-}" ] || die "variant switchyard-alt needs BENCH_ALT_WASM=/path/to/other/switchyard_filter.wasm"
  cp "$BENCH_ALT_WASM" "$OUT/switchyard_filter.alt.wasm"
fi

# ---- configs ---------------------------------------------------------------------------
# variant → render kind, policy, whether Envoy gets the affinity keys
render_variant() {
  local v="$1"
  case "$v" in
    none | trivial | lua) bench/envoy/render.sh "$v" ;;
    hc-*) # the trivial filter plus N host calls of one kind, e.g. hc-shared=20; BENCH_HC_WASM
      # picks another build of it (hc-decide needs `--features price-decision`)
      BENCH_TRIVIAL_WASM="${BENCH_HC_WASM:-$BENCH_TRIVIAL_WASM}" BENCH_TRIVIAL_CONFIG="${v#hc-}" bench/envoy/render.sh trivial ;;
    switchyard) BENCH_POLICY=bench/policies/realistic.json bench/envoy/render.sh switchyard ;;
    sy-nokeys) BENCH_POLICY=bench/policies/realistic.json bench/envoy/render.sh switchyard ;;
    sy-default) BENCH_POLICY=bench/policies/default-only.json bench/envoy/render.sh switchyard ;;
    sy-norules) BENCH_POLICY=bench/policies/default-affinity.json bench/envoy/render.sh switchyard ;;
    sy-nocidrs) BENCH_POLICY=bench/policies/realistic-no-cidrs.json bench/envoy/render.sh switchyard ;;
    switchyard-alt) SWITCHYARD_WASM="$OUT/switchyard_filter.alt.wasm" BENCH_POLICY=bench/policies/realistic.json \
      bench/envoy/render.sh switchyard ;;
    *) die "unknown variant '$v'" ;;
  esac
}
wants_keys() { case "$1" in switchyard | switchyard-alt | sy-default | sy-norules | sy-nocidrs) return 0 ;; *) return 1 ;; esac; }
# A request and the upstream it must reach: proves the filter ran and routing works.
expect_stack() { case "$1" in none) echo blue ;; sy-default | sy-norules) echo 'blue|green' ;; *) echo eu ;; esac; }

bench/envoy/render.sh upstream >"$OUT/upstream.yaml"
for v in $VARIANTS; do render_variant "$v" >"$OUT/$v.yaml"; done
for f in upstream $VARIANTS; do
  "$ENVOY" --mode validate -c "$OUT/$f.yaml" --use-dynamic-base-id -l error >"$OUT/validate-$f.txt" 2>&1 ||
    die "Envoy rejects $OUT/$f.yaml: $(tail -3 "$OUT/validate-$f.txt")"
done
log "configs valid: upstream $VARIANTS"
python3 bench/load/gen_load.py "$KEYS" 256 7 >"$OUT/load.lua"

wait_ready() {
  local port="$1" pid="$2"
  for _ in $(seq 200); do
    kill -0 "$pid" 2>/dev/null || return 1
    [ "$(curl -s --max-time 1 "http://127.0.0.1:$port/ready" || true)" = LIVE ] && return 0
    sleep 0.1
  done
  return 1
}

# wrk in the background and `wait`: a signal then interrupts at once and cleanup stops it.
load() {
  taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNS" -d"$1s" -s "$OUT/load.lua" "http://127.0.0.1:$BENCH_PORT/" >"$2" &
  local wrk_pid=$!
  pids+=("$wrk_pid")
  wait "$wrk_pid"
  forget "$wrk_pid"
}

# Run time of every thread of a process, in ns.
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%.0f\n", s}'; }

# ---- upstream ------------------------------------------------------------------------
taskset -c "$LOAD_CORE" "$ENVOY" -c "$OUT/upstream.yaml" --concurrency 1 --use-dynamic-base-id \
  -l warning --log-path "$OUT/upstream.envoy.log" &
up_pid=$!
pids+=("$up_pid")
wait_ready "$BENCH_UP_ADMIN_PORT" "$up_pid" || die "upstream Envoy did not start: $OUT/upstream.envoy.log"

# ---- rounds --------------------------------------------------------------------------
results="$OUT/results.tsv"
printf 'round\tvariant\trequests\tseconds\trps\tcpu_ns\tcpu_us_per_req\tenvoy_util\tp50_us\tp99_us\tnon200\tsocket_errors\n' >"$results"
log "rounds=$ROUNDS duration=${DURATION}s warmup=${WARMUP}s settle=${SETTLE}s connections=$CONNS variants: $VARIANTS"
for round in $(seq "$ROUNDS"); do
  for v in $VARIANTS; do
    env_keys=()
    if wants_keys "$v"; then env_keys=(env "SWITCHYARD_AFFINITY_KEYS=$KEYS"); else env_keys=(env -u SWITCHYARD_AFFINITY_KEYS); fi
    "${env_keys[@]}" taskset -c "$ENVOY_CORE" "$ENVOY" -c "$OUT/$v.yaml" --concurrency 1 --use-dynamic-base-id \
      -l warning --log-path "$OUT/$v.$round.envoy.log" &
    pid=$!
    pids+=("$pid")
    wait_ready "$BENCH_ADMIN_PORT" "$pid" || die "Envoy ($v) did not start: $OUT/$v.$round.envoy.log"
    got="$(curl -s --max-time 2 -o /dev/null -w '%header{x-bench-upstream}' -H 'x-geo-country: DE' -H 'x-bench-stack: eu' \
      "http://127.0.0.1:$BENCH_PORT/" || true)"
    [[ "$got" =~ ^($(expect_stack "$v"))$ ]] || die "variant $v routed a probe to '$got', expected '$(expect_stack "$v")'"

    load "$WARMUP" /dev/null
    # wrk ends the warm-up with requests in flight; Switchyard counts those client resets
    # as stack failures and may open breakers (open_ms 2 s in realistic.json). Let them
    # go half-open before measuring so the window is not 503s from that artefact.
    sleep "$SETTLE"
    before="$(cpu_ns "$pid")"
    t0="$(date +%s%N)"
    load "$DURATION" "$OUT/$v.$round.wrk.txt"
    after="$(cpu_ns "$pid")"
    t1="$(date +%s%N)"
    stop_pid "$pid"
    forget "$pid"

    w="$OUT/$v.$round.wrk.txt"
    requests="$(awk '/requests in/ {print $1}' "$w")"
    rps="$(awk '/^Requests\/sec/ {print $2}' "$w")"
    read -r p50 p99 < <(sed -n 's/^bench: p50_us=\([0-9]*\) p99_us=\([0-9]*\)$/\1 \2/p' "$w")
    non200="$(awk '/Non-2xx/ {print $NF}' "$w")"
    sockerr="$(awk -F'[ ,]+' '/Socket errors/ {print $4+$6+$8+$10}' "$w")"
    cpu=$((after - before))
    line="$(awk -v r="$round" -v v="$v" -v n="$requests" -v rps="$rps" -v c="$cpu" -v t=$((t1 - t0)) \
      -v p50="${p50:-0}" -v p99="${p99:-0}" -v bad="${non200:-0}" -v se="${sockerr:-0}" \
      'BEGIN {printf "%s\t%s\t%.0f\t%.3f\t%.1f\t%.0f\t%.3f\t%.3f\t%.0f\t%.0f\t%.0f\t%.0f\n", r, v, n, t/1e9, rps, c, c/1000/n, c/t, p50, p99, bad, se}')"
    printf '%s\n' "$line" >>"$results"
    log "round $round $(printf '%s' "$line" | awk -F'\t' '{printf "%-11s %8.0f rps  %6.2f µs/req  core %3.0f%%", $2, $5, $7, $8 * 100}')"
  done
done

# ---- report --------------------------------------------------------------------------
{
  echo "Data-plane benchmark, $(date -u +'%Y-%m-%d %H:%M UTC'), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))"
  echo "Envoy $("$ENVOY" --version | sed -n 's/.*version: [^/]*\/\([^/]*\)\/.*/\1/p') --concurrency 1 on core $ENVOY_CORE; wrk -t1 -c$CONNS and the upstream on core $LOAD_CORE"
  echo "rounds=$ROUNDS duration=${DURATION}s warmup=${WARMUP}s, variants interleaved: $VARIANTS"
  echo "source: $src_rev"
  echo
  python3 bench/report.py "$results" "$GOAL"
  echo
  echo "| artifact | bytes | KiB | goal |"
  echo "|---|---|---|---|"
  sy=$(stat -c %s "$SWITCHYARD_WASM")
  tr=$(stat -c %s "$BENCH_TRIVIAL_WASM")
  echo "| switchyard_filter.wasm | $sy | $((sy / 1024)) | ≤ 400 KB: $([ "$sy" -le 409600 ] && echo PASS || echo FAIL) |"
  echo "| switchyard_bench_trivial.wasm | $tr | $((tr / 1024)) | |"
} | tee "$OUT/report.md"
log "report: $OUT/report.md"
