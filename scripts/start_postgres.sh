#!/usr/bin/env bash
# Start (or find running) a PostgreSQL server for Optuna studies and the MLflow tracking
# server, bound to 127.0.0.1 only, with a database `compressbench`. Idempotent: a second
# call with the same folder and port only checks it and prints the URL.
#
#   scripts/start_postgres.sh [DATA_DIR] [PORT]   # default /tmp/compressbench-pg 55432
#   -> prints postgresql://postgres@127.0.0.1:PORT/compressbench on stdout
#   scripts/start_postgres.sh --stop [DATA_DIR]
#
# Uses Debian's postgresql packages (apt-get install postgresql; .ci/run installs them).
# Trust authentication on 127.0.0.1 only: a local test and CI service, not a shared server.
# As root, the server runs as the `postgres` user (PostgreSQL refuses to run as root).
set -euo pipefail

stop=false
if [[ "${1:-}" == "--stop" ]]; then stop=true; shift; fi
DATA_DIR="${1:-/tmp/compressbench-pg}"
PORT="${2:-55432}"
BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
if [[ -z "$BIN" ]]; then
  echo "PostgreSQL not found under /usr/lib/postgresql: apt-get install -y postgresql" >&2
  exit 1
fi

as_owner() {  # run a PostgreSQL binary as the data folder's owner
  if [[ "$(id -u)" == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

if $stop; then
  as_owner "$BIN/pg_ctl" -D "$DATA_DIR" -m fast stop >&2 || true
  exit 0
fi

if [[ ! -f "$DATA_DIR/PG_VERSION" ]]; then
  mkdir -p "$DATA_DIR"
  [[ "$(id -u)" == 0 ]] && chown postgres: "$DATA_DIR"
  chmod 700 "$DATA_DIR"
  as_owner "$BIN/initdb" -D "$DATA_DIR" -U postgres --auth=trust -E UTF8 >&2
fi

if ! as_owner "$BIN/pg_ctl" -D "$DATA_DIR" status >/dev/null 2>&1; then
  as_owner "$BIN/pg_ctl" -D "$DATA_DIR" -w -t 120 -l "$DATA_DIR/server.log" \
    -o "-c listen_addresses=127.0.0.1 -p $PORT -c unix_socket_directories='$DATA_DIR' -c max_connections=200" start >&2
fi

if ! as_owner "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname='compressbench'" | grep -q 1; then
  as_owner "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres compressbench
fi
echo "postgresql://postgres@127.0.0.1:$PORT/compressbench"
