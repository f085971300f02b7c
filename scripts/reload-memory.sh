#!/usr/bin/env bash
# Resident memory of flex-auth with a large registry through repeated reloads (issue 17): idle
# RSS after start, the peak during reloads (VmHWM), RSS right after the last of SWAPS reloads and
# again SETTLE seconds later. Each reload is a real swap: the registry file alternates between two
# generated snapshots that differ in one byte, and the script waits until /v1/status shows the new
# version before the next. Optionally compares binaries built with other allocators:
#
#   scripts/reload-memory.sh [BINARY…]     # default: target/release/flex-auth; ACTORS=100000 SWAPS=10
#
# The last column says whether the peak stays inside LIMIT_MIB (default 256, the chart's default
# memory limit): a pod over it is OOM-killed. Loopback only; every wait bounded. Installs curl
# (Debian) when missing. Prints Markdown.
set -euo pipefail
cd "$(dirname "$0")/.."

ACTORS=${ACTORS:-100000}
SWAPS=${SWAPS:-10}
SETTLE=${SETTLE:-15}
PORT=${PORT:-18200}
LIMIT_MIB=${LIMIT_MIB:-256}

need() { command -v "$1" >/dev/null 2>&1; }
if ! need curl; then
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq curl >/dev/null
fi

binaries=("$@")
if [ ${#binaries[@]} -eq 0 ]; then
  cargo build --release --locked --bin flex-auth >&2
  binaries=(target/release/flex-auth)
fi
cargo build --release --locked --example gen_registry >&2

work=$(mktemp -d)
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

target/release/examples/gen_registry "$ACTORS" >"$work/a.json"
# The same snapshot with one more trailing newline: another hash, the same actors.
cp "$work/a.json" "$work/b.json"
echo >>"$work/b.json"

kib() { awk -v f="$2" '$1 == f":" {print $2}' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; }
registry_hash() {
  curl -fsS "http://127.0.0.1:$PORT/v1/status" 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["registry"]["hash"])' 2>/dev/null || true
}
wait_for() { # wait_for PREDICATE-COMMAND… (bounded: 120 s)
  local i
  for i in $(seq 1 1200); do
    if "$@"; then return 0; fi
    sleep 0.1
  done
  echo "timed out: $*" >&2
  return 1
}
ready() { curl -fsS -o /dev/null "http://127.0.0.1:$PORT/readyz" 2>/dev/null; }

phases() { # the server's own account of its last load, when it gives one
  curl -fsS "http://127.0.0.1:$PORT/v1/status" 2>/dev/null | python3 -c '
import json, sys
r = json.load(sys.stdin)["registry"]
p = r.get("load_phases_ms")
print("-" if not p else "%.0f / %.0f / %.0f / %.2f" % (p["read"], p["parse_validate"], p["compile"], p["swap"]))
' 2>/dev/null || echo "-"
}

echo "| binary | load ms | server: read / parse+validate / compile / swap ms | idle RSS MiB | peak MiB | after $SWAPS swaps MiB | after ${SETTLE}s MiB | slowest swap ms | peak ≤ $LIMIT_MIB MiB |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
for binary in "${binaries[@]}"; do
  cp "$work/a.json" "$work/registry.json"
  start=$(date +%s%N)
  FLEX_AUTH_LOG=warn "$binary" serve --policy policies/ops-warden --registry "$work/registry.json" \
    --listen "127.0.0.1:$PORT" --poll-interval 0s 2>/dev/null &
  pid=$!
  wait_for ready
  load_ms=$(( ($(date +%s%N) - start) / 1000000 ))
  sleep 2
  idle=$(kib "$pid" VmRSS)
  slowest=0
  for i in $(seq 1 "$SWAPS"); do
    next=b; [ $((i % 2)) -eq 0 ] && next=a
    before=$(registry_hash)
    began=$(date +%s%N)
    cp "$work/$next.json" "$work/registry.json.tmp"
    mv "$work/registry.json.tmp" "$work/registry.json"
    changed() { [ "$(registry_hash)" != "$before" ]; }
    wait_for changed
    took=$(( ($(date +%s%N) - began) / 1000000 ))
    [ "$took" -gt "$slowest" ] && slowest=$took
  done
  after=$(kib "$pid" VmRSS)
  sleep "$SETTLE"
  settled=$(kib "$pid" VmRSS)
  peak=$(kib "$pid" VmHWM)
  server=$(phases)
  kill "$pid"; wait "$pid" 2>/dev/null || true
  pid=""
  fits=no; [ "$(mib "$peak")" -le "$LIMIT_MIB" ] && fits=yes
  echo "| \`$binary\` | $load_ms | $server | $(mib "$idle") | $(mib "$peak") | $(mib "$after") | $(mib "$settled") | $slowest | $fits |"
done
echo
echo "$ACTORS actors ($(du -m "$work/a.json" | cut -f1) MB of JSON), $SWAPS swaps, commit $(git rev-parse --short HEAD), $(date -u +%F), $(nproc) cores"
