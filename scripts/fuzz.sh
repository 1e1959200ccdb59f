#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz, libFuzzer) of the code that parses bytes from
# outside: the registration codec, the XMPP stanza reader with publish classification,
# the configuration loader, and the WNS notify client's HTTP response parser. Targets
# and seed corpora are in fuzz/.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     default: 60 s each, all four targets
#
# Fails if a target finds a crash: a panic, a sanitizer report, a timeout (10 s for one
# input) or more than 2 GB of memory. The input is then in fuzz/artifacts/TARGET/;
# replay it with `RUSTC_BOOTSTRAP=1 cargo fuzz run -a TARGET FILE` in fuzz/.
#
# Works on the stable toolchain: cargo-fuzz is installed if missing, and
# RUSTC_BOOTSTRAP=1 lets stable accept the -Z flags cargo-fuzz passes. AddressSanitizer
# is used when the toolchain ships its runtime (stable x86_64 Linux does), otherwise no
# sanitizer; FUZZ_SANITIZER=none|address overrides. The committed seeds stay as they
# are: the units the fuzzer adds go to fuzz/artifacts/TARGET/corpus (ignored by git).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${1:-60}
shift || true
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  targets=(registration_codec stanza_reader config_loader wns_response)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1

if [[ -z ${FUZZ_SANITIZER:-} ]]; then
  host=$(rustc -vV | sed -n 's/^host: //p')
  if compgen -G "$(rustc --print sysroot)/lib/rustlib/$host/lib/*rt.asan.a" >/dev/null; then
    FUZZ_SANITIZER=address
  else
    FUZZ_SANITIZER=none
  fi
fi
echo "fuzz: sanitizer $FUZZ_SANITIZER, ${seconds} s per target"
# -a: debug assertions on, so integer overflow panics instead of wrapping.
cargo fuzz build -a -s "$FUZZ_SANITIZER"

# The config target writes a scratch directory per process under TMPDIR.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

failed=()
for t in "${targets[@]}"; do
  mkdir -p "artifacts/$t/corpus"
  log="artifacts/$t/last-run.log"
  if TMPDIR=$scratch cargo fuzz run -a -s "$FUZZ_SANITIZER" "$t" \
    "artifacts/$t/corpus" "corpus/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
    -print_final_stats=1 >"$log" 2>&1; then
    summary=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true)
    echo "fuzz: $t ok: ${summary:-no DONE line, see $log}"
  else
    echo "fuzz: $t FAILED; the end of $log:"
    tail -n 40 "$log"
    failed+=("$t")
  fi
done
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "fuzz: crashes in: ${failed[*]} (inputs in fuzz/artifacts/<target>/)"
  exit 1
fi
