#!/usr/bin/env bash
# Variant (e) of the data-plane benchmark, `native`: the job of bench/policies/realistic.json
# done with Envoy's own configuration only, as a team without Switchyard would write it
# (issue 14, item 6). Prints the Envoy-under-test bootstrap to stdout; same listener,
# clusters and upstreams as bench/envoy/render.sh, no wasm, no Lua:
#   - the segments as header-match routes, in the policy's priority order: geo (EU, APAC)
#     by a regex on x-geo-country, partner and POS by header or path, cohorts by
#     x-jwt-cohort, crawlers and the mobile app by a regex on user-agent, checkout
#     writes, GraphQL and search by method and path, MX/BR by country;
#   - the percentage splits as `weighted_clusters` (per request at random: a route cannot
#     bucket by user);
#   - stickiness by the `stateful_session` filter with cookie-based session state
#     (`sy_sess`, one hour): it remembers the upstream *host*, so it keeps a visitor on a
#     host of the cluster the route chose, not on the stack `weighted_clusters` drew.
# What it cannot express (time windows and campaigns, address ranges, residency that
# survives failover, signed cookies, breaker-aware stickiness, live push, ambiguous
# geography) is listed in docs/BENCHMARKS.md.
#
# Environment as render.sh: BENCH_PORT [19100], BENCH_ADMIN_PORT [19101], BENCH_UP_PORT [19111].
set -euo pipefail

PORT="${BENCH_PORT:-19100}"
ADMIN_PORT="${BENCH_ADMIN_PORT:-19101}"
UP_PORT="${BENCH_UP_PORT:-19111}"
STACKS=(blue green canary eu apac)

# route MATCH ACTION: one route entry.
route() {
  printf '              - match: %s\n                route: %s\n' "$1" "$2"
}
weighted() { # weighted_clusters from "name:weight ..."
  local out="{ weighted_clusters: { clusters: ["
  local sep=""
  for cw in "$@"; do
    out+="$sep { name: ${cw%%:*}, weight: ${cw#*:} }"
    sep=","
  done
  printf '%s ] } }' "$out"
}
hdr_regex() { printf '{ name: %s, string_match: { safe_regex: { regex: "%s" } } }' "$1" "$2"; }

cat <<YAML
# Envoy under test, variant 'native' (rendered by bench/envoy/native.sh).
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
          - name: envoy.filters.http.stateful_session
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSession
              session_state:
                name: envoy.http.stateful_session.cookie
                typed_config:
                  "@type": type.googleapis.com/envoy.extensions.http.stateful_session.cookie.v3.CookieBasedSessionState
                  cookie: { name: sy_sess, path: /, ttl: 3600s }
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            name: segments
            virtual_hosts:
            - name: storefront
              domains: ["*"]
              routes:
YAML
# eu-residency, apac-region (a repeated header is joined with commas by Envoy's matcher,
# so "DE,US" matches neither: the default route, out of the EU)
route "{ prefix: /, headers: [ $(hdr_regex x-geo-country '(?i)\\s*(DE|FR|NL|IE|ES|IT|PL|SE)\\s*') ] }" "{ cluster: eu }"
route "{ prefix: /, headers: [ $(hdr_regex x-geo-country '(?i)\\s*(JP|AU|SG|IN|KR)\\s*') ] }" "{ cluster: apac }"
# partner-api, pos-stores (channel by header or path)
route "{ prefix: /, headers: [ { name: x-partner-key, present_match: true } ] }" "{ cluster: green }"
route "{ prefix: /partner/ }" "{ cluster: green }"
route "{ prefix: /pos/ }" "{ cluster: blue }"
route "{ prefix: /, headers: [ { name: x-store-id, present_match: true } ] }" "{ cluster: blue }"
# staff-dogfood and beta-cohort, premium-cohort
route "{ prefix: /, headers: [ $(hdr_regex x-jwt-cohort 'staff|beta') ] }" "{ cluster: canary }"
route "{ prefix: /, headers: [ $(hdr_regex x-jwt-cohort 'premium|gold') ] }" "{ cluster: blue }"
# (black-friday, maintenance-window: time conditions, not expressible)
# crawlers
route "{ prefix: /, headers: [ $(hdr_regex user-agent '(?i).*(googlebot|bingbot|applebot).*') ] }" "{ cluster: green }"
# mobile-canary (2 %) and mobile-app (hash on the user: here random per request)
route "{ prefix: /, headers: [ $(hdr_regex user-agent '(?i).*(ShopApp-iOS|ShopApp-Android).*') ] }" \
  "$(weighted canary:2 blue:49 green:49)"
# checkout-writes, graphql
route "{ prefix: /checkout, headers: [ $(hdr_regex :method 'POST|PUT|DELETE') ] }" "$(weighted blue:50 green:50)"
route "{ prefix: /cart, headers: [ $(hdr_regex :method 'POST|PUT|DELETE') ] }" "$(weighted blue:50 green:50)"
route "{ prefix: /graphql, headers: [ { name: :method, string_match: { exact: POST } } ] }" "$(weighted blue:50 green:50)"
# search-api
route "{ prefix: /api/search }" "{ cluster: green }"
route "{ prefix: /api/suggest }" "{ cluster: green }"
# north-america-latam
route "{ prefix: /, headers: [ $(hdr_regex x-geo-country '(?i)\\s*(MX|BR)\\s*') ] }" "{ cluster: blue }"
# (weekend-promo: time, not expressible)
# web-canary-slice 5 %, green-ramp 20 %, the rest 50/50: one weighted split of everyone
# left (the user buckets become a per-request draw)
route "{ prefix: / }" "$(weighted canary:10 green:115 blue:75)"
echo "  clusters:"
i=0
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
