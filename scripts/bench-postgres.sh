#!/usr/bin/env bash
# The PostgreSQL benchmark of issue #7: `auditlog bench` against 1 and 3
# servers sharing one throwaway PostgreSQL database, next to the audit table
# users build by hand (a trigger chaining SHA-256 under a locked head row),
# measured in the same database and run, synchronous_commit on everywhere.
#
# Usage: scripts/bench-postgres.sh [seconds per run, default 10]
# Env: CONCURRENCY (default 64), BATCH (default 1), MODE (unary|stream),
# SERVERS (server counts to run, default "1 3"), BIN (the auditlog binary
# to measure, default this checkout's release build), PG_STATS=1 (print
# the statements PostgreSQL spent most time in, from pg_stat_statements,
# after each run).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
CONCURRENCY=${CONCURRENCY:-64}
BATCH=${BATCH:-1}
MODE=${MODE:-unary}
SERVERS=${SERVERS:-"1 3"}

if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet
  BIN=$PWD/target/release/auditlog
fi

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
  -o "-p $port -k $work -c listen_addresses=127.0.0.1 -c max_connections=300 -c synchronous_commit=on -c fsync=on${PG_STATS:+ -c shared_preload_libraries=pg_stat_statements}" >/dev/null
"${as_pg[@]}" "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres auditlog
url="postgres://postgres@127.0.0.1:$port/auditlog"
psql=("${as_pg[@]}" "$bindir/psql" -h 127.0.0.1 -p "$port" -U postgres -d auditlog -qAtX)
if [ -n "${PG_STATS:-}" ]; then "${psql[@]}" -c "CREATE EXTENSION pg_stat_statements"; fi
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

for n in $SERVERS; do
  servers=()
  for i in $(seq "$n"); do start_server "$n-$i"; done
  also=()
  for s in "${servers[@]:1}"; do also+=(--also-server "$s"); done
  echo "== $n server(s) on one database"
  if [ -n "${PG_STATS:-}" ]; then "${psql[@]}" -c "SELECT pg_stat_statements_reset()" >/dev/null; fi
  "$BIN" bench --server "${servers[0]}" "${also[@]}" --mode "$MODE" \
    --concurrency "$CONCURRENCY" --batch "$BATCH" --seconds "$SECS" \
    --no-baseline --baseline-postgres "$url"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
  if [ -n "${PG_STATS:-}" ]; then
    echo "calls, mean ms, total s, statement (top 8 by total time):"
    "${psql[@]}" -F ' | ' -c "SELECT calls, round(mean_exec_time::numeric, 3), \
      round(total_exec_time::numeric / 1000, 2), left(regexp_replace(query, '\s+', ' ', 'g'), 90) \
      FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 8"
  fi
  # Batches sent without the head lock and refused (planned again under
  # it): each one costs a round trip and a wait for the lock.
  refused=$(cat "$work"/server-"$n"-*/err | grep -c "pipelined batch refused" || true)
  echo "pipelined batches refused and planned again: $refused"
  if [ "$refused" != 0 ]; then
    cat "$work"/server-"$n"-*/err | grep "pipelined batch refused" | sed 's/[0-9]\+/N/g' |
      sort | uniq -c | sort -rn | head -3
  fi
done
