#!/usr/bin/env bash
# Runs both client examples against a fresh auditlog server in a temporary
# directory, installing their dependencies first if needed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/.."
cargo build --release --manifest-path "$root/Cargo.toml" --quiet
tmp="$(mktemp -d)"
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$tmp"' EXIT
"$root/target/release/auditlog" serve --data-dir "$tmp/data" --listen 127.0.0.1:0 >"$tmp/out" 2>"$tmp/err" &
pid=$!
for _ in $(seq 50); do grep -q "listening on" "$tmp/out" 2>/dev/null && break; sleep 0.1; done
addr="$(sed -n 's/^listening on //p' "$tmp/out")"
key="$tmp/data/keys/verifier.pub"
echo "server on $addr"

(cd "$here/typescript" && { [ -d node_modules ] || npm ci --no-audit --no-fund; } && npx tsc -p .)
[ -x "$here/python/.venv/bin/python" ] || { python3 -m venv "$here/python/.venv" && "$here/python/.venv/bin/pip" install -q -r "$here/python/requirements.txt"; }

node "$here/typescript/dist/order_receipts.js" append --server "$addr" --key "$key" --order ts-1 --receipt "$tmp/ts.json"
"$here/python/.venv/bin/python" "$here/python/order_receipts.py" append --server "$addr" --key "$key" --order py-1 --receipt "$tmp/py.json"
"$root/target/release/auditlog" append --server "http://$addr" --log default --subject order:other \
    --actor buyer:1 --kind prompt --payload "the log moves on" >/dev/null
node "$here/typescript/dist/order_receipts.js" check --server "$addr" --key "$key" --receipt "$tmp/ts.json"
"$here/python/.venv/bin/python" "$here/python/order_receipts.py" check --server "$addr" --key "$key" --receipt "$tmp/py.json"
echo "both examples passed"
