#!/usr/bin/env bash
# Proxy overhead for docs/benchmarks.md (run by scripts/load.sh, or alone): the same GET sent
#   - directly to the upstream (examples/hello_server.rs, the stand-in broker),
#   - through flex-auth's reverse proxy (HS256 bearer verified, route matched, Cedar decision,
#     forwarded over a pooled connection),
#   - through nginx `auth_request` → flex-auth `/v1/authz/nginx` → upstream,
#   - through nginx `auth_request` → a no-op auth server (hello_server --empty, which checks
#     nothing) → upstream: what the auth hop alone costs nginx,
#   - through flex-auth's proxy with an EdDSA bearer from a JWKS file instead of HS256,
# at 1 connection (added latency) and CONNECTIONS connections (throughput), plus flex-auth's
# resident memory under load. The servers (upstream, flex-auth, nginx) share core 0, wrk runs on
# core 1 (taskset), so each setup gets the same CPU. Traffic stays on 127.0.0.1.
# Installs wrk, curl and nginx (Debian packages) when missing. Prints a Markdown section.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/auth-bench.sh

DURATION=${DURATION:-15s}
CONNECTIONS=${CONNECTIONS:-32}
UPSTREAM_PORT=${UPSTREAM_PORT:-18090}
FLEX_PORT=${FLEX_PORT:-18091}
PROXY_PORT=${PROXY_PORT:-18092}
NGINX_PORT=${NGINX_PORT:-18093}
NOOP_PORT=${NOOP_PORT:-18094}
NGINX_NOOP_PORT=${NGINX_NOOP_PORT:-18095}

if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null 2>&1; then
  SERVER_CPU=(taskset -c 0); LOAD_CPU=(taskset -c 1); PINNING="servers on core 0, wrk on core 1"
else
  SERVER_CPU=(); LOAD_CPU=(); PINNING="no CPU pinning"
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if ! command -v wrk >/dev/null 2>&1 || ! command -v curl >/dev/null 2>&1 || ! command -v openssl >/dev/null 2>&1 || [ ! -x "$NGINX" ]; then
  echo "installing wrk, curl, openssl and nginx" >&2
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk curl openssl nginx >/dev/null
  NGINX=$(command -v nginx || echo /usr/sbin/nginx)
fi

cargo build --release --locked --bin flex-auth --example hello_server >&2
BIN=target/release/flex-auth
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

wait_ready() {
  local url=$1 i
  for i in $(seq 1 300); do
    if curl -fsS -o /dev/null "$url" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "timed out waiting for $url" >&2
  return 1
}

cp scripts/lib/creds-routes.yaml "$work/routes.yaml"
token=$(python3 deploy/examples/broker/mint-demo-token.py agent-demo)
ed_token=$(eddsa_token "$work" agent-demo)
get_lua() { printf 'wrk.method = "GET"\nwrk.headers["Authorization"] = "Bearer %s"\n' "$1" >"$2"; }
get_lua "$token" "$work/get.lua"
get_lua "$ed_token" "$work/ed.lua"
path="/v1/creds/agent-demo?role=aws:demo-readonly"

"${SERVER_CPU[@]}" target/release/examples/hello_server "127.0.0.1:$UPSTREAM_PORT" 2>/dev/null &
pids+=($!)
"${SERVER_CPU[@]}" target/release/examples/hello_server "127.0.0.1:$NOOP_PORT" --empty 2>/dev/null &
pids+=($!)
FLEX_AUTH_LOG=warn "${SERVER_CPU[@]}" "$BIN" serve \
  --policy deploy/examples/broker/policy.cedar --registry deploy/examples/broker/registry.json \
  --routes "$work/routes.yaml" --upstream "http://127.0.0.1:$UPSTREAM_PORT" \
  --listen "127.0.0.1:$FLEX_PORT" --proxy-listen "127.0.0.1:$PROXY_PORT" \
  --issuer https://issuer.example --audience broker \
  --hs256-secret-file deploy/examples/broker/demo-hs256.secret \
  --jwks "$work/jwks.json" --jwt-algorithms EdDSA,HS256 2>/dev/null &
flex=$!; pids+=("$flex")
nginx_conf "$work" "flexauth=$FLEX_PORT noop=$NOOP_PORT broker=$UPSTREAM_PORT" \
  "$(nginx_auth_server "$NGINX_PORT" flexauth /v1/authz/nginx broker
     nginx_auth_server "$NGINX_NOOP_PORT" noop /auth broker)"
"${SERVER_CPU[@]}" "$NGINX" -p "$work" -c "$work/nginx.conf" 2>/dev/null &
pids+=($!)
wait_ready "http://127.0.0.1:$UPSTREAM_PORT/"
wait_ready "http://127.0.0.1:$FLEX_PORT/readyz"
for port in "$PROXY_PORT" "$NGINX_PORT" "$NGINX_NOOP_PORT"; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "http://127.0.0.1:$port$path")
  [ "$code" = 200 ] || { echo "setup check on :$port answered $code" >&2; exit 1; }
done
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $ed_token" "http://127.0.0.1:$PROXY_PORT$path")
[ "$code" = 200 ] || { echo "setup check: the EdDSA token answered $code" >&2; exit 1; }

# run NAME PORT CONNECTIONS [SCRIPT] → "rps p50 p99 non2xx"
run() {
  local name=$1 port=$2 conns=$3 script=${4:-$work/get.lua}
  "${LOAD_CPU[@]}" wrk -t1 -c"$conns" -d"$DURATION" --latency -s "$script" "http://127.0.0.1:$port$path" >"$work/$name.wrk"
  local rps p50 p99 non2xx
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$work/$name.wrk")
  p50=$(awk '$1 == "50%" {print $2}' "$work/$name.wrk")
  p99=$(awk '$1 == "99%" {print $2}' "$work/$name.wrk")
  non2xx=$(awk '/Non-2xx/ {print $5}' "$work/$name.wrk")
  echo "$rps $p50 $p99 ${non2xx:-0}"
}
# wrk latency (e.g. 45.00us, 1.20ms) in microseconds
us() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /ms$/) n *= 1000; else if (v ~ /[0-9]s$/) n *= 1000000; printf "%.0f", n }'; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", 100 * a / b }'; }

read -r d1_rps d1_p50 d1_p99 _ < <(run direct1 "$UPSTREAM_PORT" 1)
read -r p1_rps p1_p50 p1_p99 p1_non2xx < <(run proxy1 "$PROXY_PORT" 1)
read -r n1_rps n1_p50 n1_p99 n1_non2xx < <(run nginx1 "$NGINX_PORT" 1)
read -r o1_rps o1_p50 o1_p99 o1_non2xx < <(run noop1 "$NGINX_NOOP_PORT" 1)
read -r e1_rps e1_p50 e1_p99 e1_non2xx < <(run eddsa1 "$PROXY_PORT" 1 "$work/ed.lua")
read -r d_rps d_p50 d_p99 _ < <(run direct "$UPSTREAM_PORT" "$CONNECTIONS")
peak_before=$(awk '/^VmHWM:/ {print $2}' "/proc/$flex/status")
read -r p_rps p_p50 p_p99 p_non2xx < <(run proxy "$PROXY_PORT" "$CONNECTIONS")
rss_proxy=$(awk '/^VmRSS:/ {print $2}' "/proc/$flex/status")
hwm_proxy=$(awk '/^VmHWM:/ {print $2}' "/proc/$flex/status")
read -r n_rps n_p50 n_p99 n_non2xx < <(run nginx "$NGINX_PORT" "$CONNECTIONS")
read -r o_rps o_p50 o_p99 o_non2xx < <(run noop "$NGINX_NOOP_PORT" "$CONNECTIONS")
read -r e_rps e_p50 e_p99 e_non2xx < <(run eddsa "$PROXY_PORT" "$CONNECTIONS" "$work/ed.lua")
decisions=$(curl -fsS "http://127.0.0.1:$FLEX_PORT/metrics" | awk '$1 == "flex_auth_decisions_total{decision=\"allow\"}" {print $2}')

cat <<EOF2
### Proxy overhead — $(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)

Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr); wrk 1 thread, $DURATION per run, $PINNING. Request: \`GET $path\` with an HS256 bearer token (EdDSA rows: an Ed25519 token verified against a JWKS file); no-op auth: \`hello_server --empty\`; upstream: examples/hello_server.rs.

| path | conns | requests/s | p50 | p99 | non-2xx | % of direct | added p50 |
| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
| direct to upstream | 1 | $d1_rps | $d1_p50 | $d1_p99 | - | 100 | - |
| flex-auth proxy | 1 | $p1_rps | $p1_p50 | $p1_p99 | $p1_non2xx | $(pct "$p1_rps" "$d1_rps") | $(( $(us "$p1_p50") - $(us "$d1_p50") )) µs |
| nginx auth_request → flex-auth | 1 | $n1_rps | $n1_p50 | $n1_p99 | $n1_non2xx | $(pct "$n1_rps" "$d1_rps") | $(( $(us "$n1_p50") - $(us "$d1_p50") )) µs |
| nginx auth_request → no-op auth | 1 | $o1_rps | $o1_p50 | $o1_p99 | $o1_non2xx | $(pct "$o1_rps" "$d1_rps") | $(( $(us "$o1_p50") - $(us "$d1_p50") )) µs |
| flex-auth proxy, EdDSA (JWKS) | 1 | $e1_rps | $e1_p50 | $e1_p99 | $e1_non2xx | $(pct "$e1_rps" "$d1_rps") | $(( $(us "$e1_p50") - $(us "$d1_p50") )) µs |
| direct to upstream | $CONNECTIONS | $d_rps | $d_p50 | $d_p99 | - | 100 | - |
| flex-auth proxy | $CONNECTIONS | $p_rps | $p_p50 | $p_p99 | $p_non2xx | $(pct "$p_rps" "$d_rps") | - |
| nginx auth_request → flex-auth | $CONNECTIONS | $n_rps | $n_p50 | $n_p99 | $n_non2xx | $(pct "$n_rps" "$d_rps") | - |
| nginx auth_request → no-op auth | $CONNECTIONS | $o_rps | $o_p50 | $o_p99 | $o_non2xx | $(pct "$o_rps" "$d_rps") | - |
| flex-auth proxy, EdDSA (JWKS) | $CONNECTIONS | $e_rps | $e_p50 | $e_p99 | $e_non2xx | $(pct "$e_rps" "$d_rps") | - |

flex-auth resident memory: $(awk -v k="$rss_proxy" 'BEGIN { printf "%.1f", k / 1024 }') MiB after the proxy run (peak $(awk -v k="$hwm_proxy" 'BEGIN { printf "%.1f", k / 1024 }') MiB; $(awk -v k="$peak_before" 'BEGIN { printf "%.1f", k / 1024 }') MiB before it); $decisions allow decisions in all.
EOF2
