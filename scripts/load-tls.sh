#!/usr/bin/env bash
# Load run for docs/benchmarks.md (issue 7): POST /v1/check over plain HTTP/1.1, plain h2c,
# HTTPS with HTTP/1.1 and HTTPS with h2, same machine, same run, same request, one flex-auth
# release build on the shipped package; then an overload run far past --max-in-flight that
# reports how many requests were shed (503) and the peak resident memory.
# Installs h2load (Debian nghttp2-client) when missing; traffic goes to 127.0.0.1 only and every
# run is bounded by DURATION.
#
#   scripts/load-tls.sh                      # 15s per run, 32 connections
#   DURATION=30 CONNECTIONS=64 scripts/load-tls.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-15}          # seconds (h2load -D)
DURATION=${DURATION%s}
CONNECTIONS=${CONNECTIONS:-32}
PLAIN_PORT=${PLAIN_PORT:-18090}
TLS_PORT=${TLS_PORT:-18443}

if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null 2>&1; then
  SERVER_CPU=(taskset -c 0); LOAD_CPU=(taskset -c 1); PINNING="server pinned to core 0, h2load to core 1"
else
  SERVER_CPU=(); LOAD_CPU=(); PINNING="no CPU pinning"
fi

need() { command -v "$1" >/dev/null 2>&1; }
if ! need h2load || ! need curl; then
  echo "installing h2load (nghttp2-client) and curl" >&2
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nghttp2-client curl >/dev/null
fi

cargo build --release --locked --bin flex-auth --example gen_cert >&2
BIN=target/release/flex-auth

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

target/release/examples/gen_cert "$work/pki"
BODY='{"subject":{"id":"agt-state-hub-bridge"},"action":"sign","resource":{"type":"Actor","id":"agt-state-hub-bridge"},"context":{"ttl_hours":4,"principals":["state-hub"]}}'
printf '%s' "$BODY" >"$work/body.json"

wait_ready() {
  local url=$1 i
  for i in $(seq 1 300); do
    if curl -fsS --cacert "$work/pki/ca.crt" -o /dev/null "$url" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "timed out waiting for $url" >&2
  return 1
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
sample_peak_rss() {
  local pid=$1 stop=$2 peak=0 cur i
  for i in $(seq 1 2400); do
    [ -e "$stop" ] && break
    cur=$(rss_kib "$pid" 2>/dev/null || echo 0)
    [ "$cur" -gt "$peak" ] && peak=$cur
    sleep 0.05
  done
  echo "$peak"
}

# serve [flags…]: starts flex-auth in the background; its pid is left in $served (no command
# substitution: the server would hold the substitution's pipe open).
served=
serve() {
  FLEX_AUTH_LOG=error "${SERVER_CPU[@]}" "$BIN" serve --policy policies/ops-warden \
    --registry registry/ops-warden/production_registry_snapshot.json "$@" >/dev/null 2>&1 &
  served=$!
  pids+=("$served")
}

# run_h2load NAME URL [h2load flags…] → "rps mean_latency 2xx 5xx failed"
run_h2load() {
  local name=$1 url=$2; shift 2
  "${LOAD_CPU[@]}" h2load -t 1 -c "$CONNECTIONS" -D "$DURATION" --warm-up-time 2 \
    -d "$work/body.json" -H 'content-type: application/json' "$@" "$url" >"$work/$name.out" 2>&1 || true
  local rps mean ok5 ok2 failed
  rps=$(awk '/^finished in/ {gsub(",", "", $4); print $4}' "$work/$name.out")
  mean=$(awk '/^time for request:/ {print $6}' "$work/$name.out")
  ok2=$(awk '/^status codes:/ {print $3}' "$work/$name.out")
  ok5=$(awk '/^status codes:/ {print $9}' "$work/$name.out")
  failed=$(awk '/^requests:/ {print $10}' "$work/$name.out")
  echo "${rps:-0} ${mean:-?} ${ok2:-0} ${ok5:-0} ${failed:-0}"
}

serve --listen "127.0.0.1:$PLAIN_PORT"; plain=$served
serve --listen "127.0.0.1:$TLS_PORT" --tls-cert "$work/pki/tls.crt" --tls-key "$work/pki/tls.key"; tls=$served
wait_ready "http://127.0.0.1:$PLAIN_PORT/readyz"
wait_ready "https://127.0.0.1:$TLS_PORT/readyz"

# The two servers share core 0 but never run load at the same time.
read -r p1_rps p1_mean p1_2xx _ p1_fail < <(run_h2load plain_h1 "http://127.0.0.1:$PLAIN_PORT/v1/check" --h1)
read -r p2_rps p2_mean p2_2xx _ p2_fail < <(run_h2load plain_h2c "http://127.0.0.1:$PLAIN_PORT/v1/check")
read -r t1_rps t1_mean t1_2xx _ t1_fail < <(run_h2load tls_h1 "https://127.0.0.1:$TLS_PORT/v1/check" --h1)
read -r t2_rps t2_mean t2_2xx _ t2_fail < <(run_h2load tls_h2 "https://127.0.0.1:$TLS_PORT/v1/check")
alpn_h2=$(grep -c "Application protocol: h2" "$work/tls_h2.out" || true)
alpn_h1=$(grep -c "Application protocol: http/1.1" "$work/tls_h1.out" || true)
kill "$plain" "$tls"; wait "$plain" "$tls" 2>/dev/null || true

# Overload: 512 connections against --max-in-flight 16: shed at once, memory stays flat.
OVER_CONNECTIONS=${OVER_CONNECTIONS:-512}
serve --listen "127.0.0.1:$PLAIN_PORT" --max-in-flight 16; over=$served
wait_ready "http://127.0.0.1:$PLAIN_PORT/readyz"
sleep 1
over_idle=$(rss_kib "$over")
rm -f "$work/stop"; sample_peak_rss "$over" "$work/stop" >"$work/peak_over" &
sampler=$!
saved=$CONNECTIONS; CONNECTIONS=$OVER_CONNECTIONS
read -r o_rps o_mean o_2xx o_5xx o_fail < <(run_h2load over "http://127.0.0.1:$PLAIN_PORT/v1/check" --h1)
CONNECTIONS=$saved
touch "$work/stop"; wait "$sampler"; over_peak=$(cat "$work/peak_over")
shed_metric=$(curl -fsS "http://127.0.0.1:$PLAIN_PORT/metrics" | awk '/^flex_auth_refused_total\{reason="overloaded"\}/ {print $2}')
kill "$over"; wait "$over" 2>/dev/null || true

pct() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1f", 100 * a / b; else print "?" }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

cat <<EOF2
## TLS and overload — $(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD)

Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr); $PINNING.
h2load $(h2load --version | awk '{print $2; exit}'), ${DURATION}s per run after 2s warm-up, $CONNECTIONS connections, one
stream per connection, \`POST /v1/check\` (allow) on the shipped package, release build, log level error.

| transport | req/s | mean latency | vs plain HTTP/1.1 | 2xx | failed |
| --- | ---: | ---: | ---: | ---: | ---: |
| plain HTTP/1.1 | $p1_rps | $p1_mean | 100 % | $p1_2xx | $p1_fail |
| plain h2c | $p2_rps | $p2_mean | $(pct "$p2_rps" "$p1_rps") % | $p2_2xx | $p2_fail |
| HTTPS, HTTP/1.1 (ALPN seen: $alpn_h1) | $t1_rps | $t1_mean | $(pct "$t1_rps" "$p1_rps") % | $t1_2xx | $t1_fail |
| HTTPS, h2 (ALPN seen: $alpn_h2) | $t2_rps | $t2_mean | $(pct "$t2_rps" "$p1_rps") % | $t2_2xx | $t2_fail |

Overload: $OVER_CONNECTIONS connections against \`--max-in-flight 16\` (plain HTTP/1.1): $o_rps req/s answered,
$o_2xx decisions (2xx), $o_5xx shed with 503 \`overloaded\` (metric: ${shed_metric:-?}), $o_fail failed; mean latency
$o_mean. Resident memory $(mib "$over_idle") MiB idle, peak $(mib "$over_peak") MiB under the overload.
The in-flight limit counts requests from the moment the handler starts until the response is sent;
a CPU-bound check finishes before the next request is polled, so on this load the waiting happens
before the handler (bounded by \`--max-connections\` × one request per HTTP/1.1 connection, or
× \`--h2-max-concurrent-streams\`), which shows as latency, not as 503s. Shedding starts once
requests stay in flight (slow bodies, a slow upstream in proxy mode); \`tests/hardening.rs\`
(\`over_the_in_flight_limit_requests_are_shed_with_503_and_none_hangs\`) drives that case.
EOF2
