#!/usr/bin/env bash
# Runs every check and test: formatting, clippy, unit and integration tests.
# Works on a fresh machine with only the Rust toolchain: it installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v openssl >/dev/null 2>&1; then
  echo "== installing openssl (test certificates for the demo)"
  apt-get update -qq && apt-get install -y -qq openssl >/dev/null
fi
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings
echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast
else
  cargo test --no-fail-fast
fi
