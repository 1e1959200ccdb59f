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

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
pids=()
work=$(mktemp -d)
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

step "Setting up (Prosody, slixmpp venv, release build)"
bash "$E2E/setup.sh" --no-ejabberd
cargo build --release --quiet --bin uwpx-push-server --example fake-wns
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 150); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 did not open"; exit 1; }

export E2E_VAR="$work/prosody" E2E_C2S_PORT=$(free_port) E2E_COMPONENT_PORT=$(free_port) E2E_S2S_PORT=$(free_port)
export E2E_COMPONENT_SECRET="demo-component-secret" E2E_CA_FILE="$work/prosody/certs/ca.crt" E2E_WIRE_DIR="$work/wire"
WNS_PORT=$(free_port); REG_PORT=$(free_port)
mkdir -p "$E2E_VAR"
bash "$E2E/gen_certs.sh" "$E2E_VAR/certs"
for u in alice bob; do prosodyctl --config "$E2E/prosody/prosody.cfg.lua" register "$u" localhost "${u}pw" >/dev/null 2>&1; done

step "Starting Prosody 0.12 on 127.0.0.1:$E2E_C2S_PORT (component port $E2E_COMPONENT_PORT)"
prosody --config "$E2E/prosody/prosody.cfg.lua" -F > "$work/prosody.out" 2>&1 & pids+=($!)
wait_port "$E2E_COMPONENT_PORT"

step "Starting the fake WNS on https://localhost:$WNS_PORT"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$work/wns.key" -out "$work/wns.crt" 2>/dev/null
./target/release/examples/fake-wns --port "$WNS_PORT" --cert "$work/wns.crt" --key "$work/wns.key" \
  > "$work/wns.out" 2>&1 & pids+=($!)
wait_port "$WNS_PORT"

step "Starting uwpx-push-server as component push.localhost"
cat > "$work/configuration.json" <<JSON
{
  "wns":  { "packet_id": "ms-app://s-1-15-2-1111111111-2222222222-3333333333-4444444444-5555555555-6666666666-7777777777",
            "client_secret": "fake-wns-client-secret",
            "token_url": "https://localhost:$WNS_PORT/accesstoken.srf",
            "ca_file": "$work/wns.crt", "channel_hosts": ["localhost"] },
  "xmpp": { "bare_jid": "push@localhost",
            "component": { "jid": "push.localhost", "secret": "$E2E_COMPONENT_SECRET",
                           "host": "127.0.0.1", "port": $E2E_COMPONENT_PORT } },
  "tcp":  { "host": "127.0.0.1", "port": $REG_PORT },
  "db":   { "path": "$work/pushServer.db" },
  "log":  { "level": "trace" }
}
JSON
./target/release/uwpx-push-server --config "$work/configuration.json" 2> "$work/server.log" & pids+=($!)
for _ in $(seq 100); do grep -q "xmpp: connected" "$work/server.log" && break; sleep 0.1; done
grep -E "INFO|WARN" "$work/server.log" | sed 's/^/   [push server] /'

step "1. Registration: alice's UWPX device (v2 client bytes) -> push server, TCP port $REG_PORT"
DEVICE=5486bd868050a620141f4e81c9f1d2c67ab0de27e5e26d218ca41c9394ee806b
read -r NODE SECRET PUSHJID < <("$E2E/.venv/bin/python" - "$REG_PORT" "$WNS_PORT" "$DEVICE" <<'PY'
import hashlib, json, socket, sys
port, wns_port, dev = int(sys.argv[1]), sys.argv[2], sys.argv[3]
def send(obj):
    raw = json.dumps(obj, indent=2).replace("\n", "\r\n").encode() + b"\0"
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(raw)
        answer = b""
        while not answer.endswith(b"\0"):
            chunk = s.recv(4096)
            if not chunk: break
            answer += chunk
    print(f"   -> {raw.decode()!r}\n   <- {answer.decode()!r}", file=sys.stderr)
    return json.loads(answer.rstrip(b"\0"))
account_id = hashlib.sha256((dev + "alice@localhost").encode()).hexdigest()
send({"version": 2, "action": "set_channel_uri", "device_id": dev,
      "channel_uri": f"https://localhost:{wns_port}/ch/alice-laptop?token=AwYAAAB%2bdemo%2fToken%3d"})
a = send({"version": 2, "action": "set_push_accounts", "device_id": dev, "accounts": [{"account_id": account_id}]})
print(a["accounts"][0]["node"], a["accounts"][0]["secret"], a["push_bare_jid"])
PY
)

step "2. Enable: alice tells Prosody to push to $PUSHJID (node $NODE), then goes offline"
"$E2E/.venv/bin/python" "$E2E/user_client.py" --jid alice@localhost --password alicepw \
  --push-jid "$PUSHJID" --node "$NODE" --secret "$SECRET" --leave offline 2>/dev/null | sed 's/^/   /'

step "3. Message: bob writes to alice while she is offline"
"$E2E/.venv/bin/python" "$E2E/sender.py" --jid bob@localhost --password bobpw --to alice@localhost 2>/dev/null | sed 's/^/   /'

step "4. Publish: Prosody -> push server (XEP-0357 over the component stream), and the IQ reply"
for _ in $(seq 100); do grep -q "push: from" "$work/server.log" && break; sleep 0.1; done
grep -E "xmpp: <- <iq|xmpp: -> <iq|push: from|wns: device|access token" "$work/server.log" | grep -v ping | sed 's/^/   [push server] /'
grep -E "cloud_notify" "$E2E_VAR/prosody.log" | grep -E "Sending|Push notification|result" | tail -3 | sed 's/^/   [prosody] /' || true

step "5. WNS: what the fake WNS received (this is what wakes the device)"
for _ in $(seq 50); do grep -q "POST /ch/" "$work/wns.out" && break; sleep 0.1; done
sed 's/^/   /' "$work/wns.out"

step "Stopping everything"
