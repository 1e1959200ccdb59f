#!/usr/bin/env bash
# Reference run of the same push path through real Prosody 0.12 (not our limit: Prosody's).
# bob sends N chat messages to alice, who enabled push and is offline; Prosody's
# mod_cloud_notify publishes one push per message to uwpx-push-server (component,
# coalescing off), which POSTs each to the fake WNS. Reports pushes per second from the
# first message sent to the Nth WNS POST received, and the time to the first push.
# Usage: scripts/bench-prosody.sh [N] (default 2000)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd); export ROOT
N=${1:-2000}
source scripts/e2e/stack.sh
trap stack_stop EXIT
bash scripts/e2e/setup.sh --no-ejabberd >/dev/null
cargo build --release --quiet --bin uwpx-push-server --example fake-wns
stack_start info 0 alice bob
read -r NODE SECRET PUSHJID < <(stack_register alice 2>/dev/null)
stack_enable alice "$NODE" "$SECRET" "$PUSHJID" >/dev/null
"$E2E/.venv/bin/python" - "$N" "$STACK_DIR/wns.out" "$E2E" <<'PY'
import asyncio, sys, time
sys.path.insert(0, sys.argv[3])
import e2elib as L
from sender import Sender
n, wns_out = int(sys.argv[1]), sys.argv[2]
def posts():
    with open(wns_out) as f:
        return sum(1 for line in f if "POST /ch/" in line)
async def main():
    s = Sender("bob@localhost", "bobpw")
    await s.login()
    t0 = time.monotonic()
    first = None
    for i in range(n):
        s.send_message(mto="alice@localhost", mbody=f"bench {i}", mtype="chat")
        if i % 50 == 0:
            await asyncio.sleep(0)
    sent = time.monotonic() - t0
    while True:
        got = posts()
        if got and first is None:
            first = time.monotonic() - t0
        if got >= n or time.monotonic() - t0 > 300:
            break
        await asyncio.sleep(0.05)
    total = time.monotonic() - t0
    print(f"Prosody 0.12 reference: {got}/{n} pushes in {total:.2f} s = {got/total:.0f} pushes/s "
          f"(messages sent in {sent:.2f} s; first push after {first*1000:.0f} ms)")
    await s.logout()
asyncio.run(main())
PY
