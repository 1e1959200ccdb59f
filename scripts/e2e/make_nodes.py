#!/usr/bin/env python3
"""Creates COUNT PEP nodes on an account that no push registration knows, in pipelined
windows; prints how many were created and how long it took.

The client-mode reconcile test uses it to give the push server, at its next connect, a
long reconciliation (it deletes every node that is not in its database), during which
pushes must not be lost.   python make_nodes.py --jid J --password P --port N --count C
"""
from __future__ import annotations

import argparse
import asyncio
import time

import e2elib as L


async def amain(a):
    c = L.Client(a.jid + "/maker", a.password, "make_nodes", port=a.port)
    await c.login()
    start = time.monotonic()
    created = 0
    for base in range(0, a.count, 100):
        batch = [
            c["xep_0060"].create_node(c.boundjid.bare, f"{a.prefix}-{i}")
            for i in range(base, min(base + 100, a.count))
        ]
        results = await asyncio.gather(*batch, return_exceptions=True)
        created += sum(1 for r in results if not isinstance(r, Exception))
    print(f"created {created} nodes in {time.monotonic() - start:.1f} s", flush=True)
    await c.logout()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--jid", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--prefix", default="stale")
    asyncio.run(amain(ap.parse_args()))
