#!/usr/bin/env bash
# The hot path against the hardware (issue 19), for docs/benchmarks.md. Each workload is a
# `wrk -t2 -c64 -d10s` run after a 2 s warm-up, and each ratio is against a ceiling measured in
# the same run on the same machine:
#   - POST /v1/check, shipped ops-warden package + production registry   (ceiling: hello server)
#   - POST /v1/check, one permit over raw Cedar entities                   (ceiling: hello server)
#   - GET through the proxy, HS256 bearer → route → Cedar → hello upstream (ceiling: direct)
#   - the same with an EdDSA bearer from a JWKS file
#   - nginx auth_request → a no-op auth server (hello_server --empty) → hello upstream: what an
#     auth hop costs when it checks nothing
#   - 1 connection: p50 direct, through the proxy, through nginx → no-op (added latency)
# Two CPU layouts, each a full pass: `unpinned` (the sidecar case: servers and wrk share both
# cores) and `pinned` (servers on core 0, wrk on core 1). Prints Markdown.
#
#   scripts/load-hot-path.sh                 # DURATION=10s WARMUP=2s CONNECTIONS=64 THREADS=2
#   FLEX_BIN=/tmp/fa-base scripts/load-hot-path.sh   # measure another build the same way
#   LAYOUTS=unpinned scripts/load-hot-path.sh
#
# Loopback only; every wait bounded. Installs wrk, curl, nginx, openssl (Debian) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/auth-bench.sh

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
LAYOUTS=${LAYOUTS:-unpinned pinned}
BASE_PORT=${BASE_PORT:-18300}
HELLO_PORT=$BASE_PORT UPSTREAM_PORT=$((BASE_PORT + 1)) NOOP_PORT=$((BASE_PORT + 2))
CHECK_PORT=$((BASE_PORT + 3)) RAW_PORT=$((BASE_PORT + 4)) FLEX_PORT=$((BASE_PORT + 5))
PROXY_PORT=$((BASE_PORT + 6)) NGINX_PORT=$((BASE_PORT + 7))

need() { command -v "$1" >/dev/null 2>&1; }
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if ! need wrk || ! need curl || ! need openssl || ! need taskset || [ ! -x "$NGINX" ]; then
  echo "installing wrk, curl, nginx and openssl" >&2
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk curl nginx openssl util-linux >/dev/null
  NGINX=$(command -v nginx || echo /usr/sbin/nginx)
fi
if [ -z "${FLEX_BIN:-}" ]; then
  cargo build --release --locked --bin flex-auth --example hello_server >&2
  FLEX_BIN=target/release/flex-auth
else
  cargo build --release --locked --example hello_server >&2
fi
HELLO=target/release/examples/hello_server
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

wait_ready() {
  for _ in $(seq 1 300); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "not ready: $1" >&2; return 1
}
expect() { # CODE URL CURL-ARGS…
  local want=$1 url=$2; shift 2
  local got
  got=$(curl -s -o /dev/null -w '%{http_code}' "$@" "$url")
  [ "$got" = "$want" ] || { echo "setup check: $url answered $got, expected $want" >&2; exit 1; }
}

# --- inputs -------------------------------------------------------------------------------
check_body='{"subject":{"id":"agt-state-hub-bridge"},"action":"sign","resource":{"type":"Actor","id":"agt-state-hub-bridge"},"context":{"ttl_hours":4,"principals":["state-hub"]}}'
raw_body='{"subject":{"id":"alice"},"action":"sign","resource":{"type":"Actor","id":"build-bot"},"context":{"ttl":4}}'
cat >"$work/one.cedar" <<'CEDAR'
@id("one-permit")
permit (principal, action == Action::"sign", resource)
when { resource.allowed_subjects.contains(principal) && context.ttl <= resource.max_ttl };
CEDAR
cat >"$work/entities.json" <<'JSON'
[
  {"uid": {"type": "Actor", "id": "build-bot"},
   "attrs": {"allowed_subjects": [{"__entity": {"type": "Subject", "id": "alice"}}], "max_ttl": 8},
   "parents": []},
  {"uid": {"type": "Subject", "id": "alice"}, "attrs": {}, "parents": []}
]
JSON
cp scripts/lib/creds-routes.yaml "$work/routes.yaml"
ed_token=$(eddsa_token "$work" agent-demo)
hs_token=$(python3 deploy/examples/broker/mint-demo-token.py agent-demo)
path="/v1/creds/agent-demo?role=aws:demo-readonly"

post_lua() { printf 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = [[%s]]\n' "$1" >"$2"; }
get_lua() { printf 'wrk.method = "GET"\nwrk.headers["Authorization"] = "Bearer %s"\n' "$1" >"$2"; }
post_lua "$check_body" "$work/check.lua"
post_lua "$raw_body" "$work/raw.lua"
get_lua "$hs_token" "$work/hs.lua"
get_lua "$ed_token" "$work/ed.lua"

nginx_conf "$work" "noop=$NOOP_PORT broker=$UPSTREAM_PORT" \
  "$(nginx_auth_server "$NGINX_PORT" noop /auth broker)"

# run NAME URL SCRIPT CONNS → "rps p50 p99 non2xx" (after a warm-up run of WARMUP)
run() {
  local name=$1 url=$2 script=$3 conns=$4 threads=$THREADS
  [ "$conns" -lt "$threads" ] && threads=$conns
  "${LOAD_CPU[@]}" wrk -t"$threads" -c"$conns" -d"$WARMUP" -s "$script" "$url" >/dev/null
  "${LOAD_CPU[@]}" wrk -t"$threads" -c"$conns" -d"$DURATION" --latency -s "$script" "$url" >"$work/$name.wrk"
  awk '/^Requests\/sec:/ {r=$2} $1 == "50%" {p50=$2} $1 == "99%" {p99=$2} /Non-2xx/ {n=$5}
       END {print r, p50, p99, (n == "" ? 0 : n)}' "$work/$name.wrk"
}
us() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /ms$/) n *= 1000; else if (v ~ /[0-9]s$/) n *= 1000000; printf "%.0f", n }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }

echo "### Hot path — $(date -u +%F), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), binary $FLEX_BIN"
echo
echo "Machine: $(nproc) cores ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)), $(uname -sr). wrk -t$THREADS -c$CONNECTIONS -d$DURATION after a $WARMUP warm-up; 1-connection runs use -t1 -c1."
for layout in $LAYOUTS; do
  if [ "$layout" = pinned ] && [ "$(nproc)" -ge 2 ]; then
    SERVER_CPU=(taskset -c 0); LOAD_CPU=(taskset -c 1); what="servers on core 0, wrk on core 1"
  else
    SERVER_CPU=(); LOAD_CPU=(); what="nothing pinned: servers and wrk share the cores"
  fi
  pids=()
  "${SERVER_CPU[@]}" "$HELLO" "127.0.0.1:$HELLO_PORT" 2>/dev/null & pids+=($!)
  "${SERVER_CPU[@]}" "$HELLO" "127.0.0.1:$UPSTREAM_PORT" 2>/dev/null & pids+=($!)
  "${SERVER_CPU[@]}" "$HELLO" "127.0.0.1:$NOOP_PORT" --empty 2>/dev/null & pids+=($!)
  FLEX_AUTH_LOG=warn "${SERVER_CPU[@]}" "$FLEX_BIN" serve --policy policies/ops-warden \
    --registry registry/ops-warden/production_registry_snapshot.json \
    --listen "127.0.0.1:$CHECK_PORT" 2>/dev/null & pids+=($!)
  FLEX_AUTH_LOG=warn "${SERVER_CPU[@]}" "$FLEX_BIN" serve --policy "$work/one.cedar" \
    --entities "$work/entities.json" --listen "127.0.0.1:$RAW_PORT" 2>/dev/null & pids+=($!)
  FLEX_AUTH_LOG=warn "${SERVER_CPU[@]}" "$FLEX_BIN" serve \
    --policy deploy/examples/broker/policy.cedar --registry deploy/examples/broker/registry.json \
    --routes "$work/routes.yaml" --upstream "http://127.0.0.1:$UPSTREAM_PORT" \
    --listen "127.0.0.1:$FLEX_PORT" --proxy-listen "127.0.0.1:$PROXY_PORT" \
    --issuer https://issuer.example --audience broker --jwks "$work/jwks.json" \
    --hs256-secret-file deploy/examples/broker/demo-hs256.secret --jwt-algorithms EdDSA,HS256 \
    2>/dev/null & pids+=($!)
  "${SERVER_CPU[@]}" "$NGINX" -p "$work" -c "$work/nginx.conf" 2>/dev/null & pids+=($!)
  for port in "$HELLO_PORT" "$UPSTREAM_PORT"; do wait_ready "http://127.0.0.1:$port/"; done
  for port in "$CHECK_PORT" "$RAW_PORT" "$FLEX_PORT"; do wait_ready "http://127.0.0.1:$port/readyz"; done
  # Every workload must answer 200 before it is measured: a fast 403 would flatter the figures.
  for url in "http://127.0.0.1:$CHECK_PORT/v1/check" "http://127.0.0.1:$RAW_PORT/v1/check"; do
    body=$check_body; [ "$url" = "http://127.0.0.1:$RAW_PORT/v1/check" ] && body=$raw_body
    decision=$(curl -fsS -H 'content-type: application/json' -d "$body" "$url" | python3 -c 'import json,sys; print(json.load(sys.stdin)["decision"])')
    [ "$decision" = allow ] || { echo "setup check: $url decided $decision" >&2; exit 1; }
  done
  expect 200 "http://127.0.0.1:$PROXY_PORT$path" -H "Authorization: Bearer $hs_token"
  expect 200 "http://127.0.0.1:$PROXY_PORT$path" -H "Authorization: Bearer $ed_token"
  expect 200 "http://127.0.0.1:$NGINX_PORT$path" -H "Authorization: Bearer $hs_token"

  read -r hello_rps hello_p50 hello_p99 _ < <(run hello "http://127.0.0.1:$HELLO_PORT/v1/check" "$work/check.lua" "$CONNECTIONS")
  read -r check_rps check_p50 check_p99 check_bad < <(run check "http://127.0.0.1:$CHECK_PORT/v1/check" "$work/check.lua" "$CONNECTIONS")
  read -r raw_rps raw_p50 raw_p99 raw_bad < <(run raw "http://127.0.0.1:$RAW_PORT/v1/check" "$work/raw.lua" "$CONNECTIONS")
  read -r direct_rps direct_p50 direct_p99 _ < <(run direct "http://127.0.0.1:$UPSTREAM_PORT$path" "$work/hs.lua" "$CONNECTIONS")
  read -r hs_rps hs_p50 hs_p99 hs_bad < <(run hs "http://127.0.0.1:$PROXY_PORT$path" "$work/hs.lua" "$CONNECTIONS")
  read -r ed_rps ed_p50 ed_p99 ed_bad < <(run ed "http://127.0.0.1:$PROXY_PORT$path" "$work/ed.lua" "$CONNECTIONS")
  read -r ng_rps ng_p50 ng_p99 ng_bad < <(run nginx "http://127.0.0.1:$NGINX_PORT$path" "$work/hs.lua" "$CONNECTIONS")
  read -r d1_rps d1_p50 d1_p99 _ < <(run direct1 "http://127.0.0.1:$UPSTREAM_PORT$path" "$work/hs.lua" 1)
  read -r p1_rps p1_p50 p1_p99 p1_bad < <(run proxy1 "http://127.0.0.1:$PROXY_PORT$path" "$work/hs.lua" 1)
  read -r n1_rps n1_p50 n1_p99 n1_bad < <(run nginx1 "http://127.0.0.1:$NGINX_PORT$path" "$work/hs.lua" 1)

  echo
  echo "#### $layout — $what"
  echo
  echo "| workload | requests/s | p50 | p99 | non-2xx | ratio | target |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
  echo "| hello server, POST | $hello_rps | $hello_p50 | $hello_p99 | - | 1.00 | - |"
  echo "| \`/v1/check\`, ops-warden + production registry | $check_rps | $check_p50 | $check_p99 | $check_bad | $(ratio "$check_rps" "$hello_rps") of hello | ≥ 0.50 |"
  echo "| \`/v1/check\`, one permit, raw entities | $raw_rps | $raw_p50 | $raw_p99 | $raw_bad | $(ratio "$raw_rps" "$hello_rps") of hello | ≥ 0.60 |"
  echo "| direct to the upstream, GET | $direct_rps | $direct_p50 | $direct_p99 | - | 1.00 | - |"
  echo "| proxy, HS256 | $hs_rps | $hs_p50 | $hs_p99 | $hs_bad | $(ratio "$hs_rps" "$direct_rps") of direct | ≥ nginx → no-op |"
  echo "| proxy, EdDSA (JWKS) | $ed_rps | $ed_p50 | $ed_p99 | $ed_bad | $(ratio "$ed_rps" "$direct_rps") of direct, $(ratio "$ed_rps" "$hs_rps") of HS256 | ≥ 0.90 of HS256 |"
  echo "| nginx \`auth_request\` → no-op auth | $ng_rps | $ng_p50 | $ng_p99 | $ng_bad | $(ratio "$ng_rps" "$direct_rps") of direct | - |"
  echo "| 1 connection: direct | $d1_rps | $d1_p50 | $d1_p99 | - | - | - |"
  echo "| 1 connection: proxy, HS256 | $p1_rps | $p1_p50 | $p1_p99 | $p1_bad | +$(( $(us "$p1_p50") - $(us "$d1_p50") )) µs p50 | ≤ +40 µs |"
  echo "| 1 connection: nginx → no-op | $n1_rps | $n1_p50 | $n1_p99 | $n1_bad | +$(( $(us "$n1_p50") - $(us "$d1_p50") )) µs p50 | - |"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
done
