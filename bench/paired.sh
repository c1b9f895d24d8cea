#!/usr/bin/env bash
# Paired A/B of CPU per request. bench/run.sh interleaves variants in rounds of 8-10 s;
# on a shared VM the neighbours' load moves whole rounds by up to 50%, more than the
# effect being measured. Here variant A and variant B run *at the same time*: each its own
# Envoy (--concurrency 1), both pinned to the same core, each driven by its own wrk (both
# on the other core, with the shared direct_response upstream) over the same seconds.
# Whatever slows the core slows both; the per-round ratio B/A of CPU per request (each
# Envoy's run time from /proc/<pid>/task/*/schedstat ÷ requests its wrk completed) is
# measured side by side in the strictest sense. Reported: median of per-round ratios.
#
#   bench/paired.sh [A [B]]       defaults: trivial switchyard (any run.sh variant name
#                                 among none, trivial, switchyard, sy-queue (every route with an unused
#                                 queue fallback), sy-nokeys, lua, hc-*,
#                                 switchyard-alt; BENCH_HC_WASM, BENCH_ALT_WASM as in run.sh;
#                                 and native: variant (e), the same job in Envoy's own
#                                 configuration, bench/envoy/native.sh. With native in
#                                 the pair, returning visitors also carry its
#                                 stateful_session cookie, for both variants)
#   BENCH_POLICY_FILE [bench/policies/realistic.json]
#   BENCH_ROUNDS [9]  BENCH_DURATION [10] s  BENCH_WARMUP [3] s  BENCH_CONNECTIONS [8] per
#   Envoy  BENCH_ENVOY_CORE [0]  BENCH_LOAD_CORE [1]  BENCH_SKIP_BUILD [0]  ENVOY
#
# Ports (127.0.0.1 only): A 19300/19301, B 19310/19311, upstream admin 19302, upstream
# 19321-19325. Output: target/bench/paired-<UTC time>/{results.tsv,report.md}.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
A="${1:-trivial}"
B="${2:-switchyard}"
ROUNDS="${BENCH_ROUNDS:-9}"
DURATION="${BENCH_DURATION:-10}"
WARMUP="${BENCH_WARMUP:-3}"
CONNS="${BENCH_CONNECTIONS:-8}"
ENVOY_CORE="${BENCH_ENVOY_CORE:-0}"
LOAD_CORE="${BENCH_LOAD_CORE:-1}"
ENVOY="${ENVOY:-$root/.tools/envoy}"
KEYS="k1=0123456789abcdef0123" # benchmark-only affinity key, as in run.sh
# The policy of switchyard, sy-nokeys and switchyard-alt (an older module may not know a
# newer policy field: give both the same older policy).
POLICY="${BENCH_POLICY_FILE:-bench/policies/realistic.json}"
OUT="$root/target/bench/paired-$(date -u +%Y%m%dT%H%M%SZ)"
export BENCH_UP_ADMIN_PORT=19302 BENCH_UP_PORT=19321

log() { printf '[paired %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

pids=()
stop_pid() {
  kill -TERM "$1" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
cleanup() { local p; for p in "${pids[@]}"; do stop_pid "$p"; done; pids=(); }
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

[ -x "$ENVOY" ] || die "no Envoy at $ENVOY (run 'make setup' or set ENVOY)"
command -v wrk >/dev/null || die "wrk is not installed (make bench installs it)"
if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
  # The filter as it ships (the one producer of target/switchyard/switchyard_filter.wasm),
  # and the baseline with the same profile.
  scripts/build-wasm.sh -q >/dev/null
  cargo build -q --profile wasm --target wasm32-wasip1 -p switchyard-bench-trivial
fi
mkdir -p "$OUT"
cp target/switchyard/switchyard_filter.wasm "$OUT/"
cp target/wasm32-wasip1/wasm/switchyard_bench_trivial.wasm "$OUT/"
export SWITCHYARD_WASM="$OUT/switchyard_filter.wasm" BENCH_TRIVIAL_WASM="$OUT/switchyard_bench_trivial.wasm"

# variant → config on the given listener/admin ports
render() {
  local v="$1" port="$2" admin="$3"
  case "$v" in
    switchyard | sy-nokeys) BENCH_PORT=$port BENCH_ADMIN_PORT=$admin BENCH_POLICY="$POLICY" \
      bench/envoy/render.sh switchyard ;;
    sy-queue) BENCH_PORT=$port BENCH_ADMIN_PORT=$admin BENCH_POLICY=bench/policies/realistic-queue.json \
      bench/envoy/render.sh switchyard ;;
    native) BENCH_PORT=$port BENCH_ADMIN_PORT=$admin bench/envoy/native.sh ;;
    none | trivial | lua) BENCH_PORT=$port BENCH_ADMIN_PORT=$admin bench/envoy/render.sh "$v" ;;
    switchyard-alt) [ -f "${BENCH_ALT_WASM:-}" ] || die "switchyard-alt needs BENCH_ALT_WASM=/path/to/other/switchyard_filter.wasm"
      BENCH_PORT=$port BENCH_ADMIN_PORT=$admin SWITCHYARD_WASM="$BENCH_ALT_WASM" BENCH_POLICY="$POLICY" \
        bench/envoy/render.sh switchyard ;;
    hc-*) BENCH_PORT=$port BENCH_ADMIN_PORT=$admin BENCH_TRIVIAL_WASM="${BENCH_HC_WASM:-$BENCH_TRIVIAL_WASM}" \
      BENCH_TRIVIAL_CONFIG="${v#hc-}" bench/envoy/render.sh trivial ;;
    *) die "unknown variant '$v'" ;;
  esac
}
# start_envoy VARIANT CONFIG LOG: Switchyard gets the affinity keys in its environment (as
# in run.sh), every other variant runs without them.
start_envoy() {
  local keys=(env -u SWITCHYARD_AFFINITY_KEYS)
  case "$1" in switchyard | switchyard-alt | sy-queue) keys=(env "SWITCHYARD_AFFINITY_KEYS=$KEYS") ;; esac
  "${keys[@]}" taskset -c "$ENVOY_CORE" "$ENVOY" -c "$2" --concurrency 1 --use-dynamic-base-id -l warning --log-path "$3" &
}
# both_load SECONDS OUT_A OUT_B: both wrk at once, for the same seconds.
both_load() {
  taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNS" -d"$1s" -s "$OUT/load.lua" http://127.0.0.1:19300/ >"$2" &
  local wa=$!
  taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNS" -d"$1s" -s "$OUT/load.lua" http://127.0.0.1:19310/ >"$3" &
  local wb=$!
  wait "$wa" "$wb"
}

render "$A" 19300 19301 >"$OUT/a.yaml"
render "$B" 19310 19311 >"$OUT/b.yaml"
bench/envoy/render.sh upstream >"$OUT/upstream.yaml"
for f in upstream a b; do
  "$ENVOY" --mode validate -c "$OUT/$f.yaml" --use-dynamic-base-id -l error >/dev/null 2>&1 || die "Envoy rejects $OUT/$f.yaml"
done
session=0
if [ "$A" = native ] || [ "$B" = native ]; then session="$BENCH_UP_PORT"; fi
BENCH_SESSION_COOKIE_PORT="$session" python3 bench/load/gen_load.py "$KEYS" 256 7 >"$OUT/load.lua"

wait_ready() {
  for _ in $(seq 200); do
    kill -0 "$2" 2>/dev/null || return 1
    [ "$(curl -s --max-time 1 "http://127.0.0.1:$1/ready" || true)" = LIVE ] && return 0
    sleep 0.1
  done
  return 1
}
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%.0f\n", s}'; }

taskset -c "$LOAD_CORE" "$ENVOY" -c "$OUT/upstream.yaml" --concurrency 1 --use-dynamic-base-id -l warning \
  --log-path "$OUT/upstream.log" &
up=$!
pids+=("$up")
wait_ready 19302 "$up" || die "upstream did not start"

results="$OUT/results.tsv"
printf 'round\ta_requests\tb_requests\ta_cpu_ns\tb_cpu_ns\ta_us_per_req\tb_us_per_req\tratio\n' >"$results"
log "A=$A B=$B rounds=$ROUNDS duration=${DURATION}s warmup=${WARMUP}s -c$CONNS each; output $OUT"
for round in $(seq "$ROUNDS"); do
  start_envoy "$A" "$OUT/a.yaml" "$OUT/a.$round.log"
  pa=$!
  start_envoy "$B" "$OUT/b.yaml" "$OUT/b.$round.log"
  pb=$!
  pids+=("$pa" "$pb")
  wait_ready 19301 "$pa" || die "Envoy A did not start ($OUT/a.$round.log)"
  wait_ready 19311 "$pb" || die "Envoy B did not start ($OUT/b.$round.log)"
  for port in 19300 19310; do
    got="$(curl -s --max-time 2 -o /dev/null -w '%header{x-bench-upstream}' -H 'x-geo-country: DE' -H 'x-bench-stack: eu' \
      "http://127.0.0.1:$port/" || true)"
    [ -n "$got" ] || die "Envoy on $port answered no routed probe"
  done
  both_load "$WARMUP" /dev/null /dev/null
  sleep 2 # let the warm-up's cut-off requests drain (see run.sh)
  a0="$(cpu_ns "$pa")"
  b0="$(cpu_ns "$pb")"
  both_load "$DURATION" "$OUT/a.$round.wrk.txt" "$OUT/b.$round.wrk.txt"
  a1="$(cpu_ns "$pa")"
  b1="$(cpu_ns "$pb")"
  stop_pid "$pa"
  stop_pid "$pb"
  pids=("$up")
  na="$(awk '/requests in/ {print $1}' "$OUT/a.$round.wrk.txt")"
  nb="$(awk '/requests in/ {print $1}' "$OUT/b.$round.wrk.txt")"
  for f in "$OUT/a.$round.wrk.txt" "$OUT/b.$round.wrk.txt"; do
    ! grep -q 'Non-2xx' "$f" || log "warning: non-2xx responses in $f"
  done
  line="$(awk -v r="$round" -v na="$na" -v nb="$nb" -v ca=$((a1 - a0)) -v cb=$((b1 - b0)) \
    'BEGIN {a = ca / 1000 / na; b = cb / 1000 / nb; printf "%s\t%d\t%d\t%d\t%d\t%.3f\t%.3f\t%.4f\n", r, na, nb, ca, cb, a, b, b / a}')"
  printf '%s\n' "$line" >>"$results"
  log "round $round $(printf '%s' "$line" | awk -F'\t' '{printf "A %.2f µs/req (%d req)  B %.2f µs/req (%d req)  B/A %.3f", $6, $2, $7, $3, $8}')"
done

{
  echo "Paired benchmark, $(date -u +'%Y-%m-%d %H:%M UTC'): A=$A and B=$B under load at the same time, both Envoys"
  echo "(--concurrency 1) on core $ENVOY_CORE, two wrk -t1 -c$CONNS and the upstream on core $LOAD_CORE;"
  echo "rounds=$ROUNDS duration=${DURATION}s warmup=${WARMUP}s; source: $(git rev-parse --short HEAD)"
  echo
  python3 - "$results" "$A" "$B" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
a, b = sys.argv[2], sys.argv[3]
ratios = [float(r["ratio"]) for r in rows]
ua = [float(r["a_us_per_req"]) for r in rows]
ub = [float(r["b_us_per_req"]) for r in rows]
print("| | CPU µs/request (median) | min–max |")
print("|---|---|---|")
print(f"| A: {a} | {statistics.median(ua):.2f} | {min(ua):.2f}–{max(ua):.2f} |")
print(f"| B: {b} | {statistics.median(ub):.2f} | {min(ub):.2f}–{max(ub):.2f} |")
print()
print(f"**B/A = {statistics.median(ratios):.3f}** (median of {len(ratios)} paired rounds; "
      f"min–max {min(ratios):.3f}–{max(ratios):.3f}; rounds: {', '.join(f'{x:.3f}' for x in ratios)})")
PY
} | tee "$OUT/report.md"
log "report: $OUT/report.md"
