//! Storage behaviour on both backends (this file runs in the SQLite pass and in the
//! PostgreSQL pass of scripts/test.sh), and PostgreSQL's faults: the database going
//! away and coming back, a slow database, wrong credentials, an unreachable host.
//! Issue 11.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::db::{OwnPg, fresh_pg_database, pg_admin};
use crate::util::fake_xmpp::*;
use crate::util::*;

/// One request on a fresh connection that never panics: `None` if the server is gone.
fn try_send(addr: SocketAddr, v: &Value) -> Option<Value> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(15))).ok()?;
    let mut bytes = serde_json::to_vec(v).ok()?;
    bytes.push(0);
    s.write_all(&bytes).ok()?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        answer.extend_from_slice(&buf[..n]);
        if answer.last() == Some(&0) {
            answer.pop();
            return serde_json::from_slice(&answer).ok();
        }
    }
}

/// (account key → (node, secret)) of an accounts answer.
fn account_nodes(answer: &Value) -> HashMap<String, (String, String)> {
    nodes(answer, "account_id")
        .into_iter()
        .map(|(k, n, s)| (k, (n, s)))
        .collect()
}

#[test]
fn concurrent_registrations_for_the_same_devices_neither_deadlock_nor_lose_an_update() {
    // All 64 clients come from 127.0.0.1.
    let server = Server::start(Setup {
        extra: json!({"tcp": {"max_connections_per_ip": 1024}}),
        ..Setup::default()
    });
    let c = server.client();
    for d in 0..8 {
        let device = format!("dd{d:02}");
        assert_eq!(
            c.send_json(&set_channel(2, &device, &channel(d)))["status"],
            1
        );
    }
    // 64 clients, 8 per device, each replacing the device's accounts with the shared
    // account "a" plus one of its own, three times over.
    let threads: Vec<_> = (0..64)
        .map(|i| {
            let c = c.clone();
            std::thread::spawn(move || {
                let device = format!("dd{:02}", i % 8);
                (0..3)
                    .map(|_| {
                        let answer = c.send_json(&set_accounts(
                            2,
                            &device,
                            json!([{"account_id": "a"}, {"account_id": format!("x{i}")}]),
                        ));
                        (device.clone(), account_nodes(&answer))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut shared: HashMap<String, HashSet<(String, String)>> = HashMap::new();
    let mut answered: HashMap<(String, String), (String, String)> = HashMap::new();
    for t in threads {
        for (device, accounts) in t.join().expect("a client failed") {
            shared
                .entry(device.clone())
                .or_default()
                .insert(accounts["a"].clone());
            for (key, pair) in accounts {
                answered.insert((device.clone(), key), pair);
            }
        }
    }
    // The shared account kept one node and secret through 24 concurrent replacements
    // per device: no replacement was lost or duplicated.
    for (device, pairs) in &shared {
        assert_eq!(pairs.len(), 1, "{device}: {pairs:?}");
    }
    // What is stored is exactly one client's set, with the node it was answered.
    let mut db = server.db();
    for d in 0..8 {
        let device = format!("dd{d:02}");
        let stored = db.rows(&format!(
            "SELECT account_key, node, secret FROM accounts WHERE device_id = '{device}' ORDER BY account_key"
        ));
        assert_eq!(stored.len(), 2, "{device}: {stored:?}");
        for row in stored {
            let f: Vec<&str> = row.split(' ').collect();
            let key = f[0].to_owned();
            assert!(
                key == "a" || key.starts_with('x'),
                "{device}: unexpected account {key}"
            );
            assert_eq!(
                answered[&(device.clone(), key)],
                (f[1].to_owned(), f[2].to_owned())
            );
        }
    }
}

#[test]
fn kill_9_under_registration_load_keeps_every_acknowledged_registration() {
    let mut server = Server::start(Setup::default());
    // (device, account) → (node, secret), for every answer a client got.
    let mut acked: HashMap<(String, String), (String, String)> = HashMap::new();
    for cycle in 0..20 {
        let addr = server.addr;
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    for n in 0.. {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let device = format!("ab{cycle:02x}{t:x}{n:05x}");
                        let Some(a) = try_send(addr, &set_channel(2, &device, &channel(n))) else {
                            break;
                        };
                        if a["status"] != 1 {
                            break;
                        }
                        let req = set_accounts(2, &device, json!([{"account_id": "acc"}]));
                        let Some(a) = try_send(addr, &req) else { break };
                        if a["status"] != 1 {
                            break;
                        }
                        let acc = &a["accounts"][0];
                        got.push((
                            (device, "acc".to_owned()),
                            (
                                acc["node"].as_str().unwrap().to_owned(),
                                acc["secret"].as_str().unwrap().to_owned(),
                            ),
                        ));
                    }
                    got
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(150 + 37 * (cycle % 5)));
        server.kill9();
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            acked.extend(t.join().unwrap());
        }
        server.launch();
    }
    assert!(acked.len() > 100, "too little load: {}", acked.len());
    let stored: HashMap<(String, String), (String, String)> = server
        .db()
        .rows("SELECT device_id, account_key, node, secret FROM accounts")
        .into_iter()
        .map(|r| {
            let f: Vec<String> = r.split(' ').map(str::to_owned).collect();
            ((f[0].clone(), f[1].clone()), (f[2].clone(), f[3].clone()))
        })
        .collect();
    for (key, pair) in &acked {
        assert_eq!(stored.get(key), Some(pair), "{key:?} was acknowledged");
    }
}

#[test]
fn db_path_and_db_url_together_are_a_configuration_error_naming_both() {
    let dir = TempDir::new("cfg");
    let path = dir.path().join("configuration.json");
    std::fs::write(
        &path,
        r#"{"xmpp": {"bare_jid": "push@example.org"},
            "db": {"path": "x.db", "url": "postgres://u:pw@127.0.0.1:1/db"}}"#,
    )
    .unwrap();
    let out = std::process::Command::new(binary())
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("db.url") && err.contains("db.path"), "{err}");
}

#[test]
fn check_config_masks_the_database_password() {
    let dir = TempDir::new("cfg");
    let path = dir.path().join("configuration.json");
    std::fs::write(
        &path,
        r#"{"xmpp": {"bare_jid": "push@example.org"},
            "db": {"url": "postgresql://uwpx:s3cret-pw@db.example.org:5433/push?sslmode=require"}}"#,
    )
    .unwrap();
    let out = std::process::Command::new(binary())
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(!text.contains("s3cret-pw"), "{text}");
    assert!(
        text.contains("postgresql://uwpx:****@db.example.org:5433/push?sslmode=require"),
        "{text}"
    );
}

/// Starts the binary on `url` and returns its exit code and stderr.
fn run_on(url: &str) -> (Option<i32>, String) {
    let dir = TempDir::new("pgstart");
    let path = dir.path().join("configuration.json");
    let config = json!({
        "xmpp": {"bare_jid": "push@example.org"},
        "tcp": {"host": "127.0.0.1", "port": 0},
        "db": {"url": url},
    });
    std::fs::write(&path, config.to_string()).unwrap();
    let out = std::process::Command::new(binary())
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn wrong_credentials_or_an_unreachable_host_at_start_is_one_clear_line_and_exit_1() {
    let Some(admin) = pg_admin() else { return };
    let wrong = admin.replacen("uwpx:", "uwpx:wrong", 1);
    let (code, err) = run_on(&wrong);
    assert_eq!(code, Some(1), "{err}");
    let line = err.lines().last().unwrap_or("");
    assert!(
        line.contains("127.0.0.1:") && line.contains("password authentication failed"),
        "{err}"
    );
    assert!(!err.contains("wrong"), "the password is not logged: {err}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (code, err) = run_on(&format!("postgres://uwpx:x@127.0.0.1:{closed}/push"));
    assert_eq!(code, Some(1), "{err}");
    let line = err.lines().last().unwrap_or("");
    assert!(
        line.contains(&format!("127.0.0.1:{closed}")) && line.contains("refused"),
        "{err}"
    );
}

#[test]
fn a_slow_database_answers_within_the_read_timeout() {
    let Some(_) = pg_admin() else { return };
    let server = Server::start(Setup::default());
    let c = server.client();
    assert_eq!(
        c.send_json(&set_channel(2, "ee01", &channel(1)))["status"],
        1
    );
    // Another session holds the device's row locked (a long transaction elsewhere).
    let url = server.config_value()["db"]["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut holder = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let mut tx = holder.transaction().unwrap();
    tx.execute(
        "SELECT 1 FROM devices WHERE device_id = 'ee01' FOR UPDATE",
        &[],
    )
    .unwrap();
    let start = Instant::now();
    let answer = c.send_json(&set_accounts(2, "ee01", json!([{"account_id": "a"}])));
    let took = start.elapsed();
    assert_error(&answer, 2, "Server busy");
    // tcp.read_timeout_ms is 2000 in these tests.
    assert!(
        took < Duration::from_millis(2000),
        "answered after {took:?}"
    );
    tx.rollback().unwrap();
    // The connection thread was not stuck: the same request now succeeds.
    let answer = c.send_json(&set_accounts(2, "ee01", json!([{"account_id": "a"}])));
    assert_eq!(answer["status"], 1, "{answer}");
}

#[test]
fn postgres_going_away_and_coming_back_is_survived_without_a_restart() {
    if pg_admin().is_none() {
        return;
    }
    let pg = OwnPg::start();
    let url = fresh_pg_database(&pg.url());
    let wns = WnsFixture::start();
    let xmpp = FakeXmpp::start();
    let mut config = wns.config(json!({
        "xmpp": {"component": {"jid": COMPONENT_JID, "secret": COMPONENT_SECRET, "host": "127.0.0.1", "port": xmpp.port}},
        "push": {"min_interval_ms": 0},
        "metrics": {"listen": "127.0.0.1:0"},
    }));
    merge(&mut config, &json!({"db": {"url": url}}));
    let server = Server::start(Setup {
        extra: config,
        ..Setup::default()
    });
    let mut conn = xmpp.accept(Duration::from_secs(10));
    let c = server.client();
    let uri = wns.fake.channel_uri("pgdown");
    assert_eq!(c.send_json(&set_channel(2, "ff01", &uri))["status"], 1);
    let answer = c.send_json(&set_accounts(2, "ff01", json!([{"account_id": "a"}])));
    let account = &answer["accounts"][0];
    let (node, secret) = (
        account["node"].as_str().unwrap().to_owned(),
        account["secret"].as_str().unwrap().to_owned(),
    );
    let before = server.dump();

    pg.stop();
    for i in 0..3 {
        let answer = c.send_json(&set_channel(2, &format!("ff1{i}"), &uri));
        assert_error(&answer, 2, "Storage unavailable");
    }
    conn.send(&prosody_publish("p1", "localhost", &node, Some(&secret), 1));
    let reply = conn.reply_to("p1");
    assert!(verdict(&reply).starts_with("wait/"), "{}", verdict(&reply));
    let health = server.http_get("/health");
    assert!(
        health.starts_with("HTTP/1.1 503") && health.contains("database"),
        "{health}"
    );
    let log = server.log_text();
    assert_eq!(
        log.matches("is unavailable").count(),
        1,
        "said once, not per request:\n{log}"
    );

    pg.restart();
    let back = Instant::now();
    loop {
        let answer = c.send_json(&set_channel(2, "ff20", &uri));
        if answer["status"] == 1 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "not back within 5 s: {answer}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(server.log_shows("is back"));
    conn.send(&prosody_publish("p2", "localhost", &node, Some(&secret), 1));
    assert_eq!(verdict(&conn.reply_to("p2")), "result");
    // Nothing half-written: the registrations refused during the outage left nothing.
    let after = server.dump();
    assert!(before.iter().all(|l| after.contains(l)));
    assert!(!after.iter().any(|l| l.starts_with("ff1")), "{after:?}");
}
