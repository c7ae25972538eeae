#!/usr/bin/env bash
# The PostgreSQL benchmark of issue #7: `auditlog bench` against 1 and 3
# servers sharing one throwaway PostgreSQL database, next to the audit table
# users build by hand (a trigger chaining SHA-256 under a locked head row),
# measured in the same database and run, synchronous_commit on everywhere.
#
# Usage: scripts/bench-postgres.sh [seconds per run, default 10]
# Env: CONCURRENCY (default 64), BATCH (default 1), MODE (unary|stream).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
CONCURRENCY=${CONCURRENCY:-64}
BATCH=${BATCH:-1}
MODE=${MODE:-unary}

cargo build --release --quiet
BIN=$PWD/target/release/auditlog

bindir=""
if command -v initdb >/dev/null; then
  bindir=$(dirname "$(readlink -f "$(command -v initdb)")")
elif command -v pg_config >/dev/null; then
  bindir=$(pg_config --bindir)
fi
[ -x "$bindir/initdb" ] || { echo "PostgreSQL (initdb, pg_ctl) not found" >&2; exit 2; }

work=$(mktemp -d)
as_pg=()
if [ "$(id -u)" = 0 ]; then
  chown postgres "$work"
  as_pg=(runuser -u postgres --)
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  "${as_pg[@]}" "$bindir/pg_ctl" -D "$work/pg" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

"${as_pg[@]}" "$bindir/initdb" -D "$work/pg" -A trust -U postgres -E UTF8 >/dev/null
"${as_pg[@]}" "$bindir/pg_ctl" -D "$work/pg" -l "$work/pg.log" -w start \
  -o "-p $port -k $work -c listen_addresses=127.0.0.1 -c max_connections=300 -c synchronous_commit=on -c fsync=on" >/dev/null
"${as_pg[@]}" "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres auditlog
url="postgres://postgres@127.0.0.1:$port/auditlog"
mkdir -p "$work/keys"
"$BIN" keygen --name bench.example --out "$work/keys" >/dev/null

# Starts server $1 in the background (in this shell, so its pid is ours to
# stop) and appends its URL to `servers`.
start_server() {
  local dir="$work/server-$1"
  mkdir -p "$dir"
  "$BIN" serve --store "$url" --key "$work/keys/signer.key" --data-dir "$dir" \
    --listen 127.0.0.1:0 >"$dir/out" 2>"$dir/err" &
  pids+=($!)
  for _ in $(seq 100); do
    if grep -q "listening on" "$dir/out"; then
      servers+=("$(sed -n 's/^listening on /http:\/\//p' "$dir/out")")
      return
    fi
    sleep 0.1
  done
  cat "$dir/err" >&2
  exit 1
}

for n in 1 3; do
  servers=()
  for i in $(seq "$n"); do start_server "$n-$i"; done
  also=()
  for s in "${servers[@]:1}"; do also+=(--also-server "$s"); done
  echo "== $n server(s) on one database"
  "$BIN" bench --server "${servers[0]}" "${also[@]}" --mode "$MODE" \
    --concurrency "$CONCURRENCY" --batch "$BATCH" --seconds "$SECS" \
    --no-baseline --baseline-postgres "$url"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
done
