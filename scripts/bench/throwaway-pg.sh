# Sourced by the benchmark scripts for --postgres: starts a throw-away PostgreSQL on
# this machine (scripts/pg.sh), removes it when the calling script exits, and sets
# PG_URL to its admin URL for the bench's --pg-url. (Called directly, not in $(...):
# the trap belongs to the calling shell.)
throwaway_pg() {
  bash scripts/pg.sh install
  PGDIR=$(mktemp -d /tmp/uwpx-bench-pg.XXXXXX)
  trap 'bash scripts/pg.sh destroy "$PGDIR" >/dev/null 2>&1 || true' EXIT
  PG_URL=$(bash scripts/pg.sh start "$PGDIR")
}
