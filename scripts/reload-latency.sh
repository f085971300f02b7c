#!/usr/bin/env bash
# Decision latency while a large registry is reloaded again and again (issue 17): for each
# binary, POST /v1/check against a generated ACTORS-actor registry, steady and with the registry
# replaced (rename-over) every RELOAD_EVERY seconds, each both pinned (server on core 0, wrk on
# core 1) and unpinned (the sidecar case: server, wrk and the reloads share the cores). Prints
# Markdown: throughput, p50, p99 and the p99 ratio reload / steady.
#
#   scripts/reload-latency.sh [BINARY…]   # default target/release/flex-auth; ACTORS=100000
#                                         # DURATION=12s CONNECTIONS=32 RELOAD_EVERY=3
#
# Loopback only; every wait and loop bounded. Installs wrk and curl (Debian) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

ACTORS=${ACTORS:-100000}
DURATION=${DURATION:-12s}
CONNECTIONS=${CONNECTIONS:-32}
RELOAD_EVERY=${RELOAD_EVERY:-3}
PORT=${PORT:-18210}

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need curl || ! need taskset; then
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk curl util-linux >/dev/null
fi
if [ "$(nproc)" -lt 2 ]; then
  echo "needs 2 cores for the pinned runs" >&2
  exit 2
fi

binaries=("$@")
if [ ${#binaries[@]} -eq 0 ]; then
  cargo build --release --locked --bin flex-auth >&2
  binaries=(target/release/flex-auth)
fi
cargo build --release --locked --example gen_registry >&2

work=$(mktemp -d)
pid=""
swapper=""
cleanup() {
  [ -n "$swapper" ] && kill "$swapper" 2>/dev/null || true
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

target/release/examples/gen_registry "$ACTORS" >"$work/a.json"
cp "$work/a.json" "$work/b.json"
echo >>"$work/b.json" # another hash, the same actors: every swap is a full reload
middle=$((ACTORS / 2))
cat >"$work/check.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[{"subject":{"id":"iam:agt-bench-$middle"},"action":"sign","resource":{"type":"Actor","id":"agt-bench-$middle"},"context":{"ttl_hours":4,"principals":["shared"]}}]]
LUA

ready() { curl -fsS -o /dev/null "http://127.0.0.1:$PORT/readyz" 2>/dev/null; }
loaded() {
  curl -fsS "http://127.0.0.1:$PORT/v1/status" 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["reloads"]["watch"]["loaded"])' 2>/dev/null || echo 0
}

# run LOAD_CPU… -- prints "rps p50 p99"
run_wrk() {
  "$@" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -s "$work/check.lua" \
    "http://127.0.0.1:$PORT/v1/check" >"$work/wrk.out"
  awk '/^Requests\/sec:/ {r=$2} $1 == "50%" {p50=$2} $1 == "99%" {p99=$2} END {print r, p50, p99}' "$work/wrk.out"
}

to_us() { # wrk latency (e.g. 812.00us, 1.20ms) → microseconds
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /ms$/) n *= 1000; else if (v ~ /[0-9]s$/) n *= 1000000; printf "%.0f", n }'
}

echo "| binary | CPUs | steady req/s | steady p50 | steady p99 | reloading req/s | reloading p50 | reloading p99 | p99 ratio | reloads |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for binary in "${binaries[@]}"; do
  for mode in pinned unpinned; do
    if [ "$mode" = pinned ]; then server=(taskset -c 0); load=(taskset -c 1); else server=(); load=(); fi
    cp "$work/a.json" "$work/registry.json"
    FLEX_AUTH_LOG=warn "${server[@]}" "$binary" serve --policy policies/ops-warden \
      --registry "$work/registry.json" --listen "127.0.0.1:$PORT" 2>/dev/null &
    pid=$!
    for _ in $(seq 1 600); do ready && break; sleep 0.1; done
    ready || { echo "server did not become ready" >&2; exit 1; }
    # Warm-up, then steady.
    DURATION=2s run_wrk "${load[@]}" >/dev/null
    read -r s_rps s_p50 s_p99 < <(run_wrk "${load[@]}")
    before=$(loaded)
    (
      i=0
      while [ "$i" -lt 100 ]; do
        i=$((i + 1))
        next=b; [ $((i % 2)) -eq 0 ] && next=a
        cp "$work/$next.json" "$work/registry.json.tmp"
        mv "$work/registry.json.tmp" "$work/registry.json"
        sleep "$RELOAD_EVERY"
      done
    ) &
    swapper=$!
    read -r r_rps r_p50 r_p99 < <(run_wrk "${load[@]}")
    kill "$swapper" 2>/dev/null || true
    wait "$swapper" 2>/dev/null || true
    swapper=""
    reloads=$(( $(loaded) - before ))
    kill "$pid"; wait "$pid" 2>/dev/null || true
    pid=""
    ratio=$(awk -v a="$(to_us "$r_p99")" -v b="$(to_us "$s_p99")" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
    echo "| \`$binary\` | $mode | $s_rps | $s_p50 | $s_p99 | $r_rps | $r_p50 | $r_p99 | $ratio | $reloads |"
  done
done
echo
echo "$ACTORS actors, a reload every ${RELOAD_EVERY}s, wrk -t1 -c$CONNECTIONS -d$DURATION, commit $(git rev-parse --short HEAD), $(date -u +%F), $(nproc) cores"
