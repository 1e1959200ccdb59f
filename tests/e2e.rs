//! The whole path against real servers: a UWPX device registers over TCP with v2 client
//! bytes, its user enables push on Prosody 0.12 / ejabberd 23.01 (slixmpp), goes away,
//! another user writes, the server publishes to us as an XEP-0114 component, the fake
//! WNS receives the raw notification, and the server gets the IQ reply it should.
//!
//! These need the packages and the venv from scripts/e2e/setup.sh, which
//! scripts/test.sh runs first; there they run with `--run-ignored all`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::util::fake_wns::Reply;
use crate::util::real_xmpp::{self, COMPONENT_JID, COMPONENT_SECRET, Dns, Kind, RealServer};
use crate::util::*;

const USERS: &[&str] = &[
    "bob", "alice1", "alice2", "alice3", "alice4", "alice5", "alice6",
];

struct World {
    xmpp: RealServer,
    wns: WnsFixture,
    server: Server,
}

fn world(kind: Kind) -> World {
    assert!(
        real_xmpp::available(kind),
        "{kind:?} is not installed: run scripts/e2e/setup.sh"
    );
    let xmpp = RealServer::start(kind, USERS);
    let wns = WnsFixture::start();
    let config = wns.config(json!({
        "xmpp": {"component": {"jid": COMPONENT_JID, "secret": COMPONENT_SECRET,
                               "host": "127.0.0.1", "port": xmpp.component_port}},
        "wns": {"deadline_ms": 4000, "max_attempts": 2},
        "push": {"min_interval_ms": 0},
    }));
    let server = Server::start(Setup {
        extra: config,
        ..Setup::default()
    });
    wait_log(&server, "xmpp: connected as push.localhost", 1);
    World { xmpp, wns, server }
}

fn wait_log(server: &Server, needle: &str, times: usize) {
    let end = Instant::now() + Duration::from_secs(60);
    while server.log_text().matches(needle).count() < times {
        assert!(
            Instant::now() < end,
            "log never showed {needle:?} {times}x:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Registers `device` for `user` the way a client of `version` does; returns
/// (account_id, node, secret, push jid).
fn register(
    w: &World,
    version: u8,
    device: &str,
    user: &str,
    channel: &str,
) -> (String, String, String, String) {
    let c = w.server.client();
    let account_id = hex::encode(Sha256::digest(format!("{device}{user}@localhost")));
    assert_eq!(
        c.send(&newtonsoft(&set_channel(
            version,
            device,
            &w.wns.fake.channel_uri(channel)
        )))["status"],
        1
    );
    let answer = c.send(&newtonsoft(&set_accounts(
        version,
        device,
        json!([{"account_id": account_id}]),
    )));
    assert_eq!(answer["status"], 1, "{answer}");
    let a = &answer["accounts"][0];
    assert_eq!(a["account_id"], account_id.as_str());
    (
        account_id,
        a["node"].as_str().unwrap().into(),
        a["secret"].as_str().unwrap().into(),
        answer["push_bare_jid"].as_str().unwrap().into(),
    )
}

fn one_push(w: &World, channel: &str, n: usize) -> Value {
    let got = w.wns.fake.wait_for(channel, n, Duration::from_secs(30));
    assert!(
        got.len() >= n,
        "{channel}: {} pushes, wanted {n}\nserver log:\n{}\nxmpp log tail:\n{}",
        got.len(),
        w.server.log_text(),
        tail(&w.xmpp.log())
    );
    let r = &got[n - 1];
    assert_eq!(r.header("X-WNS-Type"), Some("wns/raw"));
    assert_eq!(r.header("Content-Type"), Some("application/octet-stream"));
    assert!(
        r.header("Authorization")
            .unwrap()
            .starts_with("Bearer fake-token-")
    );
    serde_json::from_slice(&r.body)
        .unwrap_or(Value::String(String::from_utf8_lossy(&r.body).into()))
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn device_present(w: &World, device: &str) -> bool {
    w.server
        .dump()
        .iter()
        .any(|r| r.starts_with(&format!("{device} ")))
}

fn full_path(kind: Kind) {
    let mut w = world(kind);

    // 1. v2 client, user offline: the v2 JSON payload for the right account_id.
    let (id1, node, secret, jid) = register(&w, 2, "e1", "alice1", "a1");
    assert_eq!(jid, COMPONENT_JID);
    let enabled = w
        .xmpp
        .enable_push("alice1", &jid, &node, &secret, "offline");
    assert!(
        enabled.contains("type=\"result\""),
        "enable failed: {enabled}"
    );
    w.xmpp.message("alice1");
    let p = one_push(&w, "a1", 1);
    assert_eq!(p["account_id"], id1.as_str());
    assert_eq!(p["action"], "push");
    assert_eq!(p["version"], 2);
    assert!(
        p["message_count"].is_u64() && p["pending_subscription_count"].is_u64(),
        "{p}"
    );

    // 2. Prosody only: the XEP-0198 hibernation case.
    if kind == Kind::Prosody {
        let (id2, node, secret, jid) = register(&w, 2, "e2", "alice2", "a2");
        w.xmpp
            .enable_push("alice2", &jid, &node, &secret, "hibernate");
        w.xmpp.message("alice2");
        assert_eq!(one_push(&w, "a2", 1)["account_id"], id2.as_str());
    }

    // 3. A v1 account_id client gets the XML payload.
    let (id3, node, secret, jid) = register(&w, 1, "e3", "alice3", "a3");
    w.xmpp
        .enable_push("alice3", &jid, &node, &secret, "offline");
    w.xmpp.message("alice3");
    let xml = one_push(&w, "a3", 1);
    let xml = xml.as_str().unwrap();
    assert!(
        xml.starts_with("<notification xmlns=\"urn:xmpp:push:0\">"),
        "{xml}"
    );
    assert!(
        xml.ends_with(&format!("<account id=\"{id3}\"/></notification>")),
        "{xml}"
    );

    // 4. A 410 from WNS: we answer item-not-found and the device is gone.
    let (_, node, secret, jid) = register(&w, 2, "e4", "alice4", "a4");
    w.xmpp
        .enable_push("alice4", &jid, &node, &secret, "offline");
    w.wns.fake.script("a4", vec![Reply::status(410)]);
    w.xmpp.message("alice4");
    one_push(&w, "a4", 1);
    let end = Instant::now() + Duration::from_secs(10);
    while device_present(&w, "e4") {
        assert!(Instant::now() < end, "device not removed after 410");
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_log(&w.server, "not delivered: Wns(ChannelGone)", 1);

    // 5. A 503: we answer wait, and the user's registration survives: the next
    //    message is pushed again.
    let (id5, node, secret, jid) = register(&w, 2, "e5", "alice5", "a5");
    w.xmpp
        .enable_push("alice5", &jid, &node, &secret, "offline");
    w.wns
        .fake
        .script("a5", vec![Reply::status(503).header("Retry-After", "1"); 2]);
    w.xmpp.message("alice5");
    one_push(&w, "a5", 2);
    wait_log(&w.server, "not delivered: Wns(Transient", 1);
    std::thread::sleep(Duration::from_millis(1200));
    w.xmpp.message("alice5");
    assert_eq!(one_push(&w, "a5", 3)["account_id"], id5.as_str());
    assert!(device_present(&w, "e5"));

    // 6. A wrong secret: forbidden, nothing sent to WNS.
    let (_, node, _, jid) = register(&w, 2, "e6", "alice6", "a6");
    w.xmpp
        .enable_push("alice6", &jid, &node, "not-the-secret", "offline");
    w.xmpp.message("alice6");
    wait_log(&w.server, "not delivered: BadSecret", 1);
    assert!(w.wns.fake.channel_requests("a6").is_empty());

    // 7. The XMPP server restarts: we reconnect, and the next push arrives.
    w.xmpp.restart();
    wait_log(&w.server, "xmpp: connected as push.localhost", 2);
    w.xmpp.message("alice1");
    assert_eq!(one_push(&w, "a1", 2)["account_id"], id1.as_str());

    // Every reply we sent was in the stream's namespace: the servers logged no
    // untyped errors (Prosody's "nil" error type shows as "<nil:").
    assert!(
        !w.xmpp.log().contains("Got error <nil"),
        "an error reply had no type"
    );
}

#[test]
#[ignore = "needs Prosody from scripts/e2e/setup.sh; scripts/test.sh runs it"]
fn prosody_end_to_end() {
    full_path(Kind::Prosody);
}

#[test]
#[ignore = "needs ejabberd from scripts/e2e/setup.sh; scripts/test.sh runs it"]
fn ejabberd_end_to_end() {
    full_path(Kind::Ejabberd);
}

/// Client mode, the real layout: users on `localhost`, the push account
/// push@pushsrv.localhost on a second stock Prosody (returned too), linked over s2s with
/// a test CA; our server connected to it.
fn client_world() -> (World, RealServer) {
    assert!(real_xmpp::available(Kind::Prosody));
    let users = RealServer::start(Kind::Prosody, USERS);
    let pushsrv = RealServer::start_pushsrv(&users);
    let wns = WnsFixture::start();
    let config = wns.config(json!({
        "xmpp": {"bare_jid": "push@pushsrv.localhost", "password": "pushpw",
                 "host": "127.0.0.1", "port": pushsrv.c2s_port,
                 "ca_file": users.dir.path().join("certs/ca.crt").to_str().unwrap()},
        "push": {"min_interval_ms": 0},
    }));
    let server = Server::start(Setup {
        extra: config,
        ..Setup::default()
    });
    wait_log(&server, "xmpp: connected as push@pushsrv.localhost/push", 1);
    let w = World {
        xmpp: users,
        wns,
        server,
    };
    (w, pushsrv)
}

/// Client mode across two Prosody servers: nodes created and deleted, events pushed,
/// forged events ignored, reconnect and reconcile.
#[test]
#[ignore = "needs Prosody from scripts/e2e/setup.sh; scripts/test.sh runs it"]
fn client_mode_across_two_prosody_servers() {
    let (w, mut pushsrv) = client_world();

    // Register: a PEP node is created for the account, and push_bare_jid is the account.
    let (id1, node1, secret1, jid) = register(&w, 2, "f1", "alice1", "c1");
    assert_eq!(jid, "push@pushsrv.localhost");
    assert!(pushsrv.pep_nodes().contains(&node1), "node not created");
    let enabled = w
        .xmpp
        .enable_push("alice1", &jid, &node1, &secret1, "offline");
    assert!(
        enabled.contains("type=\"result\""),
        "enable failed: {enabled}"
    );
    w.xmpp.message("alice1");
    let p = one_push(&w, "c1", 1);
    assert_eq!(p["account_id"], id1.as_str());
    assert_eq!(p["action"], "push");

    // A removed account's node is deleted from the server.
    let (_, node2, _, _) = register(&w, 2, "f2", "alice2", "c2");
    assert!(pushsrv.pep_nodes().contains(&node2));
    let c = w.server.client();
    assert_eq!(
        c.send(&newtonsoft(&set_accounts(2, "f2", json!([]))))["status"],
        1
    );
    let end = Instant::now() + Duration::from_secs(20);
    while pushsrv.pep_nodes().contains(&node2) {
        assert!(
            Instant::now() < end,
            "removed account's node still on the server"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // An event from anyone but the push account itself is ignored.
    w.xmpp.python(
        "forge_event.py",
        &["--to", "push@pushsrv.localhost", "--node", &node1],
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        w.wns.fake.channel_requests("c1").len(),
        1,
        "a forged event was pushed"
    );

    // The push account's server restarts: we reconnect, reconcile, and the next push
    // still arrives.
    pushsrv.restart();
    wait_log(
        &w.server,
        "xmpp: connected as push@pushsrv.localhost/push",
        2,
    );
    wait_log(&w.server, "xmpp: reconciled PEP nodes", 2);
    w.xmpp.message("alice1");
    assert_eq!(one_push(&w, "c1", 2)["account_id"], id1.as_str());
}

/// Client mode with the push account on the users' own Prosody, which needs mod_pep's
/// `is_item_stanza` patch (the README's known limit).
#[test]
#[ignore = "needs Prosody from scripts/e2e/setup.sh; scripts/test.sh runs it"]
fn client_mode_on_the_same_host_with_patched_mod_pep() {
    assert!(real_xmpp::available(Kind::Prosody));
    let mut users: Vec<&str> = USERS.to_vec();
    users.push("push");
    let mut xmpp = RealServer::start(Kind::Prosody, &users);
    xmpp.patch_pep();
    let wns = WnsFixture::start();
    let config = wns.config(json!({
        "xmpp": {"bare_jid": "push@localhost", "password": "pushpw",
                 "host": "127.0.0.1", "port": xmpp.c2s_port,
                 "ca_file": xmpp.dir.path().join("certs/ca.crt").to_str().unwrap()},
        "push": {"min_interval_ms": 0},
    }));
    let server = Server::start(Setup {
        extra: config,
        ..Setup::default()
    });
    wait_log(&server, "xmpp: connected as push@localhost/push", 1);
    let w = World { xmpp, wns, server };
    let (id, node, secret, jid) = register(&w, 2, "f3", "alice3", "c3");
    assert_eq!(jid, "push@localhost");
    w.xmpp
        .enable_push("alice3", &jid, &node, &secret, "offline");
    w.xmpp.message("alice3");
    assert_eq!(one_push(&w, "c3", 1)["account_id"], id.as_str());
}

/// Issue 10 item 10: a push whose event reaches us while the PEP nodes are reconciled
/// after a reconnect is held and delivered, not dropped. Stale nodes on the push account
/// (unknown to the database, so the reconciliation deletes them one by one) make the
/// reconciliation last seconds; the message is sent as soon as it starts, and the log
/// must show that the event was indeed held during it.
#[test]
#[ignore = "needs Prosody from scripts/e2e/setup.sh; scripts/test.sh runs it"]
fn client_mode_keeps_pushes_that_arrive_during_the_reconciliation() {
    let (w, mut pushsrv) = client_world();
    let (id1, node1, secret1, jid) = register(&w, 2, "f7", "alice1", "d1");
    let enabled = w
        .xmpp
        .enable_push("alice1", &jid, &node1, &secret1, "offline");
    assert!(enabled.contains("type=\"result\""), "{enabled}");
    w.xmpp.message("alice1");
    assert_eq!(one_push(&w, "d1", 1)["account_id"], id1.as_str());

    let made = pushsrv.make_stale_nodes(STALE_NODES);
    eprintln!("{made}");
    pushsrv.restart();
    wait_log(&w.server, "xmpp: reconciling PEP nodes", 2);
    let started = Instant::now();
    w.xmpp.message("alice1");
    eprintln!(
        "message sent {:?} after the reconciliation started",
        started.elapsed()
    );
    assert_eq!(one_push(&w, "d1", 2)["account_id"], id1.as_str());
    wait_log(&w.server, "xmpp: reconciled PEP nodes", 2);
    eprintln!("reconciliation over after {:?}", started.elapsed());
    let log = w.server.log_text();
    let line = log
        .lines()
        .filter(|l| l.contains("xmpp: reconciled PEP nodes"))
        .nth(1)
        .unwrap_or_default();
    assert!(
        line.contains(&format!("{STALE_NODES} deleted")),
        "the stale nodes were not deleted: {line}"
    );
    let held: usize = line
        .rsplit(", ")
        .next()
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        held >= 1,
        "the event did not arrive during the reconciliation (window too short?): {line}"
    );
}

/// Enough stale nodes that deleting them takes seconds on Prosody's file storage.
const STALE_NODES: usize = 800;

/// Client mode without `xmpp.host`: our server, push@localhost, with a DNS server
/// serving `records` (service, port, priority; all with target `localhost`) and the
/// users' Prosody (returned so it outlives the test body).
fn srv_world(
    records: impl Fn(&RealServer) -> Vec<(&'static str, u16, u16)>,
) -> (RealServer, Dns, Server) {
    assert!(real_xmpp::available(Kind::Prosody));
    let mut users: Vec<&str> = USERS.to_vec();
    users.push("push");
    let xmpp = RealServer::start(Kind::Prosody, &users);
    let srv: Vec<real_xmpp::SrvRecord> = records(&xmpp)
        .into_iter()
        .map(|(service, port, prio)| (service, "localhost", port, prio))
        .collect();
    let dns = Dns::start(&srv);
    let server = Server::start_with_env(
        Setup {
            extra: json!({
                "xmpp": {"bare_jid": "push@localhost", "password": "pushpw",
                         "ca_file": xmpp.dir.path().join("certs/ca.crt").to_str().unwrap()},
            }),
            ..Setup::default()
        },
        vec![("UWPX_TEST_NAMESERVER".into(), dns.addr.clone())],
    );
    (xmpp, dns, server)
}

/// Issue 10 item 19: without `xmpp.host`, client mode finds its server through the SRV
/// record `_xmpp-client._tcp.<domain>` (RFC 6120 §3.2.1), here served by a dnsmasq on
/// 127.0.0.1 and pointing at Prosody's client port; the certificate is verified
/// against the JID's domain (the login would fail otherwise).
#[test]
#[ignore = "needs Prosody and dnsmasq from scripts/e2e/setup.sh; scripts/test.sh runs it"]
fn client_mode_finds_its_server_by_dns_srv() {
    let (xmpp, _dns, server) = srv_world(|x| vec![(XMPP_CLIENT, x.c2s_port, 10)]);
    wait_log(&server, "xmpp: connected as push@localhost/push", 1);
    let log = server.log_text();
    assert!(
        log.contains(&format!(
            "xmpp: connected to localhost:{} (StartTls)",
            xmpp.c2s_port
        )),
        "{log}"
    );
}

/// Issue 10 item 19: every SRV target is tried in priority order; the first one
/// refuses the connection, the second is used.
#[test]
#[ignore = "needs Prosody and dnsmasq from scripts/e2e/setup.sh; scripts/test.sh runs it"]
fn client_mode_tries_the_next_srv_target_when_one_refuses() {
    let closed = real_xmpp::closed_port();
    let (xmpp, _dns, server) =
        srv_world(|x| vec![(XMPP_CLIENT, closed, 10), (XMPP_CLIENT, x.c2s_port, 20)]);
    wait_log(&server, "xmpp: connected as push@localhost/push", 1);
    let log = server.log_text();
    assert!(
        log.contains(&format!("xmpp: cannot connect to localhost:{closed}")),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "xmpp: connected to localhost:{} (StartTls)",
            xmpp.c2s_port
        )),
        "{log}"
    );
}

const XMPP_CLIENT: &str = "_xmpp-client._tcp.localhost";

/// XEP-0368: an `_xmpps-client._tcp` record of better priority than the STARTTLS one
/// is used, with TLS from the first byte (verified against the JID's domain).
#[test]
#[ignore = "needs Prosody and dnsmasq from scripts/e2e/setup.sh; scripts/test.sh runs it"]
fn client_mode_uses_direct_tls_from_an_xmpps_srv_record() {
    let (xmpp, _dns, server) = srv_world(|x| {
        vec![
            ("_xmpps-client._tcp.localhost", x.c2s_tls_port, 5),
            (XMPP_CLIENT, x.c2s_port, 10),
        ]
    });
    wait_log(&server, "xmpp: connected as push@localhost/push", 1);
    let log = server.log_text();
    assert!(
        log.contains(&format!(
            "xmpp: connected to localhost:{} (DirectTls)",
            xmpp.c2s_tls_port
        )),
        "{log}"
    );
}
