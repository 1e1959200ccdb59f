#!/usr/bin/env bash
# Publish benchmark (see scripts/bench/publish.rs for what it measures).
#
#   scripts/bench-publish.sh [--seconds N] [--runs N] ... [--postgres URL] [--instances N]
#
# --instances N runs N server processes on one PostgreSQL database: without
# --postgres URL, a throw-away PostgreSQL is started here (scripts/pg.sh) and removed
# at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
args=("$@")
has() { local a; for a in "${args[@]}"; do [ "$a" = "$1" ] && return 0; done; return 1; }
if has --instances && ! has --postgres; then
  PGDIR=$(mktemp -d /tmp/uwpx-bench-pg.XXXXXX)
  trap 'bash scripts/pg.sh destroy "$PGDIR" >/dev/null 2>&1 || true' EXIT
  args+=(--postgres "$(bash scripts/pg.sh start "$PGDIR")")
fi
cargo bench --quiet --bench publish -- "${args[@]}"
