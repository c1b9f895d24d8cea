#!/usr/bin/env bash
# make run: demo stacks, the control service (when built) and Envoy with the Switchyard
# filter, all on 127.0.0.1. Ctrl-C stops everything.
#
# A demo stack that dies stays dead while everything else goes on serving (that is what
# the demo is for: watch Envoy route around it). scripts/chaos.sh kills, slows, fails and
# revives stacks; it finds them through the pid files in .run/pids/. The demo stops only
# when Envoy or the control service exits, or on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

ENVOY=${ENVOY:-.tools/envoy}
# Where the binaries are (tests run the demo on their debug builds).
BIN=${SWITCHYARD_BIN:-target/release}
RUN=${SWITCHYARD_RUN_DIR:-.run}
mkdir -p "$RUN/pids"
rm -f "$RUN"/pids/*.pid
pids=()

cleanup() {
  trap - INT TERM EXIT
  echo
  echo "stopping..."
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  # Stacks revived by scripts/chaos.sh are not our children: stop them through their pid files.
  for f in "$RUN"/pids/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -f "$RUN"/pids/*.pid
  echo "stopped."
  exit 0
}
trap cleanup INT TERM EXIT

for port in 10000 9901 8081 8082 8083 8084 8090 8091 4222 18000 18080; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is already in use on 127.0.0.1; stop whatever holds it (an earlier make run?)" >&2
    exit 1
  fi
done

[ -f target/switchyard/switchyard_filter.wasm ] || { echo "no filter module (envoy/envoy.yaml loads target/switchyard/switchyard_filter.wasm): run make build" >&2; exit 1; }

# name:port:region of each demo stack (scripts/chaos.sh reads this list to revive one).
STACKS="blue:8081:us green:8082:us canary:8083:us eu:8084:eu"
echo "$STACKS" >"$RUN/stacks"
for spec in $STACKS; do
  IFS=: read -r name port region <<<"$spec"
  "$BIN/switchyard-storefront" --name "$name" --port "$port" --region "$region" >"$RUN/$name.log" 2>&1 &
  pids+=($!)
  echo $! >"$RUN/pids/$name.pid"
done

# Credentials (docs/security.md): on the first start (or after .run/control-data was
# removed), an admin token for the CLI, a dataplane token for Envoy and an operator token
# for Alertmanager's webhook, created offline in the store and written to $RUN (mode
# 0600). The CLI reads .run/admin.token by itself; Envoy's control cluster reads the
# dataplane token through file-based SDS; examples/prometheus/alertmanager.yml reads
# .run/alertmanager.token.
if [ ! -s "$RUN/admin.token" ] || [ ! -s "$RUN/dataplane.token" ] || [ ! -s "$RUN/alertmanager.token" ] || [ ! -d "$RUN/control-data" ]; then
  rm -f "$RUN/admin.token" "$RUN/dataplane.token" "$RUN/alertmanager.token"
  for spec in make-run:admin:admin envoy-local:dataplane:dataplane alertmanager:operator:alertmanager; do
    IFS=: read -r name role file <<<"$spec"
    "$BIN/switchyard-control" token create --config examples/demo-control.toml \
      --data-dir "$RUN/control-data" --name "$name" --role "$role" --output "$RUN/$file.token" \
      2>>"$RUN/control.log"
  done
fi
(
  umask 077
  printf 'resources:\n- "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n  name: switchyard_control_token\n  generic_secret:\n    secret:\n      inline_string: "Bearer %s"\n' \
    "$(cat "$RUN/dataplane.token")" >"$RUN/control-token.yaml.new"
  mv "$RUN/control-token.yaml.new" "$RUN/control-token.yaml"
)
export SWITCHYARD_TOKEN_FILE="$RUN/admin.token"

# TLS and mTLS (docs/security.md): on the first start (or when $RUN/tls is incomplete), a
# demo CA and certificates made offline into $RUN/tls. The control service serves TLS on
# both ports and maps client certificates CN=envoy (Envoy: dataplane) and CN=admin (the
# CLI: admin) to identities; Envoy's control cluster presents envoy.pem through file-based
# SDS ($RUN/tls/envoy-sds-*.yaml). The CLI finds .run/tls/ca.pem and admin.pem by itself.
if [ ! -s "$RUN/tls/envoy-sds-ca.yaml" ]; then
  rm -rf "$RUN/tls"
  "$BIN/switchyard-control" certs demo --out "$RUN/tls" >/dev/null 2>"$RUN/certs.log" \
    || { cat "$RUN/certs.log" >&2; exit 1; }
fi
export SWITCHYARD_CA="$RUN/tls/ca.pem" SWITCHYARD_CERT="$RUN/tls/admin.pem" SWITCHYARD_KEY="$RUN/tls/admin.key"

# The control service with its embedded store; the demo policy is applied as version 1
# (or the stored state is restored when .run/control-data already has it).
"$BIN/switchyard-control" serve --config examples/demo-control.toml \
  --data-dir "$RUN/control-data" --grpc 127.0.0.1:18000 --http 127.0.0.1:18080 \
  --tls-cert "$RUN/tls/server.pem" --tls-key "$RUN/tls/server.key" --tls-client-ca "$RUN/tls/ca.pem" \
  --tls-identity CN=envoy=envoy:dataplane --tls-identity CN=admin=admin:admin \
  >"$RUN/control.out" 2>"$RUN/control.log" &
pids+=($!)
control_pid=$!
echo $! >"$RUN/pids/control.pid"
for _ in $(seq 1 100); do grep -q "grpc listening" "$RUN/control.out" 2>/dev/null && break; sleep 0.1; done
grep -q "grpc listening" "$RUN/control.out" || { echo "control service did not start; see $RUN/control.log" >&2; exit 1; }
if ! "$BIN/switchyard" policy get >/dev/null 2>&1; then
  "$BIN/switchyard" policy apply examples/policies/demo.json
fi

# Degraded mode (docs/degraded-mode.md): NATS JetStream (file store in $RUN/nats) and one
# order intake per region; they drain through Envoy on :10000. Skipped without nats-server.
NATS_SERVER=$(command -v nats-server || { [ -x /usr/sbin/nats-server ] && echo /usr/sbin/nats-server; } || true)
if [ -n "$NATS_SERVER" ] && [ -x "$BIN/switchyard-intake" ]; then
  "$NATS_SERVER" -a 127.0.0.1 -p 4222 --jetstream --store_dir "$RUN/nats" >"$RUN/nats.log" 2>&1 &
  pids+=($!)
  echo $! >"$RUN/pids/nats.pid"
  for spec in us:8090 eu:8091; do
    IFS=: read -r region port <<<"$spec"
    "$BIN/switchyard-intake" --region "$region" --listen "127.0.0.1:$port" --nats 127.0.0.1:4222 \
      --upstream http://127.0.0.1:10000 --drain-rate 5 >"$RUN/intake-$region.log" 2>&1 &
    pids+=($!)
    echo $! >"$RUN/pids/intake-$region.pid"
  done
else
  echo "note: no nats-server or $BIN/switchyard-intake: degraded mode's intakes are not started (make setup build)" >&2
fi

# Demo cookie keys. In production put real secrets in Envoy's environment.
export SWITCHYARD_AFFINITY_KEYS=${SWITCHYARD_AFFINITY_KEYS:-demo1=demo-affinity-secret-change-me}
# envoy/envoy.yaml as shipped, with the control token's and the TLS SDS files in $RUN.
sed -e "s#path: .run/control-token.yaml#path: $RUN/control-token.yaml#" \
  -e "s#path: .run/tls/#path: $RUN/tls/#" envoy/envoy.yaml >"$RUN/envoy.yaml"
"$ENVOY" -c "$RUN/envoy.yaml" --concurrency 2 --log-level warn --component-log-level wasm:info >"$RUN/envoy.log" 2>&1 &
pids+=($!)
envoy_pid=$!
echo $! >"$RUN/pids/envoy.pid"

for _ in $(seq 1 100); do
  if curl -fs -o /dev/null http://127.0.0.1:9901/ready 2>/dev/null; then break; fi
  sleep 0.1
done
curl -fs -o /dev/null http://127.0.0.1:9901/ready || { echo "envoy did not start; see $RUN/envoy.log" >&2; tail -20 "$RUN/envoy.log" >&2; exit 1; }

cat <<'MSG'

Switchyard is running (logs in .run/):
  storefront via Envoy   http://127.0.0.1:10000   (stacks: blue, green, canary, eu)
  Envoy admin            http://127.0.0.1:9901    (/stats/prometheus | grep switchyard)
  control service        grpc 127.0.0.1:18000, https://127.0.0.1:18080/api/v1/status (TLS, demo CA .run/tls/ca.pem)
  order intakes          http://127.0.0.1:8090 (us), :8091 (eu) on NATS 127.0.0.1:4222 (degraded mode)
  operator CLI           target/release/switchyard status | policy history | stacks list
  credentials            .run/admin.token (role admin; the CLI reads it from here, or
                         SWITCHYARD_TOKEN_FILE); Envoy uses .run/dataplane.token;
                         .run/alertmanager.token (role operator) is Alertmanager's
                         (examples/prometheus: scrape and webhook over https)
  TLS (mTLS)             .run/tls/: demo CA ca.pem, server.pem; client certificates
                         admin.pem (CN=admin: admin, the CLI's) and envoy.pem (CN=envoy:
                         dataplane, Envoy's, via .run/tls/envoy-sds-*.yaml)

Try:
  curl -si localhost:10000/ | grep -Ei 'x-served-by|set-cookie|x-switchyard'
  curl -s  localhost:10000/ -H 'x-geo-country: DE' -D - -o /dev/null | grep -i x-served-by    # EU stays in EU
  curl -s  localhost:10000/ -H "authorization: Bearer $(scripts/demo-jwt.sh alice beta)" -D - -o /dev/null | grep -i x-served  # beta cohort → canary
  curl -s  localhost:10000/ -H 'x-switchyard-stack: canary' -D - -o /dev/null | grep -i x-served-by   # spoofing has no effect
  curl -s  localhost:9901/stats/prometheus | grep '^switchyard_stack_rq_total'
  target/release/switchyard stacks weight green 0     # drain green on every worker, live
  target/release/switchyard stacks list
  curl -s --cacert .run/tls/ca.pem https://localhost:18080/api/v1/stacks -H "authorization: Bearer $(cat .run/admin.token)"
  curl -s --cacert .run/tls/ca.pem --cert .run/tls/admin.pem --key .run/tls/admin.key https://localhost:18080/api/v1/stacks   # mTLS, no token
  target/release/switchyard tokens create --name alice --role operator   # docs/security.md
  target/release/switchyard rollout start --stack green --stable blue --plan 0,5,20,50,100 --step 20s --warmup 5s --no-kpi-gates
  target/release/switchyard rollout status     # steps, gates, verdicts (durations compressed: examples/demo-control.toml)
  scripts/chaos.sh kill blue          # kill -9 a stack: the fast path evacuates it within ~1 s, the demo goes on
  scripts/chaos.sh slow green 300     # +300 ms on every green response; chaos.sh heal green undoes it
  scripts/chaos.sh revive blue        # start a killed stack again
  # Degraded mode (docs/degraded-mode.md): queue orders instead of failing them
  target/release/switchyard policy apply examples/intake/policy.json
  scripts/chaos.sh kill blue; scripts/chaos.sh kill green
  curl -s localhost:10000/checkout -H 'content-type: application/json' -H 'idempotency-key: demo-1' -d '{"cart":["tee-navy"]}'   # 202 + reference
  scripts/chaos.sh revive blue; scripts/chaos.sh revive green
  curl -s localhost:8090/orders/<reference>   # queued → placed;  curl -s localhost:8090/metrics

Press Ctrl-C to stop.
MSG
# Only Envoy or the control service ends the demo; a dead stack is part of the show.
wait -n "$control_pid" "$envoy_pid" || true
if ! kill -0 "$envoy_pid" 2>/dev/null; then
  echo "envoy exited; see $RUN/envoy.log" >&2
else
  echo "the control service exited; see $RUN/control.log" >&2
fi
