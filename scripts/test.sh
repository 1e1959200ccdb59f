#!/usr/bin/env bash
# Runs every check and test: formatting, clippy, unit, integration and end-to-end tests
# (real Prosody and ejabberd), then 60 s of fuzzing per fuzz target. Works on a fresh
# machine with only the Rust toolchain: it installs what it needs (Debian packages, a
# Python venv with slixmpp, cargo-fuzz).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== e2e setup (Prosody, ejabberd, slixmpp venv)"
bash scripts/e2e/setup.sh
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
echo "== tests"
# --run-ignored all: the end-to-end tests against real Prosody and ejabberd are
# ignored by default (they need setup.sh, which ran above).
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast --run-ignored all
else
  cargo test --no-fail-fast -- --include-ignored
fi
echo "== fuzz (60 s per target, see scripts/fuzz.sh)"
bash scripts/fuzz.sh 60
