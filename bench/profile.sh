#!/usr/bin/env bash
# Where does the Envoy under test spend its CPU? Runs one variant of bench/run.sh under
# the same load and pinning, samples it with `perf record` and prints the top symbols
# grouped by where they live (kernel, Envoy's C++ incl. the wasm host ABI, V8 runtime,
# code V8 generated from the .wasm/Lua JIT).
#
#   bench/profile.sh switchyard|trivial|none|lua [seconds]
#
# Needs `perf` (Debian: apt-get install linux-perf). Uses ports BENCH_PORT.. like run.sh
# (defaults here are 19200.. so it can run next to a run.sh); 127.0.0.1 only.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
variant="${1:?usage: profile.sh VARIANT [seconds]}"
secs="${2:-15}"
ENVOY="${ENVOY:-$root/.tools/envoy}"
KEYS="k1=0123456789abcdef0123"
export BENCH_PORT="${BENCH_PORT:-19200}" BENCH_ADMIN_PORT="${BENCH_ADMIN_PORT:-19201}"
export BENCH_UP_ADMIN_PORT="${BENCH_UP_ADMIN_PORT:-19202}" BENCH_UP_PORT="${BENCH_UP_PORT:-19211}"
command -v perf >/dev/null || { echo "perf is not installed (apt-get install linux-perf)" >&2; exit 1; }
out="${BENCH_OUT:-$root/target/bench/profile-$variant-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$out"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
trap 'exit 130' INT TERM

bench/envoy/render.sh upstream >"$out/upstream.yaml"
case "$variant" in
  sy-nokeys) BENCH_POLICY=bench/policies/realistic.json bench/envoy/render.sh switchyard ;;
  sy-nocidrs) BENCH_POLICY=bench/policies/realistic-no-cidrs.json bench/envoy/render.sh switchyard ;;
  sy-norules) BENCH_POLICY=bench/policies/default-affinity.json bench/envoy/render.sh switchyard ;;
  sy-default) BENCH_POLICY=bench/policies/default-only.json bench/envoy/render.sh switchyard ;;
  *) bench/envoy/render.sh "$variant" ;;
esac >"$out/$variant.yaml"
python3 bench/load/gen_load.py "$KEYS" 256 7 >"$out/load.lua"

ready() { for _ in $(seq 200); do [ "$(curl -s --max-time 1 "http://127.0.0.1:$1/ready" || true)" = LIVE ] && return 0; sleep 0.1; done; return 1; }
taskset -c 1 "$ENVOY" -c "$out/upstream.yaml" --concurrency 1 --use-dynamic-base-id -l warning --log-path "$out/upstream.log" &
pids+=($!)
ready "$BENCH_UP_ADMIN_PORT"
keys=(env -u SWITCHYARD_AFFINITY_KEYS)
[ "$variant" = sy-nokeys ] || keys=(env "SWITCHYARD_AFFINITY_KEYS=$KEYS")
"${keys[@]}" taskset -c 0 "$ENVOY" -c "$out/$variant.yaml" --concurrency 1 --use-dynamic-base-id -l warning --log-path "$out/envoy.log" &
pid=$!
pids+=("$pid")
ready "$BENCH_ADMIN_PORT"
taskset -c 1 wrk -t1 -c16 -d3s -s "$out/load.lua" "http://127.0.0.1:$BENCH_PORT/" >/dev/null
taskset -c 1 wrk -t1 -c16 -d"$((secs + 2))s" -s "$out/load.lua" "http://127.0.0.1:$BENCH_PORT/" >"$out/wrk.txt" &
wrk_pid=$!
pids+=("$wrk_pid")
rq() { curl -s "http://127.0.0.1:$BENCH_ADMIN_PORT/stats?filter=^http.storefront.downstream_rq_completed$" | awk '{print $2}'; }
rq0="$(rq)"
perf record -q -F 999 -p "$pid" -o "$out/perf.data" -- sleep "$secs" 2>"$out/perf-record.txt"
rq1="$(rq)"
wait "$wrk_pid" || true
requests=$((rq1 - rq0))

perf report -i "$out/perf.data" -n --no-children --sort dso,sym --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' >"$out/symbols.txt"
# The pip wheel's Envoy is stripped: its C++ (HTTP codec, router, V8 runtime, the wasm
# host ABI) is one group. Code V8 generated from the .wasm (or LuaJIT traces) has no
# symbol and shows as [JIT].
awk -v rq="$requests" -v hz=999 '
  { n = $2; line = $0; total += n }
  line ~ /\[kernel/ { g["kernel (network stack, syscalls)"] += n; next }
  line ~ /\[JIT\]|\[unknown\]|perf-[0-9]+\.map/ { g["generated code: wasm compiled by V8 / Lua JIT"] += n; next }
  line ~ /libc|libm|libpthread|ld-linux|vdso/ { g["libc, vdso"] += n; next }
  line ~ / envoy / { g["Envoy C++ (incl. V8 runtime, wasm host ABI, Lua VM)"] += n; next }
  { g["other"] += n }
  END {
    for (k in g) printf "%8.2f µs/request  %5.1f%%  %s\n", g[k] * 1e6 / hz / rq, g[k] * 100 / total, k
    printf "%8.2f µs/request  100.0%%  total (%d samples at %d Hz, %d requests)\n", total * 1e6 / hz / rq, total, hz, rq
  }
' "$out/symbols.txt" | sort -rn >"$out/groups.txt"
echo "== $variant: $requests requests in the ${secs}s profiled"
cat "$out/groups.txt"
echo "-- top symbols"
head -15 "$out/symbols.txt"
echo "(full: $out/symbols.txt)"
