#!/usr/bin/env bash
# Load run for docs/benchmarks.md: POST /v1/check on a release build of flex-auth against the
# ceiling of a minimal hyper server (examples/hello_server.rs), in the same run on the same
# machine, plus resident memory idle and under load with the shipped registry and with a
# generated 100,000-actor registry. Traffic goes to 127.0.0.1 only; every run is bounded by
# DURATION. Installs wrk (Debian package) when it is missing.
#
# On a machine with 2+ cores the servers are pinned to core 0 and wrk to core 1 (taskset), so the
# ceiling and flex-auth get the same CPU and the load generator never competes with them; without
# pinning, runs on 2 cores varied by ±30 %.
#
#   scripts/load.sh                 # defaults: 15s per run, 32 connections, 1 wrk thread
#   DURATION=30s CONNECTIONS=64 scripts/load.sh
#
# Section 6 (proxy overhead) is scripts/load-proxy.sh, which also runs alone. Section 8 (the hot
# path, scripts/load-hot-path.sh) adds the sidecar protocol: wrk -t2 -c64 with nothing pinned (the
# servers and wrk share the cores), beside the same runs pinned, each against the hello ceiling
# measured in the same pass.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-15s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-1}
FLEX_PORT=${FLEX_PORT:-18080}
HELLO_PORT=${HELLO_PORT:-18081}
BIG_ACTORS=${BIG_ACTORS:-100000}

if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null 2>&1; then
  SERVER_CPU=(taskset -c 0)
  LOAD_CPU=(taskset -c 1)
  PINNING="servers pinned to core 0, wrk to core 1"
else
  SERVER_CPU=()
  LOAD_CPU=()
  PINNING="no CPU pinning"
fi

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need curl; then
  echo "installing wrk and curl" >&2
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk curl >/dev/null
fi

cargo build --release --locked --bin flex-auth --example hello_server --example gen_registry >&2
BIN=target/release/flex-auth
EX=target/release/examples

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Wait (bounded) until URL answers 200.
wait_ready() {
  local url=$1 i
  for i in $(seq 1 300); do
    if curl -fsS -o /dev/null "$url" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "timed out waiting for $url" >&2
  return 1
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# Sample the peak RSS of a pid until the file $2 exists.
sample_peak_rss() {
  local pid=$1 stop=$2 peak=0 cur i
  for i in $(seq 1 1200); do
    [ -e "$stop" ] && break
    cur=$(rss_kib "$pid" 2>/dev/null || echo 0)
    [ "$cur" -gt "$peak" ] && peak=$cur
    sleep 0.05
  done
  echo "$peak"
}

post_script() {
  local body=$1 out=$2
  cat >"$out" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[$body]]
LUA
}

# run_wrk NAME URL SCRIPT → prints "rps p50 p99" and keeps the full output
run_wrk() {
  local name=$1 url=$2 script=$3
  "${LOAD_CPU[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$script" "$url" >"$work/$name.wrk"
  local rps p50 p99 non2xx
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$work/$name.wrk")
  p50=$(awk '$1 == "50%" {print $2}' "$work/$name.wrk")
  p99=$(awk '$1 == "99%" {print $2}' "$work/$name.wrk")
  non2xx=$(awk '/Non-2xx/ {print $5}' "$work/$name.wrk")
  echo "$rps $p50 $p99 ${non2xx:-0}"
}

ALLOW_BODY='{"subject":{"id":"agt-state-hub-bridge"},"action":"sign","resource":{"type":"Actor","id":"agt-state-hub-bridge"},"context":{"ttl_hours":4,"principals":["state-hub"]}}'
BIG_BODY="{\"subject\":{\"id\":\"iam:agt-bench-$((BIG_ACTORS / 2))\"},\"action\":\"sign\",\"resource\":{\"type\":\"Actor\",\"id\":\"agt-bench-$((BIG_ACTORS / 2))\"},\"context\":{\"ttl_hours\":4,\"principals\":[\"shared\"]}}"
post_script "$ALLOW_BODY" "$work/allow.lua"
post_script "$BIG_BODY" "$work/big.lua"

# 1. Ceiling: the hello server, same request.
"${SERVER_CPU[@]}" "$EX/hello_server" "127.0.0.1:$HELLO_PORT" 2>/dev/null &
hello=$!; pids+=("$hello")
wait_ready "http://127.0.0.1:$HELLO_PORT/"
read -r hello_rps hello_p50 hello_p99 _ < <(run_wrk hello "http://127.0.0.1:$HELLO_PORT/v1/check" "$work/allow.lua")
kill "$hello"; wait "$hello" 2>/dev/null || true

# 2. flex-auth with the shipped production registry.
FLEX_AUTH_LOG=warn "${SERVER_CPU[@]}" "$BIN" serve --policy policies/ops-warden \
  --registry registry/ops-warden/production_registry_snapshot.json --listen "127.0.0.1:$FLEX_PORT" 2>/dev/null &
flex=$!; pids+=("$flex")
wait_ready "http://127.0.0.1:$FLEX_PORT/readyz"
sleep 1
idle_small=$(rss_kib "$flex")
rm -f "$work/stop"; sample_peak_rss "$flex" "$work/stop" >"$work/peak_small" &
sampler=$!
read -r flex_rps flex_p50 flex_p99 flex_non2xx < <(run_wrk flex "http://127.0.0.1:$FLEX_PORT/v1/check" "$work/allow.lua")
touch "$work/stop"; wait "$sampler"; load_small=$(cat "$work/peak_small")
kill "$flex"; wait "$flex" 2>/dev/null || true

# 3. flex-auth with a generated large registry.
"$EX/gen_registry" "$BIG_ACTORS" >"$work/big.json"
start_ns=$(date +%s%N)
FLEX_AUTH_LOG=warn "${SERVER_CPU[@]}" "$BIN" serve --policy policies/ops-warden --registry "$work/big.json" \
  --listen "127.0.0.1:$FLEX_PORT" 2>/dev/null &
flex=$!; pids+=("$flex")
wait_ready "http://127.0.0.1:$FLEX_PORT/readyz"
ready_ms=$(( ($(date +%s%N) - start_ns) / 1000000 ))
sleep 1
idle_big=$(rss_kib "$flex")
rm -f "$work/stop"; sample_peak_rss "$flex" "$work/stop" >"$work/peak_big" &
sampler=$!
read -r big_rps big_p50 big_p99 big_non2xx < <(run_wrk big "http://127.0.0.1:$FLEX_PORT/v1/check" "$work/big.lua")
touch "$work/stop"; wait "$sampler"; load_big=$(cat "$work/peak_big")

# 4. The same load while the registry is replaced (rename-over, as load-registry does) between two
#    versions every RELOAD_EVERY seconds, so the watcher reloads 100,000 actors again and again.
RELOAD_EVERY=${RELOAD_EVERY:-3}
"$EX/gen_registry" "$((BIG_ACTORS + 1))" >"$work/big2.json"
cp "$work/big.json" "$work/big1.json"
status_field() { curl -fsS "http://127.0.0.1:$FLEX_PORT/v1/status" | python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
reloads_before=$(status_field "d['reloads']['watch']['loaded']")
(
  end=$(( $(date +%s) + ${DURATION%s} ))
  i=0
  while [ "$(date +%s)" -lt "$end" ] && [ "$i" -lt 100 ]; do
    i=$((i + 1))
    src="$work/big$(( i % 2 + 1 )).json"
    cp "$src" "$work/big.json.tmp" && mv "$work/big.json.tmp" "$work/big.json"
    sleep "$RELOAD_EVERY"
  done
) &
swapper=$!
read -r reload_rps reload_p50 reload_p99 reload_non2xx < <(run_wrk reload "http://127.0.0.1:$FLEX_PORT/v1/check" "$work/big.lua")
wait "$swapper" 2>/dev/null || true
sleep "$RELOAD_EVERY"
reloads_after=$(status_field "d['reloads']['watch']['loaded']")
reload_ms=$(status_field "d['registry']['load_ms']")
reload_failed=$(status_field "d['reloads']['watch']['failed']")
kill "$flex"; wait "$flex" 2>/dev/null || true

# 5. The decision log at concurrency 64: off, best-effort file, required file (fsync'd, group
#    commit), required SQLite (one committed transaction per group), shipped registry.
log_run() {
  local name=$1; shift
  FLEX_AUTH_LOG=warn "${SERVER_CPU[@]}" "$BIN" serve --policy policies/ops-warden \
    --registry registry/ops-warden/production_registry_snapshot.json --listen "127.0.0.1:$FLEX_PORT" "$@" 2>/dev/null &
  local pid=$!
  pids+=("$pid")
  wait_ready "http://127.0.0.1:$FLEX_PORT/readyz"
  local saved=$CONNECTIONS
  CONNECTIONS=64
  run_wrk "$name" "http://127.0.0.1:$FLEX_PORT/v1/check" "$work/allow.lua"
  CONNECTIONS=$saved
  kill "$pid"; wait "$pid" 2>/dev/null || true
}
read -r log_off_rps _ log_off_p99 log_off_non2xx < <(log_run log_off)
read -r log_be_rps _ log_be_p99 log_be_non2xx < <(log_run log_be --decision-log "file:$work/be.jsonl" --decision-log-mode best-effort)
read -r log_req_rps _ log_req_p99 log_req_non2xx < <(log_run log_req --decision-log "file:$work/req.jsonl" --decision-log-mode required)
read -r log_sql_rps _ log_sql_p99 log_sql_non2xx < <(log_run log_sql --decision-log "sqlite:$work/req.db" --decision-log-mode required)
log_req_records=$(cat "$work"/req.jsonl* | wc -l)   # rotated files included
log_sql_records=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('SELECT count(*) FROM decisions').fetchone()[0])" "$work/req.db")
log_sql_answered=$(awk '/requests in/ {print $1}' "$work/log_sql.wrk")
log_sql_pct=$(awk -v a="$log_sql_rps" -v b="$log_off_rps" 'BEGIN { printf "%.1f", 100 * a / b }')
log_req_answered=$(awk '/requests in/ {print $1}' "$work/log_req.wrk")
log_be_pct=$(awk -v a="$log_be_rps" -v b="$log_off_rps" 'BEGIN { printf "%.1f", 100 * a / b }')
log_req_pct=$(awk -v a="$log_req_rps" -v b="$log_off_rps" 'BEGIN { printf "%.1f", 100 * a / b }')

ratio=$(awk -v a="$flex_rps" -v b="$hello_rps" 'BEGIN { printf "%.1f", 100 * a / b }')
ratio_big=$(awk -v a="$big_rps" -v b="$hello_rps" 'BEGIN { printf "%.1f", 100 * a / b }')
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

cat <<EOF2
## Load run $(date -u +%Y-%m-%d) — commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)

Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr); wrk $THREADS thread(s), $CONNECTIONS connections, $DURATION per run, same machine as the servers, $PINNING.

| run | requests/s | p50 | p99 | non-2xx | % of ceiling |
| --- | ---: | ---: | ---: | ---: | ---: |
| hello server (ceiling) | $hello_rps | $hello_p50 | $hello_p99 | - | 100 |
| flex-auth /v1/check, shipped registry (3 actors) | $flex_rps | $flex_p50 | $flex_p99 | $flex_non2xx | $ratio |
| flex-auth /v1/check, $BIG_ACTORS actors | $big_rps | $big_p50 | $big_p99 | $big_non2xx | $ratio_big |
| same, registry replaced every ${RELOAD_EVERY}s ($((reloads_after - reloads_before)) reloads, $reload_failed failed) | $reload_rps | $reload_p50 | $reload_p99 | $reload_non2xx | - |

Reload of $BIG_ACTORS actors (read, hash, JSON Schema, compile, swap), as the server measured it: ${reload_ms} ms.

Decision log, 64 connections, shipped registry:

| decision log | requests/s | p99 | non-2xx | % of off |
| --- | ---: | ---: | ---: | ---: |
| off | $log_off_rps | $log_off_p99 | $log_off_non2xx | 100 |
| best-effort, file | $log_be_rps | $log_be_p99 | $log_be_non2xx | $log_be_pct |
| required, file (fsync per group) | $log_req_rps | $log_req_p99 | $log_req_non2xx | $log_req_pct |
| required, SQLite (WAL, synchronous=FULL, a transaction per group) | $log_sql_rps | $log_sql_p99 | $log_sql_non2xx | $log_sql_pct |

The required file run answered $log_req_answered requests (wrk's count) and wrote $log_req_records durable records (rotated files included); the required SQLite run answered $log_sql_answered and committed $log_sql_records rows. A few more records than answers is expected: wrk stops with requests in flight.

| resident memory | MiB |
| --- | ---: |
| idle, shipped registry | $(mib "$idle_small") |
| peak under load, shipped registry | $(mib "$load_small") |
| idle, $BIG_ACTORS actors (ready after ${ready_ms} ms) | $(mib "$idle_big") |
| peak under load, $BIG_ACTORS actors | $(mib "$load_big") |
EOF2

# 5b. Memory through repeated reloads of $BIG_ACTORS actors, and whether the peak fits the chart's
#     default 256 MiB limit.
echo
ACTORS="$BIG_ACTORS" scripts/reload-memory.sh "$BIN"

# 5c. Decision latency through reloads of $BIG_ACTORS actors, pinned and unpinned (the sidecar case).
echo
ACTORS="$BIG_ACTORS" DURATION="$DURATION" CONNECTIONS="$CONNECTIONS" scripts/reload-latency.sh "$BIN"

# 5d. Bundles: a $BIG_ACTORS-actor signed bundle from a loopback nginx — activation, peak memory,
#     the cost of an unchanged poll, p99 while new revisions activate.
echo
ACTORS="$BIG_ACTORS" DURATION="$DURATION" CONNECTIONS="$CONNECTIONS" scripts/bundle-bench.sh

# 6. Proxy overhead: direct vs flex-auth proxy vs nginx auth_request → flex-auth.
echo
DURATION="$DURATION" CONNECTIONS="$CONNECTIONS" scripts/load-proxy.sh

# 7. TLS vs plain (HTTP/1.1 and h2) and an overload run past --max-in-flight.
echo
DURATION="$DURATION" scripts/load-tls.sh

# 8. The hot path (issue 19): /v1/check on two packages against the hello ceiling, the proxy with
#    HS256 and EdDSA against direct and nginx auth_request → a no-op auth server, unpinned and
#    pinned. Its own protocol: wrk -t2 -c64 -d10s after a 2 s warm-up.
echo
scripts/load-hot-path.sh
