#!/usr/bin/env bash
# Bundles (issue 18): a 100,000-actor registry shipped as a signed bundle from a loopback nginx.
# Measures (1) cold activation at start-up: download, verify, unpack, build, swap — time to ready
# and peak RSS; (2) activation of a new revision (the server's own load_ms, and the download);
# (3) the cost of an unchanged poll (CPU of the flex-auth process per 304); (4) p99 of
# POST /v1/check steady and while a new revision activates every ACTIVATE_EVERY seconds, pinned
# (server core 0, wrk core 1) and unpinned (the sidecar case). Prints Markdown.
#
#   scripts/bundle-bench.sh        # ACTORS=100000 DURATION=12s CONNECTIONS=32 ACTIVATE_EVERY=3
#
# Loopback only; every wait and loop bounded. Installs wrk, curl and nginx (Debian) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

ACTORS=${ACTORS:-100000}
DURATION=${DURATION:-12s}
CONNECTIONS=${CONNECTIONS:-32}
ACTIVATE_EVERY=${ACTIVATE_EVERY:-3}
PORT=${PORT:-18310}
NGINX_PORT=${NGINX_PORT:-18311}

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need curl || ! need taskset || ! { need nginx || [ -x /usr/sbin/nginx ]; }; then
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk curl util-linux nginx >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

cargo build --release --locked --bin flex-auth --example gen_registry >&2
bin=target/release/flex-auth

work=$(mktemp -d)
pid=""
nginx_pid=""
swapper=""
cleanup() {
  [ -n "$swapper" ] && kill "$swapper" 2>/dev/null || true
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  [ -n "$nginx_pid" ] && kill "$nginx_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/www" "$work/cache"
target/release/examples/gen_registry "$ACTORS" >"$work/a.json"
cp "$work/a.json" "$work/b.json"
echo >>"$work/b.json" # another digest, the same actors: every activation is a full build
openssl genpkey -algorithm ed25519 -out "$work/key.pem" 2>/dev/null
openssl pkey -in "$work/key.pem" -pubout -out "$work/key.pub" 2>/dev/null
for r in a b; do
  "$bin" bundle build --policy policies/ops-warden --registry "$work/$r.json" --revision "rev-$r" \
    -o "$work/$r.tar.gz" --signing-key "$work/key.pem" --kid bench >&2
done
cp "$work/a.tar.gz" "$work/www/bundle.tar.gz"

cat >"$work/nginx.conf" <<CONF
daemon off;
master_process off;
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 256; }
http {
  log_format short '\$request \$status';
  access_log $work/access.log short;
  client_body_temp_path $work/body;
  proxy_temp_path $work/proxy;
  fastcgi_temp_path $work/fastcgi;
  uwsgi_temp_path $work/uwsgi;
  scgi_temp_path $work/scgi;
  server { listen 127.0.0.1:$NGINX_PORT; location / { root $work/www; } }
}
CONF
"$NGINX" -p "$work" -c "$work/nginx.conf" &
nginx_pid=$!
for _ in $(seq 1 100); do curl -fsS -o /dev/null "http://127.0.0.1:$NGINX_PORT/bundle.tar.gz" 2>/dev/null && break; sleep 0.1; done

url="http://127.0.0.1:$NGINX_PORT/bundle.tar.gz"
status() { curl -fsS "http://127.0.0.1:$PORT/v1/status" 2>/dev/null; }
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)" 2>/dev/null; }
ready() { curl -fsS -o /dev/null "http://127.0.0.1:$PORT/readyz" 2>/dev/null; }
rss_kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

start_server() { # POLL [prefix command…]
  local poll=$1; shift
  FLEX_AUTH_LOG=info "$@" "$bin" serve --bundle "$url" --bundle-public-key "bench=$work/key.pub" \
    --bundle-poll-interval "$poll" --bundle-cache-dir "$work/cache" --listen "127.0.0.1:$PORT" \
    2>"$work/server.log" &
  pid=$!
}

publish() { # a|b
  cp "$work/$1.tar.gz" "$work/www/.bundle.tmp"
  mv "$work/www/.bundle.tmp" "$work/www/bundle.tar.gz"
}

wait_revision() { # REV, bounded 60 s
  for _ in $(seq 1 600); do
    [ "$(status | field 'd["bundle"]["revision"]')" = "$1" ] && return 0
    sleep 0.1
  done
  echo "revision $1 never became active" >&2; return 1
}

echo "## Bundle activation (issue 18)"
echo
size=$(stat -c %s "$work/a.tar.gz"); raw=$(stat -c %s "$work/a.json")
echo "$ACTORS actors: registry $raw bytes, signed bundle $size bytes (gzip)."
echo
download=$(curl -fsS -o /dev/null -w '%{time_total}' "$url")
echo "| step | figure |"
echo "| --- | ---: |"
echo "| download from loopback nginx (curl) | $(awk -v t="$download" 'BEGIN{printf "%.1f ms", t*1000}') |"

# (1) Cold start: process start → ready, and its peak RSS.
rm -rf "$work/cache"; mkdir -p "$work/cache"
t0=$(date +%s%N)
start_server 1s
for _ in $(seq 1 600); do ready && break; sleep 0.01; done
t1=$(date +%s%N)
echo "| start-up to ready (fetch, verify, unpack, build, swap) | $(( (t1 - t0) / 1000000 )) ms |"
echo "| peak RSS after start-up (VmHWM) | $(( $(rss_kib "$pid" VmHWM) / 1024 )) MiB |"
sleep 3
echo "| RSS idle, 3 s later | $(( $(rss_kib "$pid" VmRSS) / 1024 )) MiB |"

# (2) New revisions: the server's own activation time (open + build + swap), 6 times.
loads=()
for i in 1 2 3 4 5 6; do
  next=b; [ $((i % 2)) -eq 0 ] && next=a
  publish "$next"
  wait_revision "rev-$next"
  loads+=("$(grep '"bundle activated"' "$work/server.log" | tail -1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["fields"]["load_ms"])')")
done
echo "| activation of a new revision (verify, unpack, build, swap; 6 runs) | $(IFS=/; echo "${loads[*]}") ms |"
echo "| peak RSS over the 6 activations (VmHWM) | $(( $(rss_kib "$pid" VmHWM) / 1024 )) MiB |"
sleep 3
echo "| RSS idle after them | $(( $(rss_kib "$pid" VmRSS) / 1024 )) MiB |"
kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""

# (3) Unchanged polls: CPU per 304, polling every 100 ms for 20 s.
start_server 100ms
for _ in $(seq 1 600); do ready && break; sleep 0.05; done
before_checks=$(status | field 'd["bundle"]["checks"]["unchanged"]')
before_cpu=$(cpu_ticks "$pid")
before_304=$(grep -c ' 304$' "$work/access.log" || true)
sleep 20
after_checks=$(status | field 'd["bundle"]["checks"]["unchanged"]')
after_cpu=$(cpu_ticks "$pid")
after_304=$(grep -c ' 304$' "$work/access.log" || true)
hz=$(getconf CLK_TCK)
polls=$((after_checks - before_checks))
echo "| unchanged polls in 20 s at 100 ms / nginx 304s | $polls / $((after_304 - before_304)) |"
echo "| CPU per unchanged poll (flex-auth, utime+stime) | $(awk -v c=$((after_cpu - before_cpu)) -v hz="$hz" -v n="$polls" 'BEGIN{printf "%.0f µs", (n>0 ? c/hz/n*1e6 : 0)}') |"
kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
echo

# (4) p99 steady and while revisions activate.
middle=$((ACTORS / 2))
cat >"$work/check.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[{"subject":{"id":"iam:agt-bench-$middle"},"action":"sign","resource":{"type":"Actor","id":"agt-bench-$middle"},"context":{"ttl_hours":4,"principals":["shared"]}}]]
LUA
run_wrk() {
  "$@" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -s "$work/check.lua" \
    "http://127.0.0.1:$PORT/v1/check" >"$work/wrk.out"
  awk '/^Requests\/sec:/ {r=$2} $1 == "50%" {p50=$2} $1 == "99%" {p99=$2} END {print r, p50, p99}' "$work/wrk.out"
}
to_us() {
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /ms$/) n *= 1000; else if (v ~ /[0-9]s$/) n *= 1000000; printf "%.0f", n }'
}
echo "| CPUs | steady req/s | steady p50 | steady p99 | activating req/s | activating p50 | activating p99 | p99 ratio | activations |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for mode in pinned unpinned; do
  if [ "$mode" = pinned ]; then server=(taskset -c 0); load=(taskset -c 1); else server=(); load=(); fi
  publish a
  start_server 1s "${server[@]}"
  for _ in $(seq 1 600); do ready && break; sleep 0.05; done
  wait_revision rev-a
  DURATION=2s run_wrk "${load[@]}" >/dev/null
  read -r s_rps s_p50 s_p99 < <(run_wrk "${load[@]}")
  before=$(grep -c '"bundle activated"' "$work/server.log" || true)
  (
    i=0
    while [ "$i" -lt 100 ]; do
      i=$((i + 1))
      next=b; [ $((i % 2)) -eq 0 ] && next=a
      publish "$next"
      sleep "$ACTIVATE_EVERY"
    done
  ) &
  swapper=$!
  read -r r_rps r_p50 r_p99 < <(run_wrk "${load[@]}")
  kill "$swapper" 2>/dev/null || true; wait "$swapper" 2>/dev/null || true; swapper=""
  activations=$(( $(grep -c '"bundle activated"' "$work/server.log" || true) - before ))
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
  ratio=$(awk -v a="$(to_us "$r_p99")" -v b="$(to_us "$s_p99")" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
  echo "| $mode | $s_rps | $s_p50 | $s_p99 | $r_rps | $r_p50 | $r_p99 | $ratio | $activations |"
done
echo
echo "wrk -t1 -c$CONNECTIONS -d$DURATION, a new revision every ${ACTIVATE_EVERY}s (polled every 1 s), commit $(git rev-parse --short HEAD), $(date -u +%F), $(nproc) cores"
