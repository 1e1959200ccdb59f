#!/usr/bin/env python3
"""Writes the committed seed corpora under fuzz/corpus/<target>/.

Sources, byte-exact:
- registration_codec: the client requests of uwpx-protocol.md §4 (all three client
  generations; the sha256 of each is checked against the documented value) and the
  same vectors in tests/registration.rs;
- stanza_reader: the stanzas Prosody 0.12.3 and ejabberd 23.01 sent, captured verbatim
  in xep0357-wns.md part C §4, inside stream headers of the usual shape (the captures
  do not include the headers themselves);
- config_loader: configuration.json.example and variants (client mode, the seed's
  alias spellings, TLS with the scratch certificate, minimal);
- wns_response: answers as nginx 1.22 sent them to the notify client (tests/nginx.rs:
  200 with WNS headers, 410 with its HTML page, a chunked body), as the fake WNS sends
  them, and the framings the parser must handle (interim 100, chunk extensions and
  trailers, a body to EOF, HTTP/1.0, Connection: close).

Each input starts with the mode byte the target reads (see fuzz_targets/*.rs).
Run from anywhere: python3 fuzz/make_seeds.py
"""

import hashlib
import json
import os
import pathlib

FUZZ = pathlib.Path(__file__).resolve().parent
ROOT = FUZZ.parent

DEVICE = "5486bd868050a620141f4e81c9f1d2c67ab0de27e5e26d218ca41c9394ee806b"
A1 = "e5397e96c6ff4d629ab9f203eec3ff17c777b2127cf1b41005e54877487ba982"
A2 = "98d0e1085fc483d8371c8cde438fed253918a4ceae30a527da34c3dca4918e62"
URI = "https://db5p.notify.windows.com/?token=AwYAAAB%2bExample%2fToken%3d"


def client_json(pairs):
    """Json.NET JToken.ToString() on Windows: indented by 2, CRLF, then one NUL."""
    def dump(v, ind):
        pad = "  " * ind
        if isinstance(v, list):
            if not v:
                return "[]"
            inner = ",\r\n".join(pad + "  " + dump(x, ind + 1) for x in v)
            return "[\r\n" + inner + "\r\n" + pad + "]"
        if isinstance(v, tuple):  # an object as ordered pairs
            inner = ",\r\n".join(
                pad + "  " + json.dumps(k) + ": " + dump(x, ind + 1) for k, x in v
            )
            return "{\r\n" + inner + "\r\n" + pad + "}"
        return json.dumps(v)
    return (dump(tuple(pairs), 0) + "\0").encode()


CLIENT = {
    "set_channel_uri_v2": (
        [("version", 2), ("action", "set_channel_uri"), ("device_id", DEVICE), ("channel_uri", URI)],
        "dedec5ef12dbdecee6db230c5cdb468f917da4d832a13a1c879253c447ce2460",
    ),
    "set_channel_uri_v1": (
        [("version", 1), ("action", "set_channel_uri"), ("device_id", DEVICE), ("channel_uri", URI)],
        "a84174a3447b15e341fc57b175fc78da069c033c5cfe9e41696b5c7ad3dc676c",
    ),
    "set_push_accounts_v2_two": (
        [("version", 2), ("action", "set_push_accounts"), ("device_id", DEVICE),
         ("accounts", [(("account_id", A1),), (("account_id", A2),)])],
        "f701c53612082887cf84c59dfdfae8464bb073d42592224d287d222f5d2d82cb",
    ),
    "set_push_accounts_v2_empty": (
        [("version", 2), ("action", "set_push_accounts"), ("device_id", DEVICE), ("accounts", [])],
        "862f95d9a29bed0a9a7ad505e423ef32eaa8de7e3291c8327377ba7ea3939998",
    ),
    "set_push_accounts_v1_account_id": (
        [("version", 1), ("action", "set_push_accounts"), ("device_id", DEVICE),
         ("accounts", [(("account_id", A1),)])],
        "0ff5ffe640479dd1a3c12990b91fc913d286faa14db6a8c86a835dc246205f6b",
    ),
    "set_push_accounts_v1_bare_jid": (
        [("version", 1), ("action", "set_push_accounts"), ("device_id", DEVICE),
         ("accounts", [(("bare_jid", "someClient@xmpp.uwpx.org"),)])],
        "fd9a48973a2a65955cb5d83920b4b5e24d2aeed1f7b1e14d3c936a52a6dea5bc",
    ),
    "request_test_push_v2": (
        [("version", 2), ("action", "request_test_push"), ("device_id", DEVICE)],
        "21cf44bc817f0868774cdab7868ead53681c54528433ffb3e7c97cd8a1cc397a",
    ),
}


def registration():
    seeds = {}
    vectors = {}
    for name, (pairs, sha) in CLIENT.items():
        raw = client_json(pairs)
        assert hashlib.sha256(raw).hexdigest() == sha, name
        vectors[name] = raw
        seeds[name] = b"\x00" + raw  # one read
    # The same bytes as a socket cuts them: 7 bytes per read, and capped at 512 bytes.
    seeds["set_channel_uri_v2_cut7"] = b"\x06" + vectors["set_channel_uri_v2"]
    seeds["set_push_accounts_v2_two_cap512"] = b"\x83" + vectors["set_push_accounts_v2_two"]
    # A session's requests pipelined, with CRLF after each NUL.
    seeds["pipelined_three_generations"] = b"\x00" + b"\r\n".join(
        vectors[n] for n in ("set_channel_uri_v1", "set_push_accounts_v1_bare_jid",
                             "set_push_accounts_v1_account_id", "request_test_push_v2")
    )
    # Tools rather than clients: a BOM, compact JSON, EOF instead of the NUL, the alias.
    seeds["bom_compact"] = b"\x00\xef\xbb\xbf" + json.dumps(
        {"version": 2, "action": "set_channel_uri", "device_id": DEVICE, "channel_uri": URI},
        separators=(",", ":")).encode() + b"\0"
    seeds["eof_without_nul"] = b"\x00" + vectors["request_test_push_v2"][:-1]
    seeds["set_accounts_alias"] = b"\x00" + json.dumps(
        {"version": 2, "action": "set_accounts", "device_id": DEVICE,
         "accounts": [{"account_id": A1}]}).encode() + b"\0"
    # Rejections the decoder names: wrong version, mixed forms, unknown action, not JSON.
    seeds["version_3"] = b"\x00" + vectors["request_test_push_v2"].replace(b": 2,", b": 3,")
    seeds["mixed_forms"] = b"\x00" + json.dumps(
        {"version": 1, "action": "set_push_accounts", "device_id": DEVICE,
         "accounts": [{"account_id": A1}, {"bare_jid": "a@b.example"}]}).encode() + b"\0"
    seeds["unknown_action"] = b"\x00" + vectors["request_test_push_v2"].replace(
        b"request_test_push", b"register_push")
    seeds["not_json"] = b"\x00{\"version\": 2,\0\0 [1]\0"
    return seeds


STREAM_NS = "http://etherx.jabber.org/streams"
COMPONENT_HEAD = (
    "<?xml version='1.0'?><stream:stream xmlns:stream='" + STREAM_NS + "' "
    "xml:lang='en' id='7a1c0b55-1ac2-4b83-9a5c-4f7c1d1c6d1b' from='push.localhost' "
    "xmlns='jabber:component:accept'>"
)
CLIENT_HEAD = (
    "<?xml version='1.0'?><stream:stream xmlns:stream='" + STREAM_NS + "' "
    "xml:lang='en' id='c2s-1' from='localhost' version='1.0' xmlns='jabber:client'>"
)

# xep0357-wns.md part C §4, verbatim.
PROSODY_PUBLISH = "<iq id='2858b90f13931609ec968e081b638bb21468fecbc21ef89a801d1365c01ee910' to='push.localhost' from='localhost' type='set'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='node-3c3799e23e1b'><item><notification xmlns='urn:xmpp:push:0'><x xmlns='jabber:x:data' type='form'><field var='FORM_TYPE' type='hidden'><value>urn:xmpp:push:summary</value></field><field var='message-count' type='text-single'><value>1</value></field><field var='pending-subscription-count' type='text-single'/><field var='last-message-sender' type='jid-single'/><field var='last-message-body' type='text-single'><value>New Message!</value></field></x></notification></item></publish><publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field><field var='secret'><value>secret-6b347accefdf</value></field></x></publish-options></pubsub></iq>"
EJABBERD_PUBLISH = "<iq to='push.localhost' from='localhost' type='set' id='rr-1795635726504-5117491995268745708-gT7rdqkOm/sJ23BsTHE/pAv2eGo=-34317716'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='node-7a60034e6b10'><item><notification xmlns='urn:xmpp:push:0'><x type='submit' xmlns='jabber:x:data'><field var='FORM_TYPE' type='hidden'><value>urn:xmpp:push:summary</value></field><field var='last-message-body' type='text-single' label='The body text of the last received message'><value>New message</value></field></x></notification></item></publish><publish-options><x type='submit' xmlns='jabber:x:data'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field><field var='secret'><value>secret-5a8fe426d47c</value></field></x></publish-options></pubsub></iq>"
PROSODY_EVENT = "<message to='push@localhost' from='push@localhost' id='ZlpnyA5Tub43Bqq9PHHGkqWj' type='headline'><event xmlns='http://jabber.org/protocol/pubsub#event'><items node='node-7e3da6fdad3e'><item id='076919e7-776c-443e-909c-0e244803e870' publisher='localhost'><notification xmlns='urn:xmpp:push:0'><x xmlns='jabber:x:data' type='form'><field var='FORM_TYPE' type='hidden'><value>urn:xmpp:push:summary</value></field><field var='message-count' type='text-single'><value>1</value></field><field var='pending-subscription-count' type='text-single'/><field var='last-message-sender' type='jid-single'/><field var='last-message-body' type='text-single'><value>New Message!</value></field></x></notification></item></items></event></message>"
APP_ERROR_REPLY = "<iq id=\"542739a6\" type=\"error\" to=\"localhost\" from=\"push.localhost\"><error type=\"cancel\"><item-not-found xmlns=\"urn:ietf:params:xml:ns:xmpp-stanzas\" /></error></iq>"
PEP_PUBLISH_RESULT = "<iq type=\"result\" id=\"pep-1\" from=\"push@localhost\" to=\"push@localhost/push\"><pubsub xmlns=\"http://jabber.org/protocol/pubsub\"><publish node=\"node-6064d4e296a1\"><item id=\"bb3ded2c-0000\"/></publish></pubsub></iq>"
PEP_ERROR = "<iq type=\"error\" id=\"pep-2\" from=\"push@localhost\"><error type=\"cancel\"><conflict xmlns=\"urn:ietf:params:xml:ns:xmpp-stanzas\"/><precondition-not-met xmlns=\"http://jabber.org/protocol/pubsub#errors\"/></error></iq>"
# Without publish-options (the user enabled push without a form, scenario A3).
PROSODY_PUBLISH_NO_OPTIONS = PROSODY_PUBLISH.split("<publish-options>")[0] + "</pubsub></iq>"
DISCO = "<iq type='get' id='disco-1' from='localhost' to='push.localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq><iq type='get' id='disco-2' from='localhost' to='push.localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>"
PING = "<iq type='get' id='ping-1' from='localhost' to='push.localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
# Not captured: references and whitespace in the addressing, which our replies must
# carry back unchanged (a literal tab in an attribute reads as a space, `&#9;` as a tab).
REFS = "<iq type='get' id='a&#9;b&#xA;c&#13;&amp;&apos;&lt;' from='local\thost' to='push.localhost'><ping xmlns='urn:xmpp:ping'/></iq>"


def stanzas():
    seeds = {}
    # Mode byte: bit 0 = client namespace, bits 1..7 = bytes per read (0 = 16 KiB).
    seeds["prosody_component_publish"] = b"\x00" + (COMPONENT_HEAD + "<handshake/>" + PROSODY_PUBLISH).encode()
    seeds["ejabberd_component_publish"] = b"\x00" + (COMPONENT_HEAD + "<handshake/>" + EJABBERD_PUBLISH).encode()
    # Publishes read into their fields (after the first stanza): both servers', and
    # one with repeated fields, values and secrets, whitespace and an unknown child.
    variant = (
        "<iq type='set' id='v1' from='localhost' to='push.localhost'>\n <pubsub xmlns='http://jabber.org/protocol/pubsub'>"
        "<publish-options><x xmlns='jabber:x:data'><field var='secret'/><field var='secret'><value>s&amp;1</value></field>"
        "<field var='secret'><value>s2</value></field></x></publish-options><other/>"
        "<publish node='0123456789abcdef0123456789abcdef'><item><notification xmlns='urn:xmpp:push:0'><x xmlns='urn:other'/>"
        "<x xmlns='jabber:x:data'><field var='message-count'><value>2</value></field><field var='message-count'><value> 3 </value><value>4</value></field>"
        "<field var='last-message-body'><value>a<b/>c &#x41;</value></field><field var='last-message-sender'><value></value></field>"
        "</x></notification></item></publish></pubsub>\n</iq>"
    )
    seeds["component_publishes_into_fields"] = b"\x00" + (
        COMPONENT_HEAD + "<handshake/>" + PROSODY_PUBLISH + EJABBERD_PUBLISH + variant + "</stream:stream>"
    ).encode()
    seeds["prosody_publish_cut5"] = b"\x0a" + (COMPONENT_HEAD + PROSODY_PUBLISH_NO_OPTIONS + "</stream:stream>").encode()
    seeds["prosody_client_event"] = b"\x01" + (CLIENT_HEAD + PROSODY_EVENT + "\n" + PROSODY_EVENT + PEP_PUBLISH_RESULT + PEP_ERROR).encode()
    seeds["component_disco_ping_error"] = b"\x00" + (COMPONENT_HEAD + DISCO + " " + PING + APP_ERROR_REPLY + "</stream:stream>").encode()
    seeds["component_references"] = b"\x00" + (COMPONENT_HEAD + REFS).encode()
    seeds["client_features"] = b"\x03" + (CLIENT_HEAD + "<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>" + PING).encode()
    return seeds


def configs():
    example = json.loads((ROOT / "configuration.json.example").read_text())
    seeds = {"example": (ROOT / "configuration.json.example").read_bytes()}

    # Component mode only, plain TCP (what the README's demo runs).
    comp = json.loads(json.dumps(example))
    comp["xmpp"].pop("password", None)
    del comp["tcp"]["tls"]
    seeds["component_plain_tcp"] = json.dumps(comp, indent=2).encode()

    # Client mode: password, no component, CA file, explicit host.
    client = json.loads(json.dumps(example))
    del client["xmpp"]["component"]
    del client["tcp"]["tls"]
    client["xmpp"].update({"host": "127.0.0.1", "port": 5222, "resource": "push", "ca_file": "server.crt"})
    client["wns"].update({"token_url": "https://127.0.0.1:8443/token", "ca_file": "server.crt",
                          "workers": 2, "cache_policy": None, "ttl_s": None, "priority": 4})
    seeds["client_mode"] = json.dumps(client, indent=2).encode()

    # TLS with the pair the target writes into its scratch directory, in the seed's
    # C++ spelling.
    tls = json.loads(json.dumps(comp))
    tls["tcp"]["tls"] = {"serverCertPath": "server.crt", "serverKeyPath": "server.key"}
    tls["db"]["synchronous"] = "normal"
    tls["log"] = {"level": "debug", "file": "push.log"}
    seeds["tls_seed_aliases"] = json.dumps(tls).encode()

    seeds["minimal"] = b'{"xmpp":{"bare_jid":"push@example.org","component":{"jid":"push.example.org","secret":"s"}}}'
    seeds["wrong_types"] = b'{"tcp":"127.0.0.1:5000","db":{"path":7},"xmpp":{"bare_jid":"push@example.org"}}'
    seeds["unknown_key"] = b'{"xmpp":{"bare_jid":"push@example.org","pasword":"x"}}'
    return seeds


NGINX_200 = (
    "HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 30 Nov 2026 07:20:34 GMT\r\n"
    "Content-Type: text/plain\r\nContent-Length: 0\r\nConnection: keep-alive\r\n"
    "X-WNS-NotificationStatus: received\r\nX-WNS-DeviceConnectionStatus: connected\r\n"
    "X-WNS-Msg-ID: 1A2B3C4D5E6F7081\r\n\r\n"
)
NGINX_410_BODY = (
    "<html>\r\n<head><title>410 Gone</title></head>\r\n<body>\r\n"
    "<center><h1>410 Gone</h1></center>\r\n<hr><center>nginx/1.22.1</center>\r\n"
    "</body>\r\n</html>\r\n"
)
NGINX_410 = (
    "HTTP/1.1 410 Gone\r\nServer: nginx/1.22.1\r\nDate: Mon, 30 Nov 2026 07:20:34 GMT\r\n"
    f"Content-Type: text/html\r\nContent-Length: {len(NGINX_410_BODY)}\r\n"
    "Connection: keep-alive\r\nX-WNS-Error-Description: The channel expired.\r\n\r\n"
    + NGINX_410_BODY
)
NGINX_CHUNKED = (
    "HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 30 Nov 2026 07:20:34 GMT\r\n"
    "Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
    "19\r\na chunked body from nginx\r\n0\r\n\r\n"
)
FAKE_WNS_406 = (
    "HTTP/1.1 406 Not Acceptable\r\nContent-Length: 0\r\nRetry-After: 7\r\n"
    "X-WNS-Debug-Trace: DB5SCH101\r\nMS-CV: fake.3\r\n\r\n"
)


def responses():
    # Mode byte: 0 = one read, n = n bytes per read.
    return {
        "nginx_200": b"\x00" + NGINX_200.encode(),
        "nginx_410_in_7_byte_reads": b"\x07" + NGINX_410.encode(),
        "nginx_chunked": b"\x00" + NGINX_CHUNKED.encode(),
        "fake_wns_406_bytewise": b"\x01" + FAKE_WNS_406.encode(),
        "continue_then_chunked_with_extensions_and_trailers": b"\x03" + (
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Service Unavailable\r\n"
            "Transfer-Encoding: chunked\r\nX-WNS-Status: dropped\r\n\r\n"
            "5;ext=1\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n"
        ).encode(),
        "http10_to_eof": b"\x00" + b"HTTP/1.0 410 Gone\r\nX-WNS-Error-Description: Domain Blocked\r\n\r\nDomain Blocked",
        "close_with_extra_bytes": b"\x00" + b"HTTP/1.1 200 OK\nConnection: close\nContent-Length: 2\n\nokHTTP/1.1",
    }


def write(target, seeds):
    d = FUZZ / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    for old in d.iterdir():
        old.unlink()
    for name, data in seeds.items():
        (d / name).write_bytes(data)
    print(f"{target}: {len(seeds)} seeds, {sum(map(len, seeds.values()))} bytes")


if __name__ == "__main__":
    os.umask(0o022)
    write("registration_codec", registration())
    write("stanza_reader", stanzas())
    write("config_loader", configs())
    write("wns_response", responses())
