//! Several instances on one PostgreSQL database (issue 12), with a stand-in component
//! server per instance in the XMPP server's place: the rules real servers cannot
//! trigger on demand. Each test starts three real binaries on one fresh database; they
//! run in the PostgreSQL pass of scripts/test.sh and return at once in the SQLite pass.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::db::{fresh_pg_database, pg_admin};
use crate::util::fake_wns::Reply;
use crate::util::fake_xmpp::*;
use crate::util::*;

struct Instance {
    /// Kept for its listener: the server reconnects to it if the stream drops.
    _xmpp: FakeXmpp,
    server: Server,
    conn: XmppConn,
}

/// `n` instances on one fresh database, each with its own component stand-in; `None`
/// when this run has no PostgreSQL.
fn instances(n: usize, extra: Value) -> Option<(WnsFixture, Vec<Instance>)> {
    let url = fresh_pg_database(&pg_admin()?);
    let wns = WnsFixture::start();
    let started: Vec<(FakeXmpp, Server)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let (wns, extra, url) = (&wns, &extra, &url);
                s.spawn(move || {
                    let xmpp = FakeXmpp::start();
                    let mut config = wns.config(json!({
                        "xmpp": {"component": {"jid": COMPONENT_JID, "secret": COMPONENT_SECRET,
                                               "host": "127.0.0.1", "port": xmpp.port}},
                    }));
                    merge(&mut config, extra);
                    merge(&mut config, &json!({"db": {"url": url}}));
                    let server = Server::start(Setup {
                        extra: config,
                        ..Setup::default()
                    });
                    (xmpp, server)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let all = started
        .into_iter()
        .map(|(xmpp, server)| {
            let conn = xmpp.accept(Duration::from_secs(10));
            Instance {
                _xmpp: xmpp,
                server,
                conn,
            }
        })
        .collect();
    Some((wns, all))
}

/// Registers `device` through `i` on channel `name`: (node, secret).
fn register(i: &Instance, wns: &WnsFixture, device: &str, name: &str) -> (String, String) {
    let c = i.server.client();
    let answer = c.send_json(&set_channel(2, device, &wns.fake.channel_uri(name)));
    assert_eq!(answer["status"], 1, "{answer}");
    let answer = c.send_json(&set_accounts(2, device, json!([{"account_id": "a"}])));
    let a = &answer["accounts"][0];
    (
        a["node"].as_str().unwrap().into(),
        a["secret"].as_str().unwrap().into(),
    )
}

/// Publishes through instance `i`'s component connection; the reply's verdict.
fn publish(i: &mut Instance, id: &str, node: &str, secret: &str) -> String {
    i.conn
        .send(&prosody_publish(id, "localhost", node, Some(secret), 1));
    verdict(&i.conn.reply_to(id))
}

#[test]
fn every_instance_serves_what_any_instance_registered_at_once() {
    let Some((wns, mut all)) = instances(3, json!({"push": {"min_interval_ms": 0}})) else {
        return;
    };
    let (node, secret) = register(&all[0], &wns, "aa01", "one");
    assert_eq!(publish(&mut all[1], "p1", &node, &secret), "result");
    assert_eq!(wns.fake.channel_requests("one").len(), 1);
    // A changed channel, registered on C, is used by A at once.
    let c = all[2].server.client();
    let moved = c.send_json(&set_channel(2, "aa01", &wns.fake.channel_uri("two")));
    assert_eq!(moved["status"], 1);
    assert_eq!(publish(&mut all[0], "p2", &node, &secret), "result");
    assert_eq!(wns.fake.channel_requests("two").len(), 1);
    // An account removed on B is unknown to C at once.
    let b = all[1].server.client();
    assert_eq!(
        b.send_json(&set_accounts(2, "aa01", json!([])))["status"],
        1
    );
    assert_eq!(
        publish(&mut all[2], "p3", &node, &secret),
        "cancel/item-not-found"
    );
    // A device deleted after a 410 on A is gone for B.
    let (node, secret) = register(&all[2], &wns, "aa02", "dead");
    wns.fake.script("dead", vec![Reply::status(410)]);
    assert_eq!(
        publish(&mut all[0], "p4", &node, &secret),
        "cancel/item-not-found"
    );
    assert_eq!(
        publish(&mut all[1], "p5", &node, &secret),
        "cancel/item-not-found"
    );
    assert_eq!(wns.fake.channel_requests("dead").len(), 1);
    // remove-device (an admin command against the same database) is honoured by all.
    let (node, secret) = register(&all[1], &wns, "aa03", "three");
    let out = std::process::Command::new(binary())
        .args(["remove-device", "aa03", "--config"])
        .arg(&all[0].server.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (k, i) in all.iter_mut().enumerate() {
        assert_eq!(
            publish(i, &format!("p6{k}"), &node, &secret),
            "cancel/item-not-found"
        );
    }
}

#[test]
fn coalescing_holds_per_node_across_instances() {
    let Some((wns, mut all)) = instances(3, json!({"push": {"min_interval_ms": 2000}})) else {
        return;
    };
    let (node, secret) = register(&all[0], &wns, "bb01", "burst");
    let start = Instant::now();
    for k in 0..9 {
        let i = &mut all[k % 3];
        assert_eq!(publish(i, &format!("b{k}"), &node, &secret), "result");
    }
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "the burst must fit in one window"
    );
    assert_eq!(
        wns.fake.channel_requests("burst").len(),
        1,
        "one push at once for the burst on three instances"
    );
    let got = wns.fake.wait_for("burst", 2, Duration::from_secs(6));
    assert_eq!(got.len(), 2, "one trailing push");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        wns.fake.channel_requests("burst").len(),
        2,
        "and no more, from any instance"
    );
}

#[test]
fn a_dead_channel_on_one_instance_does_not_delete_a_channel_renewed_on_another() {
    let Some((wns, mut all)) = instances(3, json!({"push": {"min_interval_ms": 0}})) else {
        return;
    };
    let (node, secret) = register(&all[0], &wns, "cc01", "old");
    wns.fake.script(
        "old",
        vec![Reply::status(410).delay(Duration::from_millis(800))],
    );
    all[0]
        .conn
        .send(&prosody_publish("g1", "localhost", &node, Some(&secret), 1));
    // While WNS takes its time on A (the request has arrived, the 410 is 800 ms
    // away), the device renews its channel on B.
    assert_eq!(
        wns.fake.wait_for("old", 1, Duration::from_secs(10)).len(),
        1
    );
    let b = all[1].server.client();
    let renewed = b.send_json(&set_channel(2, "cc01", &wns.fake.channel_uri("new")));
    assert_eq!(renewed["status"], 1);
    assert_eq!(
        verdict(&all[0].conn.reply_to("g1")),
        "cancel/item-not-found"
    );
    let dump = all[2].server.dump();
    assert!(
        dump.iter()
            .any(|l| l.starts_with("cc01 ") && l.contains("/new")),
        "the renewed device is kept: {dump:?}"
    );
    assert_eq!(publish(&mut all[2], "g2", &node, &secret), "result");
    assert_eq!(wns.fake.channel_requests("new").len(), 1);
}

#[test]
fn instances_share_one_wns_token_at_start_and_after_a_401() {
    let Some((wns, mut all)) = instances(3, json!({"push": {"min_interval_ms": 0}})) else {
        return;
    };
    // One instance fetches; the others either wait for its token or, when
    // they start after it has been saved, read it from the database at start.
    let sources: Vec<&str> = all
        .iter()
        .map(|i| {
            i.server
                .log_shows_any(&[
                    "new access token",
                    "access token another instance fetched",
                    "reusing the saved access token",
                ])
                .unwrap_or_else(|| panic!("no token source logged:\n{}", i.server.log_text()))
        })
        .collect();
    assert_eq!(
        sources.iter().filter(|s| **s == "new access token").count(),
        1,
        "exactly one instance fetches the token: {sources:?}"
    );
    assert_eq!(
        wns.fake.token_requests(),
        1,
        "three instances started together on an empty database"
    );
    let targets: Vec<(String, String)> = (0..3)
        .map(|k| register(&all[k], &wns, &format!("dd0{k}"), &format!("t{k}")))
        .collect();
    for k in 0..3 {
        // Each channel answers 401 once, slowly, so all three refresh together.
        wns.fake.script(
            &format!("t{k}"),
            vec![Reply::status(401).delay(Duration::from_millis(300))],
        );
    }
    std::thread::scope(|s| {
        for (k, (i, (node, secret))) in all.iter_mut().zip(&targets).enumerate() {
            s.spawn(move || {
                assert_eq!(publish(i, &format!("t{k}"), node, secret), "result");
            });
        }
    });
    assert_eq!(
        wns.fake.token_requests(),
        2,
        "one refresh for a 401 seen by three instances"
    );
}

#[test]
fn client_mode_logs_in_on_one_instance_and_a_standby_takes_over_within_10_s() {
    let Some(admin) = pg_admin() else { return };
    let url = fresh_pg_database(&admin);
    // No XMPP server needs to answer: the lease is taken before the login is tried.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = json!({
        "xmpp": {"bare_jid": "push@localhost", "password": "pw", "host": "127.0.0.1", "port": closed},
        "db": {"url": url},
    });
    let mut holder = Server::start(Setup {
        extra: config.clone(),
        ..Setup::default()
    });
    assert!(holder.log_shows("xmpp: connecting as push@localhost"));
    let standby = Server::start(Setup {
        extra: config,
        ..Setup::default()
    });
    assert!(standby.log_shows("standby: another instance holds the client-mode login"));
    assert!(!standby.log_text().contains("connecting as"));
    holder.kill9();
    let killed = Instant::now();
    assert!(standby.log_shows("took over the client-mode login"));
    assert!(
        killed.elapsed() < Duration::from_secs(10),
        "took over after {:?}",
        killed.elapsed()
    );
    assert_eq!(
        standby
            .log_text()
            .matches("standby: another instance holds")
            .count(),
        1,
        "said once"
    );
}

#[test]
fn the_expiry_sweep_runs_on_one_instance_at_a_time() {
    let Some(admin) = pg_admin() else { return };
    let url = fresh_pg_database(&admin);
    let config = json!({"db": {"url": url}});
    let mut first = Server::start(Setup {
        extra: config.clone(),
        ..Setup::default()
    });
    let c = first.client();
    for d in ["ee01", "ee02"] {
        assert_eq!(c.send_json(&set_channel(2, d, &channel(1)))["status"], 1);
    }
    first.stop();
    first
        .db()
        .exec("UPDATE devices SET last_seen_at = last_seen_at - 100 * 86400");
    // Another instance is sweeping: it holds the sweep's advisory lock.
    let mut holder = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&0x7577_7078_6578_7069_i64])
        .unwrap();
    let second = Server::start(Setup {
        extra: config.clone(),
        ..Setup::default()
    });
    assert!(second.log_shows("expiry: another instance is sweeping"));
    assert_eq!(second.dump().len(), 2, "left to the instance that sweeps");
    drop(second);
    drop(holder);
    let third = Server::start(Setup {
        extra: config,
        ..Setup::default()
    });
    assert!(third.log_shows("expiry: removed 2 devices"));
}
