#!/usr/bin/env bash
# Local end-to-end demo, no real WNS credentials needed:
#   Prosody (the user's XMPP server) + uwpx-push-server as its XEP-0114 component
#   + the project's fake WNS standing in for Microsoft + two users, alice and bob.
# It shows one push hop by hop: registration, enable, message, publish, WNS POST.
# Then it stops everything it started. Installs Prosody and a slixmpp venv if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
E2E="$ROOT/scripts/e2e"
export ROOT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
source "$E2E/stack.sh"
trap stack_stop EXIT

step "Setting up (Prosody, slixmpp venv, release build)"
bash "$E2E/setup.sh" --no-ejabberd
cargo build --release --quiet --bin uwpx-push-server --example fake-wns

step "Starting Prosody 0.12, the fake WNS (standing in for Microsoft) and uwpx-push-server as component push.localhost"
stack_start trace 2000 alice bob
grep -E "INFO|WARN" "$STACK_DIR/server.log" | sed 's/^/   [push server] /'

step "1. Registration: alice's UWPX device (v2 client bytes) -> push server, TCP port $REG_PORT"
read -r NODE SECRET PUSHJID < <(stack_register alice)

step "2. Enable: alice tells Prosody to push to $PUSHJID (node $NODE), then goes offline"
stack_enable alice "$NODE" "$SECRET" "$PUSHJID" | sed 's/^/   /'

step "3. Message: bob writes to alice while she is offline"
"$E2E/.venv/bin/python" "$E2E/sender.py" --jid bob@localhost --password bobpw --to alice@localhost 2>/dev/null | sed 's/^/   /'

step "4. Publish: Prosody -> push server (XEP-0357 over the component stream), and the IQ reply"
for _ in $(seq 100); do grep -q "push: from" "$STACK_DIR/server.log" && break; sleep 0.1; done
grep -E "xmpp: <- <iq|xmpp: -> <iq|push: from|wns: device|access token" "$STACK_DIR/server.log" | grep -v ping | sed 's/^/   [push server] /'
grep -E "cloud_notify" "$E2E_VAR/prosody.log" | grep -E "Sending|Push notification|result" | tail -3 | sed 's/^/   [prosody] /' || true

step "5. WNS: what the fake WNS received (this is what wakes the device)"
for _ in $(seq 50); do grep -q "POST /ch/" "$STACK_DIR/wns.out" && break; sleep 0.1; done
sed 's/^/   /' "$STACK_DIR/wns.out"

step "Stopping everything"
