#!/usr/bin/env bash
# Instructions per request, BASE against HEAD, counted by callgrind (valgrind): a measure that
# does not depend on what else the machine runs, for changes whose throughput difference is
# smaller than the run-to-run spread of a load test (docs/benchmarks.md).
#
# Each binary serves the shipped ops-warden package under callgrind, once with FEW and once with
# MANY requests sent over one keep-alive connection; the difference divided by MANY - FEW is the
# cost of one request, start-up and idle work cancelled out. Scenarios: POST /v1/check (allow),
# POST /v1/check/batch of 10. Installs valgrind and python3 (Debian) when missing. Loopback only;
# every wait is bounded. Prints Markdown.
#
#   scripts/instructions.sh [BASE]     # FEW=200 MANY=2200 by default
#   KEEP=DIR scripts/instructions.sh   # keep the two binaries in DIR and reuse them next time
set -euo pipefail
cd "$(dirname "$0")/.."

BASE=${1:-0bb9cd9}
FEW=${FEW:-200}
MANY=${MANY:-2200}
PORT=${PORT:-18190}

need() { command -v "$1" >/dev/null 2>&1; }
if ! need valgrind || ! need python3; then
  echo "installing valgrind and python3" >&2
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq valgrind python3 >/dev/null
fi

work=$(mktemp -d)
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  wait 2>/dev/null || true
  git worktree remove --force "$work/base" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

head_rev=$(git rev-parse --short HEAD)
base_rev=$(git rev-parse --short "$BASE")
if [ -n "${KEEP:-}" ] && [ -x "$KEEP/flex-auth-head" ] && [ -x "$KEEP/flex-auth-base" ]; then
  echo "using the binaries kept in $KEEP" >&2
  cp "$KEEP/flex-auth-head" "$KEEP/flex-auth-base" "$work/"
else
  echo "building HEAD ($head_rev) and BASE ($base_rev) in release mode" >&2
  cargo build --release --locked --bin flex-auth >&2
  cp target/release/flex-auth "$work/flex-auth-head"
  git worktree add --detach "$work/base" "$BASE" >&2
  (cd "$work/base" && CARGO_TARGET_DIR="$OLDPWD/target" cargo build --release --locked --bin flex-auth >&2)
  cp target/release/flex-auth "$work/flex-auth-base"
  cp "$work/flex-auth-head" target/release/flex-auth
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$work"/flex-auth-{head,base} "$KEEP/"; fi
fi

# The client: COUNT requests of one body over one connection, each answer checked for 200.
cat >"$work/client.py" <<'PY'
import http.client, json, sys, time
port, path, count, body = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4].encode()
deadline = time.monotonic() + 120
while True:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/readyz")
        ready = conn.getresponse()
        ready.read()
        if ready.status == 200:
            break
    except OSError:
        pass
    if time.monotonic() > deadline:
        sys.exit("flex-auth did not become ready")
    time.sleep(0.2)
for _ in range(count):
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        sys.exit(f"{path} answered {response.status}")
PY

ALLOW='{"subject":{"id":"agt-state-hub-bridge"},"action":"sign","resource":{"type":"Actor","id":"agt-state-hub-bridge"},"context":{"ttl_hours":4,"principals":["state-hub"]}}'
BATCH="{\"checks\":[$(printf '%s,' $(for _ in $(seq 1 9); do echo "$ALLOW"; done))$ALLOW]}"

# count WHICH PATH BODY N → total instructions (Ir) of a server that answered N requests
count() {
  local which=$1 path=$2 body=$3 n=$4
  local out="$work/callgrind.$which.$n"
  FLEX_AUTH_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" -q \
    "$work/flex-auth-$which" serve --policy policies/ops-warden \
    --registry registry/ops-warden/production_registry_snapshot.json --listen "127.0.0.1:$PORT" \
    --no-watch --poll-interval 0s 2>/dev/null &
  pid=$!
  if ! timeout 600 python3 "$work/client.py" "$PORT" "$path" "$n" "$body" >&2; then
    echo "the client failed against $which" >&2
    kill "$pid" 2>/dev/null || true
    echo 0
    return
  fi
  kill -TERM "$pid"
  local i
  for i in $(seq 1 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  wait "$pid" 2>/dev/null || true
  pid=""
  awk '/^(summary|totals):/ {print $2; exit}' "$out"
}

echo "| request | base Ir/request | head Ir/request | head / base |"
echo "| --- | ---: | ---: | ---: |"
for scenario in "check:/v1/check" "batch-10:/v1/check/batch"; do
  IFS=: read -r name path <<<"$scenario"
  body=$ALLOW; [ "$name" = batch-10 ] && body=$BATCH
  declare -A per=()
  for which in base head; do
    few=$(count "$which" "$path" "$body" "$FEW")
    many=$(count "$which" "$path" "$body" "$MANY")
    if [ "$few" = 0 ] || [ "$many" = 0 ]; then exit 1; fi
    per[$which]=$(( (many - few) / (MANY - FEW) ))
  done
  ratio=$(awk -v h="${per[head]}" -v b="${per[base]}" 'BEGIN {printf "%.1f %%", 100 * h / b}')
  echo "| \`$name\` | ${per[base]} | ${per[head]} | $ratio |"
done
echo
echo "base $base_rev, head $head_rev, $(date -u +%F), $(nproc) cores; FEW=$FEW MANY=$MANY requests"
