#!/usr/bin/env bash
# WNS pipeline benchmark (see scripts/bench/wns.rs for what it measures).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench --quiet --bench wns -- "$@"
