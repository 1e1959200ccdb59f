# Shared by scripts/demo.sh and scripts/bench-prosody.sh (source it): starts Prosody,
# the fake WNS and uwpx-push-server as Prosody's component, all on 127.0.0.1 with free
# ports, in a temporary folder; `stack_stop` (run on EXIT) stops every process by PID.
# Needs scripts/e2e/setup.sh to have run and a release build of the binary and example.
# STACK_DB_URL, if set, is the PostgreSQL database (db.url) the server uses instead of
# a SQLite file in the temporary folder.

ROOT=${ROOT:?set ROOT to the project folder}
E2E="$ROOT/scripts/e2e"
STACK_PIDS=()
STACK_DIR=$(mktemp -d)

stack_stop() {
  for p in "${STACK_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${STACK_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$STACK_DIR"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 150); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 did not open" >&2; return 1; }

# stack_start LOG_LEVEL MIN_INTERVAL_MS USERS...
stack_start() {
  local level=$1 interval=$2; shift 2
  export E2E_VAR="$STACK_DIR/prosody" E2E_C2S_PORT=$(free_port) E2E_COMPONENT_PORT=$(free_port) E2E_S2S_PORT=$(free_port)
  export E2E_COMPONENT_SECRET="stack-component-secret" E2E_CA_FILE="$STACK_DIR/prosody/certs/ca.crt" E2E_WIRE_DIR="$STACK_DIR/wire"
  WNS_PORT=$(free_port); REG_PORT=$(free_port)
  local db="\"path\": \"$STACK_DIR/pushServer.db\""
  if [ -n "${STACK_DB_URL:-}" ]; then db="\"url\": \"$STACK_DB_URL\""; fi
  mkdir -p "$E2E_VAR"
  bash "$E2E/gen_certs.sh" "$E2E_VAR/certs"
  for u in "$@"; do prosodyctl --config "$E2E/prosody/prosody.cfg.lua" register "$u" localhost "${u}pw" >/dev/null 2>&1; done
  prosody --config "$E2E/prosody/prosody.cfg.lua" -F > "$STACK_DIR/prosody.out" 2>&1 & STACK_PIDS+=($!)
  wait_port "$E2E_COMPONENT_PORT"

  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$STACK_DIR/wns.key" -out "$STACK_DIR/wns.crt" 2>/dev/null
  "$ROOT/target/release/examples/fake-wns" --port "$WNS_PORT" --cert "$STACK_DIR/wns.crt" --key "$STACK_DIR/wns.key" \
    > "$STACK_DIR/wns.out" 2>&1 & STACK_PIDS+=($!)
  wait_port "$WNS_PORT"

  cat > "$STACK_DIR/configuration.json" <<JSON
{
  "wns":  { "packet_id": "ms-app://s-1-15-2-1111111111-2222222222-3333333333-4444444444-5555555555-6666666666-7777777777",
            "client_secret": "fake-wns-client-secret",
            "token_url": "https://localhost:$WNS_PORT/accesstoken.srf",
            "ca_file": "$STACK_DIR/wns.crt", "channel_hosts": ["localhost"] },
  "xmpp": { "bare_jid": "push@localhost",
            "component": { "jid": "push.localhost", "secret": "$E2E_COMPONENT_SECRET",
                           "host": "127.0.0.1", "port": $E2E_COMPONENT_PORT } },
  "tcp":  { "host": "127.0.0.1", "port": $REG_PORT },
  "db":   { $db },
  "push": { "min_interval_ms": $interval },
  "log":  { "level": "$level" }
}
JSON
  "$ROOT/target/release/uwpx-push-server" --config "$STACK_DIR/configuration.json" 2> "$STACK_DIR/server.log" & STACK_PIDS+=($!)
  for _ in $(seq 100); do grep -q "xmpp: connected" "$STACK_DIR/server.log" && return 0; sleep 0.1; done
  echo "the push server did not connect to Prosody" >&2; cat "$STACK_DIR/server.log" >&2; return 1
}

# stack_register USER: registers a v2 device for USER@localhost over TCP, printing each
# request and answer to stderr; prints "NODE SECRET PUSH_JID".
stack_register() {
  "$E2E/.venv/bin/python" - "$REG_PORT" "$WNS_PORT" "$1" <<'PY'
import hashlib, json, socket, sys
port, wns_port, user = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dev = hashlib.sha256(user.encode()).hexdigest()
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
account_id = hashlib.sha256((dev + user + "@localhost").encode()).hexdigest()
send({"version": 2, "action": "set_channel_uri", "device_id": dev,
      "channel_uri": f"https://localhost:{wns_port}/ch/{user}-laptop?token=AwYAAAB%2bdemo%2fToken%3d"})
a = send({"version": 2, "action": "set_push_accounts", "device_id": dev, "accounts": [{"account_id": account_id}]})
print(a["accounts"][0]["node"], a["accounts"][0]["secret"], a["push_bare_jid"])
PY
}

# stack_enable USER NODE SECRET PUSH_JID: USER enables push, then goes offline.
stack_enable() {
  "$E2E/.venv/bin/python" "$E2E/user_client.py" --jid "$1@localhost" --password "$1pw" \
    --push-jid "$4" --node "$2" --secret "$3" --leave offline 2>/dev/null
}
