#!/usr/bin/env bash
# Local end-to-end demo, no real WNS credentials needed:
#   Prosody (the user's XMPP server) + uwpx-push-server as its XEP-0114 component
#   + the project's fake WNS standing in for Microsoft + two users, alice and bob.
# It shows one push hop by hop: registration, enable, message, publish, WNS POST.
# Then it stops everything it started. Installs Prosody and a slixmpp venv if missing.
#
#   scripts/demo.sh              the push server keeps its data in a SQLite file
#   scripts/demo.sh --postgres   the same on a throw-away local PostgreSQL (scripts/pg.sh,
#                                Debian's postgresql package), destroyed at the end
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
E2E="$ROOT/scripts/e2e"
export ROOT

POSTGRES=0
case "${1:-}" in
  "") ;;
  --postgres) POSTGRES=1 ;;
  *) sed -n '2,10p' "$0" >&2; exit 2 ;;
esac

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
source "$E2E/stack.sh"
PG_DIR=
cleanup() {
  stack_stop
  if [ -n "$PG_DIR" ]; then bash "$ROOT/scripts/pg.sh" destroy "$PG_DIR"; fi
}
trap cleanup EXIT

step "Setting up (Prosody, slixmpp venv, release build)"
bash "$E2E/setup.sh" --no-ejabberd
cargo build --release --quiet --bin uwpx-push-server --example fake-wns

if [ "$POSTGRES" = 1 ]; then
  step "Starting a throw-away PostgreSQL; a role and a database for the push server (README: Storage)"
  bash "$ROOT/scripts/pg.sh" install
  PG_DIR=$(mktemp -d)
  ADMIN_URL=$(bash "$ROOT/scripts/pg.sh" start "$PG_DIR")
  DB_PASSWORD=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
  printf "   CREATE ROLE uwpx_push LOGIN PASSWORD '****';\n   CREATE DATABASE uwpx_push OWNER uwpx_push;\n"
  psql -q -v ON_ERROR_STOP=1 "$ADMIN_URL" \
    -c "CREATE ROLE uwpx_push LOGIN PASSWORD '$DB_PASSWORD'" -c "CREATE DATABASE uwpx_push OWNER uwpx_push"
  export STACK_DB_URL="postgres://uwpx_push:$DB_PASSWORD@127.0.0.1:$(cat "$PG_DIR/port")/uwpx_push"
  echo "   db.url: postgres://uwpx_push:****@127.0.0.1:$(cat "$PG_DIR/port")/uwpx_push"
fi

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

if [ "$POSTGRES" = 1 ]; then
  step "6. Storage: what the push server keeps in PostgreSQL (uwpx-push-server stats)"
  "$ROOT/target/release/uwpx-push-server" stats --devices --config "$STACK_DIR/configuration.json" 2>/dev/null | sed 's/^/   /'
fi

step "Stopping everything"
