#!/usr/bin/env bash
# Break the `make run` demo on purpose, one stack at a time, to watch Switchyard react.
#
#   scripts/chaos.sh kill   STACK            kill -9 the stack's storefront (it stays dead)
#   scripts/chaos.sh revive STACK            start a killed stack again (same port and region)
#   scripts/chaos.sh slow   STACK MS         add MS milliseconds to every shop response
#   scripts/chaos.sh fail   STACK RATE       answer a fraction RATE (0..1) of shop requests 500
#   scripts/chaos.sh sick   STACK            make its /healthz answer 503 (traffic still served)
#   scripts/chaos.sh heal   STACK            clear every injected fault
#   scripts/chaos.sh status                  which stacks run, and their faults
#
# Stacks: blue, green, canary, eu (see .run/stacks). Everything stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${SWITCHYARD_RUN_DIR:-.run}
BIN=${SWITCHYARD_BIN:-target/release}

die() { echo "chaos: $*" >&2; exit 2; }
[ -f "$RUN/stacks" ] || die "the demo is not running (start it with: make run)"

spec_of() {
  for spec in $(cat "$RUN/stacks"); do
    IFS=: read -r name port region <<<"$spec"
    if [ "$name" = "$1" ]; then echo "$name $port $region"; return 0; fi
  done
  die "unknown stack '$1' (stacks: $(tr ' ' '\n' <"$RUN/stacks" | cut -d: -f1 | tr '\n' ' '))"
}

alive() { [ -f "$RUN/pids/$1.pid" ] && kill -0 "$(cat "$RUN/pids/$1.pid")" 2>/dev/null; }

faults() { # STACK JSON
  read -r _ port _ < <(spec_of "$1")
  alive "$1" || die "$1 is not running (scripts/chaos.sh revive $1)"
  curl -fsS -X POST "http://127.0.0.1:$port/admin/faults" -H 'content-type: application/json' -d "$2"
  echo
}

cmd=${1:-}
case "$cmd" in
  kill)
    [ $# -eq 2 ] || die "usage: chaos.sh kill STACK"
    spec_of "$2" >/dev/null
    alive "$2" || die "$2 is not running"
    kill -9 "$(cat "$RUN/pids/$2.pid")"
    echo "killed $2 (kill -9); Envoy routes around it. Revive: scripts/chaos.sh revive $2"
    ;;
  revive)
    [ $# -eq 2 ] || die "usage: chaos.sh revive STACK"
    read -r name port region < <(spec_of "$2")
    alive "$name" && die "$name is already running"
    nohup "$BIN/switchyard-storefront" --name "$name" --port "$port" --region "$region" \
      >>"$RUN/$name.log" 2>&1 &
    echo $! >"$RUN/pids/$name.pid"
    for _ in $(seq 1 50); do
      curl -fs -o /dev/null "http://127.0.0.1:$port/healthz" 2>/dev/null && break
      sleep 0.1
    done
    echo "revived $name on 127.0.0.1:$port (pid $(cat "$RUN/pids/$name.pid"))"
    ;;
  slow)
    [ $# -eq 3 ] || die "usage: chaos.sh slow STACK MS"
    faults "$2" "{\"latency_ms\": $3}"
    ;;
  fail)
    [ $# -eq 3 ] || die "usage: chaos.sh fail STACK RATE"
    faults "$2" "{\"error_rate\": $3}"
    ;;
  sick)
    [ $# -eq 2 ] || die "usage: chaos.sh sick STACK"
    faults "$2" '{"healthy": false}'
    ;;
  heal)
    [ $# -eq 2 ] || die "usage: chaos.sh heal STACK"
    faults "$2" '{"error_rate": 0, "latency_ms": 0, "healthy": true}'
    ;;
  status)
    for spec in $(cat "$RUN/stacks"); do
      IFS=: read -r name port _ <<<"$spec"
      if alive "$name"; then
        echo "$name: running on 127.0.0.1:$port, faults $(curl -fsS "http://127.0.0.1:$port/admin/faults" 2>/dev/null || echo '?')"
      else
        echo "$name: DOWN"
      fi
    done
    ;;
  *)
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    [ -z "$cmd" ] || [ "$cmd" = "-h" ] || [ "$cmd" = "--help" ] || exit 2
    ;;
esac
