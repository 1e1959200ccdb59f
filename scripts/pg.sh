#!/usr/bin/env bash
# A throw-away PostgreSQL server for the tests, the benchmarks and the demo, from Debian's
# `postgresql` package: initdb into DIR as the unprivileged `postgres` user, listening
# only on 127.0.0.1 on a free port (no Unix socket outside DIR), password auth
# (scram-sha-256) for the superuser `uwpx` with a random password.
#
#   scripts/pg.sh install          apt-get install postgresql if it is missing
#   scripts/pg.sh start DIR        create (if new) and start; prints the admin URL
#   scripts/pg.sh url DIR [DB]     the URL of database DB (default postgres)
#   scripts/pg.sh stop DIR         fast shutdown (keeps DIR)
#   scripts/pg.sh destroy DIR      stop and delete DIR
set -euo pipefail

bindir() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
  [ -n "$d" ] && [ -x "$d/initdb" ] || { echo "pg.sh: PostgreSQL is not installed (scripts/pg.sh install)" >&2; exit 1; }
  echo "$d"
}

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

url() {
  local dir=$1 db=${2:-postgres}
  echo "postgres://uwpx:$(cat "$dir/password")@127.0.0.1:$(cat "$dir/port")/$db"
}

case "${1:-}" in
  install)
    if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
      echo "== apt-get install postgresql" >&2
      added=0
      if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; added=1
      fi
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
      [ "$added" = 1 ] && rm -f /usr/sbin/policy-rc.d
      # The package's own cluster is not ours: keep it from running.
      pg_ctlcluster --help >/dev/null 2>&1 && for c in /etc/postgresql/*/main; do
        [ -d "$c" ] && pg_ctlcluster "$(basename "$(dirname "$c")")" main stop >/dev/null 2>&1 || true
      done
    fi
    ;;
  start)
    dir=${2:?usage: pg.sh start DIR}
    bin=$(bindir)
    mkdir -p "$dir"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
      head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$dir/password"
      free_port > "$dir/port"
      mkdir -p "$dir/data" "$dir/sock"
      [ "$(id -u)" = 0 ] && chown -R postgres: "$dir"
      chmod 700 "$dir/data"
      as_pg "$bin/initdb" -D "$dir/data" -U uwpx --pwfile="$dir/password" \
        --auth=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; exit 1; }
    fi
    port=$(cat "$dir/port")
    as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
      -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$dir/sock -c max_connections=400" \
      start >/dev/null || { tail -20 "$dir/server.log" >&2; exit 1; }
    url "$dir"
    ;;
  url)
    url "${2:?usage: pg.sh url DIR [DB]}" "${3:-postgres}"
    ;;
  stop)
    dir=${2:?usage: pg.sh stop DIR}
    [ -f "$dir/data/postmaster.pid" ] && as_pg "$(bindir)/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || true
    ;;
  destroy)
    dir=${2:?usage: pg.sh destroy DIR}
    "$0" stop "$dir"
    rm -rf "$dir"
    ;;
  *)
    sed -n '2,13p' "$0" >&2
    exit 2
    ;;
esac
