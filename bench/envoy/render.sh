#!/usr/bin/env bash
# Render the Envoy bootstraps of the data-plane benchmark (bench/run.sh) to stdout.
#
#   bench/envoy/render.sh upstream            the direct_response upstream (5 ports)
#   bench/envoy/render.sh none|trivial|switchyard|lua
#                                             the Envoy under test, one per variant
#
# Every variant under test has the same listener, route table (x-switchyard-stack → one
# cluster per stack) and clusters; only the HTTP filter in front of the router differs.
# Addresses are 127.0.0.1 only. Environment (defaults in brackets):
#   BENCH_PORT [19100]           listener of the Envoy under test
#   BENCH_ADMIN_PORT [19101]     its admin
#   BENCH_UP_ADMIN_PORT [19102]  admin of the upstream Envoy
#   BENCH_UP_PORT [19111]        first of five upstream ports (one per stack)
#   BENCH_TRIVIAL_WASM, SWITCHYARD_WASM   the .wasm files (absolute paths)
#   BENCH_POLICY [bench/policies/realistic.json]   policy of the switchyard variant
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
variant="${1:?usage: render.sh upstream|none|trivial|switchyard|lua}"

PORT="${BENCH_PORT:-19100}"
ADMIN_PORT="${BENCH_ADMIN_PORT:-19101}"
UP_ADMIN_PORT="${BENCH_UP_ADMIN_PORT:-19102}"
UP_PORT="${BENCH_UP_PORT:-19111}"
TRIVIAL_WASM="${BENCH_TRIVIAL_WASM:-$root/target/wasm32-wasip1/wasm/switchyard_bench_trivial.wasm}"
FILTER_WASM="${SWITCHYARD_WASM:-$root/target/switchyard/switchyard_filter.wasm}"
POLICY="${BENCH_POLICY:-$root/bench/policies/realistic.json}"
STACKS=(blue green canary eu apac)

upstream() {
  cat <<YAML
# Upstream of the benchmark: one listener per stack answering 200 from Envoy itself.
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: $UP_ADMIN_PORT } }
static_resources:
  listeners:
YAML
  local i=0
  for s in "${STACKS[@]}"; do
    cat <<YAML
  - name: $s
    address: { socket_address: { address: 127.0.0.1, port_value: $((UP_PORT + i)) } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: up_$s
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                direct_response: { status: 200, body: { inline_string: "ok $s\n" } }
              response_headers_to_add:
              - header: { key: x-bench-upstream, value: $s }
YAML
    i=$((i + 1))
  done
}

filter() {
  case "$variant" in
    none) ;;
    trivial)
      cat <<YAML
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: trivial
                root_id: trivial
                failure_policy: FAIL_OPEN
                vm_config:
                  vm_id: trivial
                  runtime: envoy.wasm.runtime.v8
                  code: { local: { filename: $TRIVIAL_WASM } }
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: "${BENCH_TRIVIAL_CONFIG:-}"
YAML
      ;;
    switchyard)
      cat <<YAML
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: switchyard
                root_id: switchyard
                failure_policy: FAIL_OPEN
                vm_config:
                  vm_id: switchyard
                  runtime: envoy.wasm.runtime.v8
                  code: { local: { filename: $FILTER_WASM } }
                  environment_variables:
                    host_env_keys: [SWITCHYARD_AFFINITY_KEYS]
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: |
YAML
      sed 's/^/                    /' "$POLICY"
      ;;
    lua)
      cat <<YAML
          - name: envoy.filters.http.lua
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
              default_source_code: { filename: $here/route.lua }
YAML
      ;;
    *) echo "render.sh: unknown variant '$variant'" >&2; exit 2 ;;
  esac
}

under_test() {
  cat <<YAML
# Envoy under test, variant '$variant' (rendered by bench/envoy/render.sh).
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: $ADMIN_PORT } }
static_resources:
  listeners:
  - name: storefront
    address: { socket_address: { address: 127.0.0.1, port_value: $PORT } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: storefront
          http_filters:
YAML
  filter
  cat <<YAML
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            name: stacks
            internal_only_headers: [x-switchyard-stack, x-switchyard-decision]
            request_headers_to_remove: [x-switchyard-stack]
            virtual_hosts:
            - name: storefront
              domains: ["*"]
              routes:
YAML
  for s in "${STACKS[@]}"; do
    cat <<YAML
              - match: { prefix: "/", headers: [ { name: x-switchyard-stack, string_match: { exact: $s } } ] }
                route: { cluster: $s }
YAML
  done
  cat <<YAML
              - match: { prefix: "/" }
                route: { cluster: blue }
  clusters:
YAML
  local i=0
  for s in "${STACKS[@]}"; do
    cat <<YAML
  - name: $s
    type: STATIC
    connect_timeout: 0.25s
    load_assignment:
      cluster_name: $s
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $((UP_PORT + i)) } } }
YAML
    i=$((i + 1))
  done
}

if [ "$variant" = upstream ]; then upstream; else under_test; fi
