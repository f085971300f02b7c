#!/usr/bin/env bash
# A change against a baseline commit, in one run on one machine (docs/benchmarks.md): builds
# BASE (default: the commit before the fail-closed hardening, 36be3ff) in a git worktree and HEAD,
# then runs each twice, interleaved (base, head, base, head), so drift on the machine hits both:
#   - POST /v1/check, shipped registry, no decision log;
#   - the same with a required file decision log (fsync per group, the file-identity check);
#   - a /v1/check/batch of 100 checks (the duplicate-key pass over a 17 KiB body);
#   - start-up to ready with a generated 100,000-actor registry (the registry's strict parse).
# Each load run is done pinned (server on core 0, wrk on core 1) and the way a sidecar runs
# (nothing pinned: server and wrk share both cores). Traffic stays on 127.0.0.1; every run is
# bounded by DURATION. Installs wrk and curl (Debian packages) when missing. Prints Markdown.
#
#   scripts/load-baseline.sh [BASE]            # DURATION=10s CONNECTIONS=32 by default
#   BASE_BINARY=… HEAD_BINARY=… scripts/load-baseline.sh BASE   # binaries already built
set -euo pipefail
cd "$(dirname "$0")/.."

BASE=${1:-36be3ff}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
PORT=${PORT:-18180}
BIG_ACTORS=${BIG_ACTORS:-100000}

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need curl; then
  echo "installing wrk and curl" >&2
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk curl >/dev/null
fi
if [ "$(nproc)" -ge 2 ] && need taskset; then CAN_PIN=1; else CAN_PIN=0; fi

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  git worktree remove --force "$work/base" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

head_rev=$(git rev-parse --short HEAD)
base_rev=$(git rev-parse --short "$BASE")
echo "building HEAD ($head_rev) and BASE ($base_rev) in release mode" >&2
cargo build --release --locked --example gen_registry >&2
if [ -n "${BASE_BINARY:-}" ] && [ -n "${HEAD_BINARY:-}" ]; then
  cp "$HEAD_BINARY" "$work/flex-auth-head"
  cp "$BASE_BINARY" "$work/flex-auth-base"
else
  cargo build --release --locked --bin flex-auth >&2
  cp target/release/flex-auth "$work/flex-auth-head"
  git worktree add --detach "$work/base" "$BASE" >&2
  # The same target directory: the locked dependencies are shared, only flex-auth rebuilds.
  (cd "$work/base" && CARGO_TARGET_DIR="$OLDPWD/target" cargo build --release --locked --bin flex-auth >&2)
  cp target/release/flex-auth "$work/flex-auth-base"
  cp "$work/flex-auth-head" target/release/flex-auth
fi
target/release/examples/gen_registry "$BIG_ACTORS" >"$work/big.json"

wait_ready() {
  local i
  for i in $(seq 1 600); do
    if curl -fsS -o /dev/null "http://127.0.0.1:$PORT/readyz" 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "timed out waiting for flex-auth on :$PORT" >&2
  return 1
}

ALLOW='{"subject":{"id":"agt-state-hub-bridge"},"action":"sign","resource":{"type":"Actor","id":"agt-state-hub-bridge"},"context":{"ttl_hours":4,"principals":["state-hub"]}}'
BATCH="{\"checks\":[$(printf '%s,' $(for _ in $(seq 1 99); do echo "$ALLOW"; done))$ALLOW]}"
for name in allow batch; do
  body=$ALLOW; [ "$name" = batch ] && body=$BATCH
  cat >"$work/$name.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[$body]]
LUA
done

# run WHICH PINNED PATH LUA [serve args…] → "rps p99"
run() {
  local which=$1 pinned=$2 path=$3 lua=$4; shift 4
  local server_cpu=() load_cpu=()
  if [ "$pinned" = 1 ] && [ "$CAN_PIN" = 1 ]; then server_cpu=(taskset -c 0); load_cpu=(taskset -c 1); fi
  rm -f "$work"/req.jsonl*
  FLEX_AUTH_LOG=warn "${server_cpu[@]}" "$work/flex-auth-$which" serve --policy policies/ops-warden \
    --registry registry/ops-warden/production_registry_snapshot.json --listen "127.0.0.1:$PORT" "$@" 2>/dev/null &
  local pid=$!
  pids+=("$pid")
  wait_ready
  "${load_cpu[@]}" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -s "$work/$lua.lua" "http://127.0.0.1:$PORT$path" >"$work/out.wrk"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  local rps p99 non2xx
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$work/out.wrk")
  p99=$(awk '$1 == "99%" {print $2}' "$work/out.wrk")
  non2xx=$(awk '/Non-2xx/ {print $5}' "$work/out.wrk")
  echo "$rps $p99 ${non2xx:-0}"
}

# ready_ms WHICH → ms from start to ready with the big registry
ready_ms() {
  local which=$1 start
  start=$(date +%s%N)
  FLEX_AUTH_LOG=warn "$work/flex-auth-$which" serve --policy policies/ops-warden --registry "$work/big.json" \
    --listen "127.0.0.1:$PORT" 2>/dev/null &
  local pid=$!
  pids+=("$pid")
  wait_ready
  echo $(( ($(date +%s%N) - start) / 1000000 ))
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

declare -A rps p99 bad
scenarios=("check:/v1/check:allow:" "check-required-log:/v1/check:allow:--decision-log file:$work/req.jsonl --decision-log-mode required" "batch-100:/v1/check/batch:batch:")
for pinned in 1 0; do
  for scenario in "${scenarios[@]}"; do
    IFS=: read -r name path lua args <<<"$scenario"
    # The log path holds a colon-free temp dir; split the args on spaces.
    read -r -a extra <<<"$args"
    for round in 1 2; do
      for which in base head; do
        read -r r p n < <(run "$which" "$pinned" "$path" "$lua" "${extra[@]}")
        key="$name/$pinned/$which"
        rps[$key]="${rps[$key]:-} $r"
        p99[$key]="${p99[$key]:-} $p"
        bad[$key]=$(( ${bad[$key]:-0} + n ))
      done
    done
  done
done
declare -A ready
for round in 1 2; do
  for which in base head; do
    ready[$which]="${ready[$which]:-} $(ready_ms "$which")"
  done
done

mean() { awk '{ s = 0; for (i = 1; i <= NF; i++) s += $i; printf "%.0f", s / NF }' <<<"$1"; }
echo "## Baseline comparison $(date -u +%Y-%m-%d): $base_rev (base) vs $head_rev (head)"
echo
echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr); wrk 1 thread, $CONNECTIONS connections, $DURATION per run, each binary run twice interleaved (means shown; the two rounds in brackets)."
echo
echo "| run | CPU | base req/s | head req/s | head / base | base p99 | head p99 | non-2xx |"
echo "| --- | --- | ---: | ---: | ---: | --- | --- | ---: |"
for pinned in 1 0; do
  cpu="pinned (server core 0, wrk core 1)"; [ "$pinned" = 0 ] && cpu="unpinned (sidecar-like, shared cores)"
  for scenario in "${scenarios[@]}"; do
    name=${scenario%%:*}
    b=$(mean "${rps[$name/$pinned/base]}"); h=$(mean "${rps[$name/$pinned/head]}")
    ratio=$(awk -v a="$h" -v b="$b" 'BEGIN { printf "%.1f %%", 100 * a / b }')
    echo "| $name | $cpu | $b [${rps[$name/$pinned/base]# }] | $h [${rps[$name/$pinned/head]# }] | $ratio | ${p99[$name/$pinned/base]# } | ${p99[$name/$pinned/head]# } | $(( ${bad[$name/$pinned/base]} + ${bad[$name/$pinned/head]} )) |"
  done
done
echo
echo "Start to ready with $BIG_ACTORS actors: base $(mean "${ready[base]}") ms [${ready[base]# }], head $(mean "${ready[head]}") ms [${ready[head]# }]."
