#!/usr/bin/env bash
# The verified-token cache through the proxy (issue 19): GET through flex-auth's reverse proxy
# with an HS256 bearer (secret file) and with an EdDSA bearer (JWKS file), each with the cache
# on (the default, --jwt-cache-entries 10000) and off (0), pinned (servers on core 0, wrk on
# core 1) and unpinned (the sidecar case), against the upstream alone. Prints Markdown.
#
#   scripts/load-jwt-cache.sh            # DURATION=10s CONNECTIONS=32
#
# Loopback only; every wait bounded. Installs wrk, curl, openssl (Debian) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
UPSTREAM_PORT=${UPSTREAM_PORT:-18190}
FLEX_PORT=${FLEX_PORT:-18191}
PROXY_PORT=${PROXY_PORT:-18192}

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need curl || ! need openssl || ! need taskset; then
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk curl openssl util-linux >/dev/null
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

cp scripts/lib/creds-routes.yaml "$work/routes.yaml"
b64() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
# An Ed25519 key, its JWKS, and an EdDSA token signed with openssl (no Python crypto needed).
openssl genpkey -algorithm ed25519 -out "$work/ed.pem" 2>/dev/null
x=$(openssl pkey -in "$work/ed.pem" -pubout -outform DER | tail -c 32 | b64)
printf '{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"ed","x":"%s"}]}' "$x" >"$work/jwks.json"
now=$(date +%s)
header=$(printf '{"alg":"EdDSA","typ":"JWT","kid":"ed"}' | b64)
claims=$(printf '{"sub":"agent-demo","iss":"https://issuer.example","aud":"broker","iat":%d,"exp":%d}' "$now" $((now + 3600)) | b64)
printf '%s.%s' "$header" "$claims" >"$work/signing-input"
signature=$(openssl pkeyutl -sign -inkey "$work/ed.pem" -rawin -in "$work/signing-input" | b64)
ed_token="$header.$claims.$signature"
hs_token=$(python3 deploy/examples/broker/mint-demo-token.py agent-demo)
path="/v1/creds/agent-demo?role=aws:demo-readonly"

wait_ready() {
  for _ in $(seq 1 300); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "not ready: $1" >&2; return 1
}
run_wrk() { # URL TOKEN LOAD_CPU… → "rps p50 p99"
  local url=$1 token=$2; shift 2
  printf 'wrk.method = "GET"\nwrk.headers["Authorization"] = "Bearer %s"\n' "$token" >"$work/get.lua"
  "$@" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -s "$work/get.lua" "$url" >"$work/wrk.out"
  awk '/^Requests\/sec:/ {r=$2} $1 == "50%" {p50=$2} $1 == "99%" {p99=$2} END {print r, p50, p99}' "$work/wrk.out"
}

echo "| CPUs | setup | req/s | p50 | p99 | of direct |"
echo "| --- | --- | ---: | ---: | ---: | ---: |"
for mode in pinned unpinned; do
  if [ "$mode" = pinned ]; then server=(taskset -c 0); load=(taskset -c 1); else server=(); load=(); fi
  "${server[@]}" target/release/examples/hello_server "127.0.0.1:$UPSTREAM_PORT" 2>/dev/null &
  up=$!; pids+=("$up")
  wait_ready "http://127.0.0.1:$UPSTREAM_PORT/"
  run_wrk "http://127.0.0.1:$UPSTREAM_PORT$path" "$hs_token" "${load[@]}" >/dev/null
  read -r d_rps d_p50 d_p99 < <(run_wrk "http://127.0.0.1:$UPSTREAM_PORT$path" "$hs_token" "${load[@]}")
  echo "| $mode | direct to the upstream | $d_rps | $d_p50 | $d_p99 | 1.00 |"
  for entries in 10000 0; do
    FLEX_AUTH_LOG=warn "${server[@]}" "$BIN" serve \
      --policy deploy/examples/broker/policy.cedar --registry deploy/examples/broker/registry.json \
      --routes "$work/routes.yaml" --upstream "http://127.0.0.1:$UPSTREAM_PORT" \
      --listen "127.0.0.1:$FLEX_PORT" --proxy-listen "127.0.0.1:$PROXY_PORT" \
      --issuer https://issuer.example --audience broker --jwks "$work/jwks.json" \
      --hs256-secret-file deploy/examples/broker/demo-hs256.secret --jwt-algorithms EdDSA,HS256 \
      --jwt-cache-entries "$entries" 2>/dev/null &
    flex=$!; pids+=("$flex")
    wait_ready "http://127.0.0.1:$FLEX_PORT/readyz"
    for alg in hs256 eddsa; do
      token=$hs_token; [ "$alg" = eddsa ] && token=$ed_token
      code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "http://127.0.0.1:$PROXY_PORT$path")
      [ "$code" = 200 ] || { echo "proxy answered $code for $alg" >&2; exit 1; }
      run_wrk "http://127.0.0.1:$PROXY_PORT$path" "$token" "${load[@]}" >/dev/null
      read -r rps p50 p99 < <(run_wrk "http://127.0.0.1:$PROXY_PORT$path" "$token" "${load[@]}")
      cache=on; [ "$entries" = 0 ] && cache=off
      ratio=$(awk -v a="$rps" -v b="$d_rps" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
      echo "| $mode | proxy, $alg, cache $cache | $rps | $p50 | $p99 | $ratio |"
    done
    kill "$flex"; wait "$flex" 2>/dev/null || true
  done
  kill "$up"; wait "$up" 2>/dev/null || true
done
echo
echo "wrk -t1 -c$CONNECTIONS -d$DURATION (after a warm-up run), GET $path, broker example policy; commit $(git rev-parse --short HEAD), $(date -u +%F), $(nproc) cores"
