#!/usr/bin/env bash
# Registration benchmark (see scripts/bench/registration.rs for what it measures).
# Usage: scripts/bench-registration.sh [--postgres] [--seconds N] [--runs N] [--sync full|normal] ...
# --postgres: on a throw-away PostgreSQL on this machine (scripts/pg.sh), removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
args=()
pg=0
for a in "$@"; do
  if [ "$a" = "--postgres" ]; then pg=1; else args+=("$a"); fi
done
if [ "$pg" = 1 ]; then
  source scripts/bench/throwaway-pg.sh
  throwaway_pg
  args+=(--pg-url "$PG_URL")
fi
cargo bench --quiet --bench registration -- "${args[@]}"
