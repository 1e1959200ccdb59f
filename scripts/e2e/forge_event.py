#!/usr/bin/env python3
"""Sends a message shaped like a pubsub push event, from an ordinary user, to the push
account: client mode must ignore events that do not come from its own bare JID.

    python forge_event.py --jid bob@localhost --password bobpw --to push@pushsrv.localhost --node N
"""
from __future__ import annotations

import argparse
import asyncio

import e2elib as L


async def amain(a):
    c = L.Client(a.jid, a.password, "forger")
    await c.login()
    msg = c.make_message(mto=a.to, mtype="headline")
    event = L.ET.SubElement(msg.xml, f"{{{L.NS_PUBSUB_EVENT}}}event")
    items = L.ET.SubElement(event, f"{{{L.NS_PUBSUB_EVENT}}}items", node=a.node)
    item = L.ET.SubElement(items, f"{{{L.NS_PUBSUB_EVENT}}}item", id="forged-1")
    notif = L.ET.SubElement(item, f"{{{L.NS_PUSH}}}notification")
    notif.append(L.make_form("urn:xmpp:push:summary", {"message-count": "1"}))
    msg.send()
    await asyncio.sleep(0.5)
    await c.logout()
    print("forged event sent", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--jid", default="bob@localhost")
    ap.add_argument("--password", default="bobpw")
    ap.add_argument("--to", required=True)
    ap.add_argument("--node", required=True)
    asyncio.run(amain(ap.parse_args()))
