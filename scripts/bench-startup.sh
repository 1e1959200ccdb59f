#!/usr/bin/env bash
# Start time and idle memory with a large SQLite database (issue 13): fills a database
# with N devices and accounts (default 1,000,000; about 685 MB), drops the page cache
# (root only), starts the release binary, and reports the time from exec to its
# `listening` line and its resident size after 2 s idle. Three runs.
# Usage: scripts/bench-startup.sh [DEVICES] [BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000000}
bin=${2:-target/release/uwpx-push-server}
[ -x "$bin" ] || cargo build --release --quiet --bin uwpx-push-server
dir=$(mktemp -d /tmp/uwpx-startup.XXXXXX)
trap 'rm -rf "$dir"' EXIT
cat > "$dir/cfg.json" <<JSON
{"xmpp": {"bare_jid": "push@example.org"}, "tcp": {"host": "127.0.0.1", "port": 0},
 "db": {"path": "push.db"}, "log": {"level": "info"}}
JSON
"$bin" stats --config "$dir/cfg.json" >/dev/null   # the server's own schema
python3 - "$dir/push.db" "$n" <<'PY'
import sqlite3, sys, time, os
db, n = sys.argv[1], int(sys.argv[2])
c = sqlite3.connect(db)
now = int(time.time())
c.execute("BEGIN")
c.executemany("INSERT INTO devices VALUES (?, ?, 2, 'account_id', ?, ?, ?)",
              ((f"{i:064x}", f"https://db5p.notify.windows.com/?token={i}", now, now, now) for i in range(n)))
c.executemany("INSERT INTO accounts (device_id, account_key, domain, node, secret, created_at) VALUES (?, ?, NULL, ?, ?, 0)",
              ((f"{i:064x}", f"{i + 7:064x}", os.urandom(16).hex(), os.urandom(24).hex()) for i in range(n)))
c.commit()
c.close()
PY
echo "$n devices, $(du -h "$dir/push.db" | cut -f1) database"
for run in 1 2 3; do
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || echo "(cannot drop the page cache: warm start)"
  t0=$(date +%s%N)
  "$bin" --config "$dir/cfg.json" 2> "$dir/run.log" &
  pid=$!
  for _ in $(seq 1 6000); do grep -q "listening on" "$dir/run.log" && break; sleep 0.005; done
  t1=$(date +%s%N)
  sleep 2
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  kill -TERM "$pid"; wait "$pid" || true
  echo "run $run: start $(( (t1 - t0) / 1000000 )) ms, idle RSS $(( rss / 1024 )) MB"
done
