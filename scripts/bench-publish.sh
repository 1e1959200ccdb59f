#!/usr/bin/env bash
# Publish benchmark (see scripts/bench/publish.rs for what it measures).
# Usage: scripts/bench-publish.sh [--postgres] [--instances N] [--against nginx] [--seconds N] [--runs N] ...
# --postgres: on a throw-away PostgreSQL on this machine (scripts/pg.sh), removed at the end.
# --instances N: N server processes on one database, publishes spread over their
#   component connections at random (as ejabberd does); implies --postgres.
# --against nginx: nginx (nginx-light) plays WNS, and wrk measures the same nginx alone
#   (L1); both are installed from Debian's packages when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
args=()
pg=0
for a in "$@"; do
  case "$a" in
    --postgres) pg=1 ;;
    --instances) pg=1; args+=("$a") ;;
    nginx)
      args+=("$a")
      if ! command -v wrk >/dev/null || ! [ -x /usr/sbin/nginx ]; then
        sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light wrk >/dev/null
      fi ;;
    *) args+=("$a") ;;
  esac
done
if [ "$pg" = 1 ]; then
  source scripts/bench/throwaway-pg.sh
  throwaway_pg
  args+=(--pg-url "$PG_URL")
fi
cargo bench --quiet --bench publish -- "${args[@]}"
