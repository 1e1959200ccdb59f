#!/usr/bin/env python3
"""Lists the PEP nodes of an account (disco#items on its bare JID), one per line.

Used by the client-mode end-to-end tests to check, independently of the push server,
which nodes exist on the push account.   python pep_nodes.py --jid J --password P --port N
"""
from __future__ import annotations

import argparse
import asyncio

import e2elib as L


async def amain(a):
    c = L.Client(a.jid + "/lister", a.password, "pep_nodes", port=a.port)
    await c.login()
    items = await c["xep_0030"].get_items(jid=c.boundjid.bare)
    for _jid, node, _name in items["disco_items"]["items"]:
        if node:
            print(node, flush=True)
    await c.logout()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--jid", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--port", type=int, required=True)
    asyncio.run(amain(ap.parse_args()))
