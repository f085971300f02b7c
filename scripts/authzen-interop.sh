#!/usr/bin/env bash
# Run the public AuthZEN interop harness (openid/authzen, interop/authzen-todo-backend) against a
# fresh flex-auth serving policies/authzen-interop-todo with --authzen-decision-only.
#
#   scripts/authzen-interop.sh /path/to/openid-authzen-checkout [spec-version …]
#
# The harness comes from GitHub, which CI cannot reach, so this is a manual check; its node
# dependencies come from the npm registry. Default spec versions: the 1.0 texts the harness has.
# Traffic goes to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
checkout=${1:?usage: scripts/authzen-interop.sh OPENID_AUTHZEN_CHECKOUT [SPEC_VERSION …]}
shift
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(authorization-api-1_0-02 authorization-api-1_0-01)
harness="$checkout/interop/authzen-todo-backend"
[ -f "$harness/test/runner.ts" ] || { echo "no interop harness at $harness" >&2; exit 2; }
PORT=${PORT:-18600}

cargo build --locked --release --bin flex-auth >&2
if [ ! -f "$harness/build/test/runner.js" ]; then
  (cd "$harness" && npm install --no-audit --no-fund --legacy-peer-deps >&2 && { npx tsc >&2 || true; })
  # tsc reports configuration warnings with newer TypeScript but still emits the runner.
  [ -f "$harness/build/test/runner.js" ] || { echo "the harness did not build" >&2; exit 2; }
fi

target/release/flex-auth serve --policy policies/authzen-interop-todo \
  --entities policies/authzen-interop-todo/entities.json \
  --listen "127.0.0.1:$PORT" --authzen-decision-only 2>/dev/null &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -fsS -o /dev/null "http://127.0.0.1:$PORT/readyz" 2>/dev/null && break
  sleep 0.1
done

failed=0
for version in "${versions[@]}"; do
  out=$(cd "$harness" && timeout 120 node build/test/runner.js "http://127.0.0.1:$PORT" "$version" console 2>&1 \
        | sed 's/\x1b\[[0-9;]*m//g')
  pass=$(grep -c '^PASS' <<<"$out" || true)
  fail=$(grep -c '^FAIL\|^ERROR' <<<"$out" || true)
  echo "$version: $pass passed, $fail failed"
  grep '^FAIL\|^ERROR' <<<"$out" || true
  [ "$fail" -eq 0 ] || failed=1
done
exit $failed
