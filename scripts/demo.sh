#!/usr/bin/env bash
# Local demo: starts the push server over TLS with a throw-away certificate and
# database, registers a device the way each UWPX client generation does (their exact
# bytes), prints every request and answer, shows what was stored, and stops.
# Needs only cargo, python3 and the openssl CLI; no WNS credentials.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill -TERM "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== building (release)"
cargo build --release --quiet

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
  -keyout "$work/server.key" -out "$work/server.crt" 2>/dev/null

cat > "$work/configuration.json" <<JSON
{
  "xmpp": { "bare_jid": "push@push.localhost" },
  "tcp":  { "host": "127.0.0.1", "port": 0,
            "tls": { "cert_path": "server.crt", "key_path": "server.key" } },
  "db":   { "path": "pushServer.db" }
}
JSON

echo "== starting uwpx-push-server"
./target/release/uwpx-push-server --config "$work/configuration.json" 2> >(tee "$work/server.log" | sed 's/^/   [server] /' >&2) &
server_pid=$!
for _ in $(seq 100); do
  addr=$(grep -o 'listening on [0-9.:]*' "$work/server.log" 2>/dev/null | awk '{print $3}') || true
  [ -n "${addr:-}" ] && break
  sleep 0.1
done
[ -n "${addr:-}" ] || { echo "server did not start"; exit 1; }

python3 - "$addr" "$work/server.crt" <<'PY'
import socket, ssl, sys, json
host, port = sys.argv[1].rsplit(":", 1)
ctx = ssl.create_default_context(cafile=sys.argv[2])
ctx.maximum_version = ssl.TLSVersion.TLSv1_2   # what UWPX clients speak
DEV = "5486bd868050a620141f4e81c9f1d2c67ab0de27e5e26d218ca41c9394ee806b"
def newtonsoft(obj):
    return json.dumps(obj, indent=2).replace("\n", "\r\n").encode() + b"\0"
def send(title, obj):
    raw = newtonsoft(obj)
    with socket.create_connection((host, int(port))) as tcp, ctx.wrap_socket(tcp, server_hostname="localhost") as s:
        s.sendall(raw)
        answer = b""
        while not answer.endswith(b"\0"):
            chunk = s.recv(4096)
            if not chunk: break
            answer += chunk
    print(f"\n-- {title}\n   -> {raw!r}\n   <- {answer!r}")
uri = "https://db5p.notify.windows.com/?token=AwYAAAB%2bExample%2fToken%3d"
send("v2 client (0.39+): set_channel_uri", {"version": 2, "action": "set_channel_uri", "device_id": DEV, "channel_uri": uri})
send("v2 client: set_push_accounts", {"version": 2, "action": "set_push_accounts", "device_id": DEV, "accounts": [
    {"account_id": "e5397e96c6ff4d629ab9f203eec3ff17c777b2127cf1b41005e54877487ba982"},
    {"account_id": "98d0e1085fc483d8371c8cde438fed253918a4ceae30a527da34c3dca4918e62"}]})
send("v2 client: the same accounts again (node and secret stay)", {"version": 2, "action": "set_push_accounts", "device_id": DEV, "accounts": [
    {"account_id": "e5397e96c6ff4d629ab9f203eec3ff17c777b2127cf1b41005e54877487ba982"}]})
send("v1 account_id client (0.35-0.38): set_push_accounts", {"version": 1, "action": "set_push_accounts", "device_id": "ab" * 32, "accounts": [{"account_id": "x"}]})
send("v1 bare_jid client (0.26-0.34): set_channel_uri", {"version": 1, "action": "set_channel_uri", "device_id": "cd" * 32, "channel_uri": uri})
send("v1 bare_jid client: set_push_accounts", {"version": 1, "action": "set_push_accounts", "device_id": "cd" * 32, "accounts": [{"bare_jid": "someClient@xmpp.uwpx.org"}]})
send("request_test_push (WNS delivery not configured in this demo)", {"version": 2, "action": "request_test_push", "device_id": DEV})
send("a channel URI that is not a WNS host is refused", {"version": 2, "action": "set_channel_uri", "device_id": DEV, "channel_uri": "https://attacker.example/"})
PY

kill -TERM "$server_pid"; wait "$server_pid" || true; server_pid=""
echo
echo "== what the database holds (hashes and domains, never bare JIDs)"
python3 - "$work/pushServer.db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
for row in db.execute("SELECT device_id, version, account_form, substr(channel_uri, 1, 40) || '…' FROM devices"):
    print("   device ", row)
for row in db.execute("SELECT substr(device_id,1,12) || '…', account_key, domain, node, substr(secret,1,6) || '…' FROM accounts"):
    print("   account", row)
PY
