#!/usr/bin/env bash
# Publish benchmark (see scripts/bench/publish.rs for what it measures).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench --quiet --bench publish -- "$@"
