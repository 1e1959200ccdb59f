#!/usr/bin/env bash
# Runs every check and test: formatting, clippy, unit, integration and end-to-end tests
# (real Prosody and ejabberd), twice: on SQLite, then on a real PostgreSQL started here
# (scripts/pg.sh: initdb as the postgres user, 127.0.0.1, a free port, removed at the
# end even when a test fails); then 60 s of fuzzing per fuzz target. Works on a fresh
# machine with only the Rust toolchain: it installs what it needs (Debian packages, a
# Python venv with slixmpp, cargo-fuzz).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== e2e setup (Prosody, ejabberd, dnsmasq, nginx-light, slixmpp venv) and PostgreSQL"
bash scripts/e2e/setup.sh
bash scripts/pg.sh install
if command -v rustup >/dev/null 2>&1; then
  installed=$(rustup component list --installed 2>/dev/null || true)
  echo "$installed" | grep -q '^rustfmt' && echo "$installed" | grep -q '^clippy' || rustup component add rustfmt clippy
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings
echo "== cargo doc (-D warnings)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --document-private-items --quiet
run_tests() {
  # --run-ignored all: the end-to-end tests against real Prosody and ejabberd are
  # ignored by default (they need setup.sh, which ran above).
  if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --no-fail-fast --run-ignored all "$@"
  else
    cargo test --no-fail-fast "$@" -- --include-ignored
  fi
}

echo "== tests on SQLite"
sqlite_rc=0
run_tests || sqlite_rc=$?

echo "== tests on PostgreSQL"
PGDIR=$(mktemp -d /tmp/uwpx-test-pg.XXXXXX)
trap 'bash scripts/pg.sh destroy "$PGDIR" || true' EXIT
UWPX_TEST_PG=$(bash scripts/pg.sh start "$PGDIR")
export UWPX_TEST_PG
pg_rc=0
# The unit tests do not touch a database server: the integration tests are enough.
run_tests --test integration || pg_rc=$?
unset UWPX_TEST_PG

echo "== fuzz (60 s per target, see scripts/fuzz.sh)"
# Without a sanitizer: about 7x the executions per second and a much shorter build;
# the library forbids unsafe code. Run `bash scripts/fuzz.sh` for the ASan build.
fuzz_rc=0
FUZZ_SANITIZER=none bash scripts/fuzz.sh 60 || fuzz_rc=$?

echo "== results: SQLite pass exit $sqlite_rc, PostgreSQL pass exit $pg_rc, fuzzing exit $fuzz_rc"
[ "$sqlite_rc" = 0 ] && [ "$pg_rc" = 0 ] && [ "$fuzz_rc" = 0 ]
