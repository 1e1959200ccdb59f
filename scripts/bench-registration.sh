#!/usr/bin/env bash
# Registration benchmark (see scripts/bench/registration.rs for what it measures).
# Usage: scripts/bench-registration.sh [--seconds N] [--runs N] [--sync full|normal] ...
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench --quiet --bench registration -- "$@"
