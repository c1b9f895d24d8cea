#!/usr/bin/env bash
# Orders accepted per second by the reference intake (examples/intake) on this machine:
# a real nats-server with JetStream on loopback (file store), the release intake, wrk
# POSTing new orders (each a unique Idempotency-Key) straight at the intake. Every 202
# means the broker acknowledged the publish (durable) and the status was recorded.
#   bench/intake.sh            INTAKE_DURATION [10] s, INTAKE_CONNECTIONS [16]
# Prints orders/s, latency and the intake's own accepted count (which must equal wrk's
# 2xx count). Nothing drains: --upstream points at a closed port.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
NATS_SERVER="${NATS_SERVER:-$(command -v nats-server || echo /usr/sbin/nats-server)}"
DURATION="${INTAKE_DURATION:-10}"
CONNS="${INTAKE_CONNECTIONS:-16}"
[ -x target/release/switchyard-intake ] || cargo build -q --release -p switchyard-intake
tmp="$(mktemp -d)"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
nats_port="$(free_port)"; intake_port="$(free_port)"; dead_port="$(free_port)"
"$NATS_SERVER" -a 127.0.0.1 -p "$nats_port" --jetstream --store_dir "$tmp/store" >"$tmp/nats.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break; sleep 0.1; done
target/release/switchyard-intake --listen "127.0.0.1:$intake_port" --nats "127.0.0.1:$nats_port" \
  --region us --upstream "http://127.0.0.1:$dead_port" --retry-s 5 >"$tmp/intake.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$intake_port/healthz" >/dev/null && break; sleep 0.1; done
echo "intake bench: $(date -u +%FT%TZ), source $(git rev-parse --short HEAD), ${DURATION}s, ${CONNS} connections, nats-server $("$NATS_SERVER" --version 2>&1 | head -1)"
wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s bench/intake.lua "http://127.0.0.1:$intake_port" | tee "$tmp/wrk.txt"
accepted="$(curl -s "http://127.0.0.1:$intake_port/metrics" | awk '/^switchyard_intake_accepted_total/ {print $2}')"
echo "intake accepted_total: $accepted (each durably published and recorded)"
