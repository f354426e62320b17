#!/usr/bin/env bash
# Keeps docs/openapi.json honest: runs schemathesis (PyPI, pinned, installed into
# ./.venv on first use; idempotent) against a real natterd started here on free
# loopback ports with a temporary data dir. Every documented operation is
# exercised with generated input (positive and negative); the run fails on any
# 5xx and on any status, content type, header or body that the description
# does not allow.
#
#   scripts/schemathesis.sh           short mode (scripts/test.sh): few examples per operation
#   scripts/schemathesis.sh --full    many examples per operation, every phase (minutes)
#
# Uses target/debug/natterd (built by scripts/test.sh; built here when missing).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
version=4.32.5
venv="$root/.venv"
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$version"; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q "schemathesis==$version" >&2
fi
examples=${ST_EXAMPLES:-8}
if [[ "${1:-}" == "--full" ]]; then examples=200; fi

natterd="$root/target/debug/natterd"
[[ -x "$natterd" ]] || cargo build --locked -j2 -p natter-server --bin natterd
work=$(mktemp -d)
pid=
cleanup() {
  if [[ -n "$pid" ]]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# A push gateway address nobody listens on: pushers can be registered (their
# notifications fail to connect, off the HTTP path, which is what is tested).
NATTER_LOG=error "$natterd" --data-dir "$work/data" --cores 2 --http-port 0 --tcp-port 0 \
  --tls-port 0 --ws-port 0 --quic-port 0 \
  --argon2-memory-kib 8 --argon2-iterations 1 --auth-rate-limit 1000000 \
  --user-write-rate-limit 1000000 \
  --push-gateway "http://127.0.0.1:9/_matrix/push/v1/notify" >"$work/out" 2>"$work/err" &
pid=$!
for _ in $(seq 600); do
  grep -q '^NATTERD_READY ' "$work/out" 2>/dev/null && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/err" >&2; exit 1; }
  sleep 0.1
done
http=$(sed -n 's/^NATTERD_READY //p' "$work/out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["http"])')
base="http://$http"

# One account with a token for the authenticated operations (python3's
# standard library: no curl needed).
token=$(python3 - "$base" <<'PY'
import json, sys, urllib.request
base = sys.argv[1]
def post(path, body):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)
account = {"username": "schemathesis", "password": "correct horse battery"}
post("/v1/signup", account)
print(post("/v1/login", dict(account, device_name="st"))["token"])
PY
)

checks=not_a_server_error,status_code_conformance,content_type_conformance
checks+=,response_headers_conformance,response_schema_conformance,negative_data_rejection
checks+=,unsupported_method,allow_header_conformance,missing_required_header,ignored_auth
run() {
  "$venv/bin/schemathesis" run "$base/v1/openapi.json" --checks "$checks" \
    --max-examples "$examples" --seed 7 --workers 1 --no-color --request-timeout 20 \
    --generation-database none --suppress-health-check all \
    -H "Authorization: Bearer $token" "$@"
}
# Logout revokes the token every other operation uses: it runs last, alone.
run --exclude-operation-id logout
run --include-operation-id logout
echo "schemathesis: docs/openapi.json holds against natterd"
