#!/usr/bin/env bash
# Runs schemathesis against a fresh `rollcall serve`: every operation that
# the server's own /openapi.json lists, every check, a fixed seed. Any 5xx,
# any answer the document does not describe (status, content type, body,
# headers), any schema-valid request refused or schema-invalid one accepted
# fails the run.
#
# Usage: ROLLCALL_BIN=target/debug/rollcall ci/schemathesis/run.sh
# Optional: SCHEMATHESIS_MAX_EXAMPLES (default 10), SCHEMATHESIS_SEED.
#
# About 1,100 requests. On a busy two-core machine the step took 2 min:
# the virtualenv ~15 s, the coverage phase (every bound and shape of the
# document, whatever the example count) ~40 s, fuzzing ~15 s and the
# stateful phase ~7 s at 10 examples per operation.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${ROLLCALL_BIN:?ROLLCALL_BIN must name the rollcall binary}
examples=${SCHEMATHESIS_MAX_EXAMPLES:-10}
seed=${SCHEMATHESIS_SEED:-20261203}

# Pinned, hash-checked, in a virtualenv of its own.
rm -rf "$here/.venv"
python3 -m venv "$here/.venv"
"$here/.venv/bin/pip" install --quiet --disable-pip-version-check --require-hashes --no-deps \
  -r "$here/requirements.txt"

data=$(mktemp -d)
# Bounds that differ from the defaults: the document must publish the
# running server's own (a registration's intervals).
"$bin" serve --listen 127.0.0.1:0 --data-dir "$data" \
  --min-heartbeat-interval 250ms --max-stale-after 2h \
  >"$data/stdout" 2>"$data/stderr" &
server=$!
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true; rm -rf "$data"' EXIT
# The server prints its listening line once it accepts requests.
for _ in $(seq 1 600); do
  grep -q '^rollcall listening on ' "$data/stdout" && break
  kill -0 $server 2>/dev/null || { cat "$data/stderr"; exit 1; }
  sleep 0.1
done
url=$(sed -n 's/^rollcall listening on //p' "$data/stdout")
test -n "$url"

# One token of each kind, and a worker whose own token its calls use.
admin=$(cat "$data/admin.token")
token() {
  curl -fsS -X POST "$url/v1/tokens" -H "Authorization: Bearer $admin" \
    -H 'content-type: application/json' -d "{\"kind\": \"$1\", \"name\": \"schemathesis $1\"}" |
    jq -er .token
}
export ROLLCALL_ST_ADMIN_TOKEN=$admin
export ROLLCALL_ST_HOOKS="$here/hooks.py"
ROLLCALL_ST_READ_TOKEN=$(token read)
ROLLCALL_ST_ENROLL_TOKEN=$(token enroll)
export ROLLCALL_ST_READ_TOKEN ROLLCALL_ST_ENROLL_TOKEN
registered=$(curl -fsS -X POST "$url/v1/workers" -H "Authorization: Bearer $ROLLCALL_ST_ENROLL_TOKEN" \
  -H 'content-type: application/json' -d '{"name": "schemathesis", "machine": {"id": "schemathesis"}}')
ROLLCALL_ST_WORKER_ID=$(jq -er .worker.id <<<"$registered")
ROLLCALL_ST_WORKER_TOKEN=$(jq -er .token <<<"$registered")
export ROLLCALL_ST_WORKER_ID ROLLCALL_ST_WORKER_TOKEN

# One worker: with two, schemathesis's threads call Python's ast.parse at
# once (hypothesis describing its filters), which CPython 3.11 answers with
# a SystemError ("AST constructor recursion depth mismatch") now and then.
status=0
(
  cd "$data"
  "$here/.venv/bin/schemathesis" --no-color --config-file "$here/schemathesis.toml" \
    run "$url/openapi.json" --checks all --seed "$seed" --max-examples "$examples" \
    --workers 1
) || status=$?
if [ "$status" -ne 0 ]; then
  echo "schemathesis failed ($status); the server's log:"
  tail -n 50 "$data/stderr"
fi
exit "$status"
