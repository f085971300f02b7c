#!/usr/bin/env bash
# Policy-change safety (issue 20), for docs/benchmarks.md:
#   1. `flex-auth replay` records per second over a 1,000,000-record JSON-lines log and the same
#      records in a SQLite log, against a candidate that caps TTLs at 2 hours (so the replay
#      classifies changes as it would in CI). The records are real: each distinct request of the
#      workload is sent once to a real server, which writes its record; those records are then
#      repeated (fresh decision ids and times) up to RECORDS. Wall time and peak RSS from
#      /usr/bin/time; records/s from the replay's own report.
#   2. POST /v1/check throughput without and with `--shadow-policy` (the same candidate), same
#      run, same binary: `wrk -t2 -c64 -d10s` after a 2 s warm-up, each server alone on the
#      machine, in two layouts: `unpinned` (server and wrk share both cores, the sidecar case)
#      and `pinned` (server on core 0, wrk on core 1). Prints Markdown.
#
#   scripts/shadow-replay-bench.sh           # RECORDS=1000000 DURATION=10s WARMUP=2s
#   PARTS=replay scripts/shadow-replay-bench.sh   # or PARTS=shadow
#
# Loopback only; every wait bounded. Installs wrk, curl, python3, time (Debian) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

RECORDS=${RECORDS:-1000000}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
LAYOUTS=${LAYOUTS:-unpinned pinned}
PARTS=${PARTS:-replay shadow}
BASE_PORT=${BASE_PORT:-18400}

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need curl || ! need python3 || ! need taskset || [ ! -x /usr/bin/time ]; then
  echo "installing wrk, curl, python3 and time" >&2
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk curl python3 time util-linux >/dev/null
fi
if [ -z "${FLEX_BIN:-}" ]; then
  cargo build --release --locked --bin flex-auth >&2
  FLEX_BIN=target/release/flex-auth
fi
POLICY=policies/ops-warden
REGISTRY=registry/ops-warden/production_registry_snapshot.json
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
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# The candidate: the shipped package with TTLs capped at 2 hours.
cp -r "$POLICY" "$work/candidate"
python3 - "$work/candidate/policy_package.md" <<'PY'
import sys
path = sys.argv[1]
text = open(path).read()
old = "(context.ttl_hours < 1 || context.ttl_hours > resource.max_ttl_hours)"
assert text.count(old) == 1, "the ops-warden TTL policy changed; update this script"
open(path, "w").write(text.replace(old, old[:-1] + " || context.ttl_hours > 2)"))
PY
"$FLEX_BIN" validate --policy "$work/candidate" --registry "$REGISTRY" >/dev/null

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
echo "# shadow-replay-bench — $(date -u +%Y-%m-%dT%H:%MZ), commit $commit, $(nproc) cores, $(uname -r)"
echo

if [[ " $PARTS " == *" replay "* ]]; then
  # --- the workload's distinct requests, each recorded once by a real server -----------------
  port=$BASE_PORT
  "$FLEX_BIN" serve --policy "$POLICY" --registry "$REGISTRY" --listen "127.0.0.1:$port" \
    --decision-log "file:$work/seed.jsonl" --decision-log-mode required >"$work/seed.log" 2>&1 &
  seed=$!; pids+=("$seed")
  wait_ready "http://127.0.0.1:$port/readyz"
  python3 - "$port" <<'PY'
import json, sys, urllib.request
port = sys.argv[1]
actors = {
    "agt-state-hub-bridge": (["state-hub"], ["state-hub", "state-hub-readonly"], ["admin"]),
    "adm-example": (["admin"], ["ops"], ["admin", "ops"], ["backup"]),
    "atm-backup-daily": (["backup"], ["state-hub"]),
}
sent = 0
for actor, principal_sets in actors.items():
    for subject in (actor, "iam:" + actor, "someone-else"):
        for ttl in range(0, 15):
            for principals in principal_sets:
                body = {"subject": {"id": subject}, "action": "sign",
                        "resource": {"type": "Actor", "id": actor},
                        "context": {"ttl_hours": ttl, "principals": principals}}
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/v1/check", data=json.dumps(body).encode(),
                    headers={"content-type": "application/json"})
                with urllib.request.urlopen(request, timeout=5) as reply:
                    assert reply.status == 200
                sent += 1
print(f"seeded {sent} distinct requests", file=sys.stderr)
PY
  stop "$seed"
  # --- repeated to RECORDS, as JSON lines and as the SQLite layout the server writes ----------
  python3 - "$work/seed.jsonl" "$work/decisions.jsonl" "$work/decisions.db" "$RECORDS" <<'PY'
import json, sqlite3, sys
seed_path, jsonl_path, db_path, total = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
seed = [json.loads(line) for line in open(seed_path)]
db = sqlite3.connect(db_path)
db.executescript("""
CREATE TABLE decisions (
    seq INTEGER PRIMARY KEY, decision_id TEXT NOT NULL, time TEXT NOT NULL, origin TEXT NOT NULL,
    decision TEXT NOT NULL, subject_type TEXT, subject_id TEXT, action TEXT,
    policy_version TEXT NOT NULL, registry_version TEXT NOT NULL, record TEXT NOT NULL);
CREATE INDEX decisions_by_id ON decisions (decision_id);
PRAGMA user_version = 1;
""")
rows = []
with open(jsonl_path, "w") as out:
    for i in range(total):
        record = dict(seed[i % len(seed)])
        record["decision_id"] = f"decision:{i + 1:016x}"
        seconds = i // 1000
        record["time"] = f"2026-12-01T{seconds // 3600 % 24:02}:{seconds // 60 % 60:02}:{seconds % 60:02}.{i % 1000:03}Z"
        line = json.dumps(record, separators=(",", ":"))
        out.write(line + "\n")
        subject = record.get("subject") or {}
        rows.append((record["decision_id"], record["time"], record["origin"], record["decision"],
                     subject.get("type"), subject.get("id"), record.get("action"),
                     record["policy_version"], record["registry_version"], line))
        if len(rows) == 50_000:
            db.executemany("INSERT INTO decisions (decision_id, time, origin, decision, subject_type, subject_id, action, policy_version, registry_version, record) VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
            rows.clear()
if rows:
    db.executemany("INSERT INTO decisions (decision_id, time, origin, decision, subject_type, subject_id, action, policy_version, registry_version, record) VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
db.commit()
db.close()
print(f"{total} records from {len(seed)} distinct requests", file=sys.stderr)
PY
  echo "## Replay — $RECORDS records, ops-warden candidate with TTLs capped at 2 h"
  echo
  echo "| log | size | wall s | records/s (report) | peak RSS MiB | changed | allow→deny | deny→allow | reasons changed |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  for kind in file sqlite; do
    if [ "$kind" = file ]; then log="file:$work/decisions.jsonl"; f="$work/decisions.jsonl"; else log="sqlite:$work/decisions.db"; f="$work/decisions.db"; fi
    size=$(du -m "$f" | cut -f1)
    # Warm the page cache once, then measure.
    cat "$f" >/dev/null
    set +e
    /usr/bin/time -f '%e %M' -o "$work/time.txt" "$FLEX_BIN" replay --log "$log" \
      --policy "$work/candidate" --registry "$REGISTRY" --format json >"$work/report.json"
    rc=$?
    set -e
    [ "$rc" -le 1 ] || { echo "replay failed ($rc)" >&2; exit 1; }
    read -r wall rss_kb < <(tail -n 1 "$work/time.txt")
    python3 - "$work/report.json" "$kind" "$size" "$wall" "$rss_kb" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
kind, size, wall, rss_kb = sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
r = report["report"]
per_second = r["read"] / report["seconds"]
print(f"| {kind} | {size} MiB | {wall:.2f} | {per_second:,.0f} | {rss_kb / 1024:.1f} | {report['changed']:,} "
      f"| {r['allow_to_deny']['count']:,} | {r['deny_to_allow']['count']:,} | {r['reasons_changed']['count']:,} |")
assert r["read"] == r["replayed"], f"{r['read']} read, {r['replayed']} replayed"
PY
  done
  echo
fi

if [[ " $PARTS " == *" shadow "* ]]; then
  body='{"subject":{"id":"agt-state-hub-bridge"},"action":"sign","resource":{"type":"Actor","id":"agt-state-hub-bridge"},"context":{"ttl_hours":4,"principals":["state-hub"]}}'
  cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.body = '$body'
LUA
  echo "## POST /v1/check without and with --shadow-policy (the request: live allow, shadow deny)"
  echo
  echo "| layout | without shadow req/s | with shadow req/s | ratio | p50 without / with ms | p99 without / with ms | added per request µs (CPU) |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  for layout in $LAYOUTS; do
    if [ "$layout" = pinned ]; then server_cpu="taskset -c 0"; client_cpu="taskset -c 1"; cores=1; else server_cpu=""; client_cpu=""; cores=$(nproc); fi
    declare -A rps p50 p99
    for variant in without with; do
      port=$((BASE_PORT + 1))
      extra=()
      [ "$variant" = with ] && extra=(--shadow-policy "$work/candidate")
      $server_cpu "$FLEX_BIN" serve --policy "$POLICY" --registry "$REGISTRY" \
        --listen "127.0.0.1:$port" "${extra[@]}" >"$work/$variant.log" 2>&1 &
      server=$!; pids+=("$server")
      wait_ready "http://127.0.0.1:$port/readyz"
      got=$(curl -s "http://127.0.0.1:$port/v1/check" -H 'content-type: application/json' -d "$body")
      [[ "$got" == *'"decision":"allow"'* ]] || { echo "setup: $got" >&2; exit 1; }
      $client_cpu wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" -s "$work/post.lua" "http://127.0.0.1:$port/v1/check" >/dev/null
      $client_cpu wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$work/post.lua" \
        "http://127.0.0.1:$port/v1/check" >"$work/wrk.txt"
      if [ "$variant" = with ]; then
        moved=$(curl -s "http://127.0.0.1:$port/metrics" | awk '/^flex_auth_shadow_disagreements_total\{kind="allow_to_deny"\}/ {print $2}')
        [ "${moved:-0}" -gt 0 ] || { echo "the shadow did not evaluate anything" >&2; exit 1; }
      fi
      stop "$server"
      rps[$variant]=$(awk '/Requests\/sec/ {print $2}' "$work/wrk.txt")
      p50[$variant]=$(awk '$1 == "50%" {print $2}' "$work/wrk.txt")
      p99[$variant]=$(awk '$1 == "99%" {print $2}' "$work/wrk.txt")
    done
    python3 - "$layout" "$cores" "${rps[without]}" "${rps[with]}" "${p50[without]}" "${p50[with]}" "${p99[without]}" "${p99[with]}" <<'PY'
import sys
def ms(text):
    for unit, factor in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text)
layout, cores = sys.argv[1], int(sys.argv[2])
without, with_ = float(sys.argv[3]), float(sys.argv[4])
p50a, p50b, p99a, p99b = (ms(x) for x in sys.argv[5:9])
# Saturated: the cores the server may use, divided by throughput, is its CPU per request
# (unpinned, wrk's share of the same cores is in it too).
added = (cores / with_ - cores / without) * 1e6
print(f"| {layout} | {without:,.0f} | {with_:,.0f} | {with_ / without:.2f} | {p50a:.2f} / {p50b:.2f} | {p99a:.2f} / {p99b:.2f} | {added:.1f} |")
PY
  done
  echo
fi
