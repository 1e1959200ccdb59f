//! The whole path against real servers: a UWPX device registers over TCP with v2 client
//! bytes, its user enables push on Prosody 0.12 / ejabberd 23.01 (slixmpp), goes away,
//! another user writes, the server publishes to us as an XEP-0114 component, the fake
//! WNS receives the raw notification, and the server gets the IQ reply it should.
//!
//! Several instances of the server on one PostgreSQL database (issue 12) run only in
//! the PostgreSQL pass (`UWPX_TEST_PG` set) and return early otherwise: three behind
//! ejabberd, which spreads the publishes over them, and two behind Prosody, where the
//! second stands by.
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
    let server = Server::start(Setup {
        extra: component_config(&xmpp, &wns, json!({})),
        ..Setup::default()
    });
    wait_log(&server, "xmpp: connected as push.localhost", 1);
    World { xmpp, wns, server }
}

/// The configuration of a server that connects to `xmpp` as our component and pushes
/// to the fake WNS, merged with `extra`.
fn component_config(xmpp: &RealServer, wns: &WnsFixture, extra: Value) -> Value {
    let mut config = wns.config(json!({
        "xmpp": {"component": {"jid": COMPONENT_JID, "secret": COMPONENT_SECRET,
                               "host": "127.0.0.1", "port": xmpp.component_port}},
        "wns": {"deadline_ms": 4000, "max_attempts": 2},
        "push": {"min_interval_ms": 0},
        "metrics": {"listen": "127.0.0.1:0"},
    }));
    merge(&mut config, &extra);
    config
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
    register_at(&w.server, &w.wns, version, device, user, channel)
}

/// [`register`] through one particular server (of several on one database).
fn register_at(
    server: &Server,
    wns: &WnsFixture,
    version: u8,
    device: &str,
    user: &str,
    channel: &str,
) -> (String, String, String, String) {
    let c = server.client();
    let account_id = hex::encode(Sha256::digest(format!("{device}{user}@localhost")));
    let answer = c.send(&newtonsoft(&set_channel(
        version,
        device,
        &wns.fake.channel_uri(channel),
    )));
    assert_eq!(answer["status"], 1, "{answer}");
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

    // The server's publishes were read straight into their fields (the XMPP thread's
    // quick path), not as XML trees: all of them here (7 from ejabberd, 8 or 9 from
    // Prosody), give or take one that arrived split between two reads.
    let without_tree = w.server.metric("uwpx_publishes_read_without_tree_total");
    assert!(
        without_tree >= 6.0,
        "{kind:?}: {without_tree} publishes read without a tree"
    );

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

/// `n` instances of the server on one fresh PostgreSQL database (from `UWPX_TEST_PG`),
/// all connecting to `xmpp` as the same component; started one after the other.
/// `None` when this run has no PostgreSQL.
fn instances(xmpp: &RealServer, wns: &WnsFixture, n: usize) -> Option<Vec<Server>> {
    let admin = db::pg_admin()?;
    let url = db::fresh_pg_database(&admin);
    let config = component_config(
        xmpp,
        wns,
        // Short pings, so that the answers to one instance's pings reach the others
        // during the test (ejabberd spreads them).
        json!({"db": {"url": url}, "xmpp": {"ping_interval_s": 5}}),
    );
    Some(
        (0..n)
            .map(|_| {
                Server::start(Setup {
                    extra: config.clone(),
                    ..Setup::default()
                })
            })
            .collect(),
    )
}

/// Pushes delivered by a server, from its log.
fn delivered(server: &Server) -> usize {
    server
        .log_text()
        .matches("push: from localhost Wns(Delivered)")
        .count()
}

/// Lines at warn or above about the XMPP link.
fn xmpp_warnings(server: &Server) -> Vec<String> {
    server
        .log_text()
        .lines()
        .filter(|l| l.contains("[WARN] xmpp:") || l.contains("[ERROR] xmpp:"))
        .map(str::to_owned)
        .collect()
}

/// Waits until `channel` got `n` pushes, then a little longer to see that no more come.
fn exactly(wns: &WnsFixture, channel: &str, n: usize, servers: &[&Server]) {
    let got = wns.fake.wait_for(channel, n, Duration::from_secs(60));
    let logs = || {
        servers
            .iter()
            .map(|s| s.log_text())
            .collect::<Vec<_>>()
            .join("\n----\n")
    };
    assert!(
        got.len() >= n,
        "{channel}: {} pushes, wanted {n}\n{}",
        got.len(),
        logs()
    );
    std::thread::sleep(Duration::from_millis(500));
    let got = wns.fake.channel_requests(channel).len();
    assert_eq!(got, n, "{channel}: a push arrived twice\n{}", logs());
}

/// ejabberd spreads the publishes for one component JID over 3 instances on one
/// database; every push arrives once, every instance serves, and one killed with
/// kill -9 leaves its registrations served by the other two.
#[test]
#[ignore = "needs ejabberd from scripts/e2e/setup.sh and PostgreSQL; scripts/test.sh runs it"]
fn ejabberd_spreads_publishes_over_three_instances_on_one_database() {
    assert!(real_xmpp::available(Kind::Ejabberd));
    if !on_postgres() {
        eprintln!("skipped: several instances need PostgreSQL (UWPX_TEST_PG)");
        return;
    }
    let xmpp = RealServer::start(Kind::Ejabberd, USERS);
    let wns = WnsFixture::start();
    let mut servers = instances(&xmpp, &wns, 3).unwrap();
    for s in &servers {
        wait_log(s, "xmpp: connected as push.localhost", 1);
    }
    // Six users, each registered through one of the three instances.
    let users: Vec<(&str, String)> = USERS[1..]
        .iter()
        .enumerate()
        .map(|(i, user)| {
            let channel = format!("m{i}");
            let (_, node, secret, jid) =
                register_at(&servers[i % 3], &wns, 2, &format!("b{i}"), user, &channel);
            let enabled = xmpp.enable_push(user, &jid, &node, &secret, "offline");
            assert!(enabled.contains("type=\"result\""), "{enabled}");
            (*user, channel)
        })
        .collect();

    // 30 messages: every push once, and every instance answered some publishes.
    for (user, _) in &users {
        xmpp.messages(user, 5);
    }
    let all: Vec<&Server> = servers.iter().collect();
    for (_, channel) in &users {
        exactly(&wns, channel, 5, &all);
    }
    let counts: Vec<usize> = servers.iter().map(delivered).collect();
    assert_eq!(counts.iter().sum::<usize>(), 30, "{counts:?}");
    assert!(
        counts.iter().all(|&c| c > 0),
        "an instance got no publish: {counts:?}"
    );

    // The first instance dies without a word; the users it registered (m0, m3) and all
    // others are served by the other two: 30 more messages, every push once.
    servers[0].kill9();
    for (user, _) in &users {
        xmpp.messages(user, 5);
    }
    let rest: Vec<&Server> = servers[1..].iter().collect();
    for (_, channel) in &users {
        exactly(&wns, channel, 10, &rest);
    }
    let after: Vec<usize> = servers[1..].iter().map(delivered).collect();
    assert_eq!(after.iter().sum::<usize>() - counts[1] - counts[2], 30);
    // The answers to each other's pings were ignored quietly: no instance lost its
    // stream or complained about the XMPP link.
    for s in &servers[1..] {
        assert_eq!(xmpp_warnings(s), Vec::<String>::new());
        assert_eq!(s.log_text().matches("xmpp: connected as").count(), 1);
    }
}

/// Prosody keeps one connection per component: the second instance stands by, and
/// takes over within 10 s when the first dies.
#[test]
#[ignore = "needs Prosody from scripts/e2e/setup.sh and PostgreSQL; scripts/test.sh runs it"]
fn prosody_second_instance_stands_by_and_takes_over_within_ten_seconds() {
    assert!(real_xmpp::available(Kind::Prosody));
    if !on_postgres() {
        eprintln!("skipped: several instances need PostgreSQL (UWPX_TEST_PG)");
        return;
    }
    let xmpp = RealServer::start(Kind::Prosody, USERS);
    let wns = WnsFixture::start();
    let admin = db::pg_admin().unwrap();
    let config = component_config(
        &xmpp,
        &wns,
        json!({"db": {"url": db::fresh_pg_database(&admin)}}),
    );
    let start = || {
        Server::start(Setup {
            extra: config.clone(),
            ..Setup::default()
        })
    };
    let mut active = start();
    wait_log(&active, "xmpp: connected as push.localhost", 1);
    let standby = start();
    let standing_by = "another instance holds the component";
    wait_log(&standby, standing_by, 1);

    // Registered through the standby, pushed through the active instance.
    let (id, node, secret, jid) = register_at(&standby, &wns, 2, "5b1", "alice1", "s1");
    let enabled = xmpp.enable_push("alice1", &jid, &node, &secret, "offline");
    assert!(enabled.contains("type=\"result\""), "{enabled}");
    xmpp.message("alice1");
    exactly(&wns, "s1", 1, &[&active, &standby]);
    assert_eq!(delivered(&active), 1);
    // It kept trying (every 3 s) and said so once.
    wait_log(&standby, "xmpp: connecting to", 3);
    let log = standby.log_text();
    assert_eq!(log.matches(standing_by).count(), 1, "{log}");
    assert!(!log.contains("xmpp: connected as"));

    let killed = Instant::now();
    active.kill9();
    let end = killed + Duration::from_secs(10);
    while !standby
        .log_text()
        .contains("xmpp: connected as push.localhost")
    {
        assert!(
            Instant::now() < end,
            "the standby did not take over within 10 s:\n{}",
            standby.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("standby took over after {:?}", killed.elapsed());
    xmpp.message("alice1");
    exactly(&wns, "s1", 2, &[&standby]);
    let p = &wns.fake.channel_requests("s1")[1];
    let p: Value = serde_json::from_slice(&p.body).unwrap();
    assert_eq!(p["account_id"], id.as_str());
    assert_eq!(delivered(&standby), 1);
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
