//! WNS delivery through the real binary against the project's fake WNS (real TLS):
//! payloads and headers per generation, every outcome row, the token lifecycle, the
//! ChannelGone race guard and the send-time host check.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::fake_wns::Reply;
use crate::util::*;

fn start(extra: Value) -> (WnsFixture, Server) {
    let wns = WnsFixture::start();
    let server = Server::start(Setup {
        extra: wns.config(extra),
        ..Setup::default()
    });
    (wns, server)
}

fn test_push(version: u8, device: &str) -> Value {
    json!({"version": version, "action": "request_test_push", "device_id": device})
}

/// Registers `device` on the fake's channel `name` with the given generation.
fn register(
    c: &Client,
    wns: &WnsFixture,
    version: u8,
    device: &str,
    name: &str,
    accounts: Option<Value>,
) {
    assert_eq!(
        c.send_json(&set_channel(version, device, &wns.fake.channel_uri(name)))["status"],
        1
    );
    if let Some(accounts) = accounts {
        assert_eq!(
            c.send_json(&set_accounts(version, device, accounts))["status"],
            1
        );
    }
}

#[test]
fn test_push_bytes_and_headers_for_each_generation() {
    let (wns, server) = start(json!({}));
    let c = server.client();
    register(
        &c,
        &wns,
        2,
        "aa01",
        "v2",
        Some(json!([{"account_id": "x"}])),
    );
    register(
        &c,
        &wns,
        1,
        "aa02",
        "v1id",
        Some(json!([{"account_id": "y"}])),
    );
    register(
        &c,
        &wns,
        1,
        "aa03",
        "v1jid",
        Some(json!([{"bare_jid": "u@example.org"}])),
    );
    for (version, device, channel, body) in [
        (
            2,
            "aa01",
            "v2",
            &br#"{"action":"test_push","version":2}"#[..],
        ),
        (1, "aa02", "v1id", b"<test/>"),
        (
            1,
            "aa03",
            "v1jid",
            b"Test push notification from your push server.",
        ),
    ] {
        let answer = c.send_json(&test_push(version, device));
        assert_eq!(
            answer,
            json!({"action": "response", "status": 1, "version": version})
        );
        let got = wns.fake.channel_requests(channel);
        assert_eq!(got.len(), 1, "{channel}");
        let r = &got[0];
        assert_eq!(r.body, body, "{channel}");
        assert_eq!(
            r.target,
            wns.fake
                .channel_uri(channel)
                .split_once(&wns.fake.addr.port().to_string())
                .unwrap()
                .1
        );
        assert_eq!(r.header("X-WNS-Type"), Some("wns/raw"));
        assert_eq!(r.header("Content-Type"), Some("application/octet-stream"));
        assert_eq!(r.header("Authorization"), Some("Bearer fake-token-1"));
        assert_eq!(r.header("X-WNS-RequestForStatus"), Some("true"));
        assert_eq!(r.header("X-WNS-Cache-Policy"), Some("cache"));
        assert_eq!(r.header("X-WNS-TTL"), Some("86400"));
        assert_eq!(r.header("X-WNS-PRIORITY"), Some("1"));
        assert_eq!(
            r.header("Content-Length"),
            Some(body.len().to_string().as_str())
        );
        assert_eq!(r.header("Expect"), None);
        assert_eq!(r.header("Transfer-Encoding"), None);
    }
    // One token for all, one keep-alive connection for the token plus the pushes
    // (each of the 4 workers may have opened its own).
    assert_eq!(wns.fake.token_requests(), 1);
    assert!(
        wns.fake.connections() <= 5,
        "{} connections",
        wns.fake.connections()
    );
    let log = server.log_text();
    assert!(
        !log.contains("fake-token-1") && !log.contains(fake_wns_secret()),
        "token or secret logged"
    );
    assert!(!log.contains("AwYAAAB"), "channel token logged");
}

fn fake_wns_secret() -> &'static str {
    crate::util::fake_wns::CLIENT_SECRET
}

#[test]
fn a_version_2_test_push_from_a_device_registered_as_v1_gets_json() {
    let (wns, server) = start(json!({}));
    let c = server.client();
    register(
        &c,
        &wns,
        1,
        "ab01",
        "up",
        Some(json!([{"account_id": "x"}])),
    );
    assert_eq!(c.send_json(&test_push(2, "ab01"))["status"], 1);
    assert_eq!(
        wns.fake.channel_requests("up")[0].body,
        br#"{"action":"test_push","version":2}"#
    );
}

/// Each row of the WNS → outcome table, seen through request_test_push.
#[test]
fn every_outcome_row() {
    let (wns, server) = start(json!({"wns": {"timeout_ms": 300, "deadline_ms": 4000}}));
    let c = server.client();
    // (channel, scripted replies, expected error (None = success), requests, device kept)
    type Row = (&'static str, Vec<Reply>, Option<&'static str>, usize, bool);
    let rows: Vec<Row> = vec![
        (
            "ok-dropped",
            vec![Reply::status(200).header("X-WNS-NotificationStatus", "dropped")],
            None,
            1,
            true,
        ),
        (
            "gone404",
            vec![Reply::status(404)],
            Some("Channel expired"),
            1,
            false,
        ),
        (
            "gone410",
            vec![Reply::status(410)],
            Some("Channel expired"),
            1,
            false,
        ),
        (
            "blocked",
            vec![Reply::status(410).header("X-WNS-Error-Description", "Domain Blocked")],
            Some("Server misconfigured"),
            1,
            true,
        ),
        (
            "forbidden",
            vec![Reply::status(403)],
            Some("Server misconfigured"),
            1,
            true,
        ),
        (
            "unauth2",
            vec![Reply::status(401), Reply::status(401)],
            Some("Server misconfigured"),
            2,
            true,
        ),
        (
            "bad400",
            vec![Reply::status(400)],
            Some("Server misconfigured"),
            1,
            true,
        ),
        (
            "bad405",
            vec![Reply::status(405)],
            Some("Server misconfigured"),
            1,
            true,
        ),
        (
            "big413",
            vec![Reply::status(413)],
            Some("Server misconfigured"),
            1,
            true,
        ),
        ("err500", vec![Reply::status(500)], None, 2, true),
        (
            "down503",
            vec![Reply::status(503).header("Retry-After", "1"); 3],
            Some("WNS unavailable"),
            3,
            true,
        ),
        (
            "slow",
            vec![Reply::status(200).delay(Duration::from_millis(800)); 3],
            Some("WNS unavailable"),
            3,
            true,
        ),
    ];
    for (i, (channel, replies, error, requests, kept)) in rows.into_iter().enumerate() {
        let device = format!("c0{i:02}");
        register(
            &c,
            &wns,
            2,
            &device,
            channel,
            Some(json!([{"account_id": "a"}])),
        );
        wns.fake.script(channel, replies);
        let answer = c.send_json(&test_push(2, &device));
        match error {
            None => assert_eq!(answer["status"], 1, "{channel}: {answer}"),
            Some(text) => assert_error(&answer, 2, text),
        }
        assert_eq!(
            wns.fake
                .wait_for(channel, requests, Duration::from_secs(3))
                .len(),
            requests,
            "{channel}"
        );
        let present = server
            .dump()
            .iter()
            .any(|row| row.starts_with(&format!("{device} ")));
        assert_eq!(present, kept, "{channel}: device kept?");
    }
    for needle in ["Domain Blocked", "403 Forbidden", "401 again", "HTTP 413"] {
        assert!(server.log_shows(needle), "log lacks {needle}");
    }
}

#[test]
fn a_401_refreshes_the_token_once_and_resends() {
    let (wns, server) = start(json!({}));
    let c = server.client();
    register(&c, &wns, 2, "d1", "r", None);
    assert_eq!(c.send_json(&test_push(2, "d1"))["status"], 1);
    wns.fake.revoke_tokens();
    assert_eq!(c.send_json(&test_push(2, "d1"))["status"], 1);
    let got = wns.fake.channel_requests("r");
    let auth: Vec<_> = got
        .iter()
        .map(|r| r.header("Authorization").unwrap())
        .collect();
    assert_eq!(
        auth,
        [
            "Bearer fake-token-1",
            "Bearer fake-token-1",
            "Bearer fake-token-2"
        ]
    );
    assert_eq!(wns.fake.token_requests(), 2);
}

#[test]
fn sixteen_workers_hit_by_401_at_once_make_one_token_request() {
    let (wns, server) = start(json!({"wns": {"workers": 16}}));
    let c = Arc::new(server.client());
    for i in 0..16 {
        register(&c, &wns, 2, &format!("e{i:02}"), &format!("s{i}"), None);
    }
    assert_eq!(c.send_json(&test_push(2, "e00"))["status"], 1);
    assert_eq!(wns.fake.token_requests(), 1);
    for i in 0..16 {
        // Every channel answers 401 once, slowly, so all 16 are in flight together.
        wns.fake.script(
            &format!("s{i}"),
            vec![Reply::status(401).delay(Duration::from_millis(300))],
        );
    }
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let c = c.clone();
            std::thread::spawn(move || c.send_json(&test_push(2, &format!("e{i:02}"))))
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap()["status"], 1);
    }
    assert_eq!(
        wns.fake.token_requests(),
        2,
        "exactly one refresh for 16 workers"
    );
}

#[test]
fn the_token_survives_a_restart() {
    let (wns, mut server) = start(json!({}));
    let c = server.client();
    register(&c, &wns, 2, "f1", "p", None);
    assert_eq!(c.send_json(&test_push(2, "f1"))["status"], 1);
    server.restart();
    assert_eq!(server.client().send_json(&test_push(2, "f1"))["status"], 1);
    assert_eq!(wns.fake.token_requests(), 1);
    assert!(server.log_shows("reusing the saved access token"));
}

#[test]
fn token_endpoint_failures_are_named_in_the_log() {
    // Wrong secret: a configuration error, not "try again later" (issue 10 item 16).
    let (wns, server) = start(json!({"wns": {"client_secret": "wrong"}}));
    let c = server.client();
    register(&c, &wns, 2, "b1", "t", None);
    assert_error(&c.send_json(&test_push(2, "b1")), 2, "Server misconfigured");
    assert!(server.log_shows("rejected our credentials"));
    assert!(wns.fake.channel_requests("t").is_empty());
    assert!(!server.log_text().contains("wrong"), "secret logged");
    // Unreachable endpoint.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (wns, server) = start(
        json!({"wns": {"token_url": format!("https://localhost:{}/accesstoken.srf", dead.port())}}),
    );
    let c = server.client();
    register(&c, &wns, 2, "b2", "t", None);
    assert_error(&c.send_json(&test_push(2, "b2")), 2, "WNS unavailable");
    assert!(server.log_shows("token endpoint is unreachable"));
}

/// Issue 10 item 16: a token endpoint refusing us with a bare 401 (no JSON body) was an
/// "unusable answer", retried as transient; it is refused credentials.
#[test]
fn a_bare_401_from_the_token_endpoint_is_a_configuration_error() {
    let wns = WnsFixture::start();
    // Every token request in this test is refused; the first comes at start.
    wns.fake.script_token(vec![Reply::status(401); 20]);
    let server = Server::start(Setup {
        extra: wns.config(json!({})),
        ..Setup::default()
    });
    let c = server.client();
    register(&c, &wns, 2, "b3", "t", None);
    assert_error(&c.send_json(&test_push(2, "b3")), 2, "Server misconfigured");
    assert!(server.log_shows(
        "wns: configuration error: the WNS token endpoint rejected our credentials (HTTP 401 no error code): check wns.packet_id and wns.client_secret"
    ));
    assert!(wns.fake.channel_requests("t").is_empty());
}

#[test]
fn expires_in_as_a_string_is_accepted() {
    let wns = WnsFixture::start();
    wns.fake.set_expires_in(86399, true);
    let server = Server::start(Setup {
        extra: wns.config(json!({})),
        ..Setup::default()
    });
    let c = server.client();
    register(&c, &wns, 2, "c1", "s", None);
    assert_eq!(c.send_json(&test_push(2, "c1"))["status"], 1);
}

#[test]
fn throttling_pauses_all_jobs_until_retry_after() {
    let (wns, server) = start(json!({}));
    let c = Arc::new(server.client());
    register(&c, &wns, 2, "d2", "a", None);
    register(&c, &wns, 2, "d3", "b", None);
    wns.fake
        .script("a", vec![Reply::status(406).header("Retry-After", "2")]);
    let t0 = Instant::now();
    let c2 = c.clone();
    let first = std::thread::spawn(move || c2.send_json(&test_push(2, "d2")));
    wns.fake.wait_for("a", 1, Duration::from_secs(5));
    // While paused, another device's push waits too, then goes out.
    assert_eq!(c.send_json(&test_push(2, "d3"))["status"], 1);
    assert!(
        t0.elapsed() >= Duration::from_millis(1500),
        "b was sent during the pause"
    );
    assert_eq!(first.join().unwrap()["status"], 1);
    assert_eq!(wns.fake.channel_requests("a").len(), 2);
}

#[test]
fn channel_gone_does_not_delete_a_device_that_re_registered_meanwhile() {
    let (wns, server) = start(json!({}));
    let c = Arc::new(server.client());
    register(&c, &wns, 2, "d4", "old", Some(json!([{"account_id": "a"}])));
    wns.fake.script(
        "old",
        vec![Reply::status(410).delay(Duration::from_millis(800))],
    );
    let c2 = c.clone();
    let push = std::thread::spawn(move || c2.send_json(&test_push(2, "d4")));
    wns.fake.wait_for("old", 1, Duration::from_secs(5));
    // The device moves to a new channel while WNS is still answering about the old one.
    assert_eq!(
        c.send_json(&set_channel(2, "d4", &wns.fake.channel_uri("new")))["status"],
        1
    );
    assert_error(&push.join().unwrap(), 2, "Channel expired");
    let dump = server.dump();
    assert!(
        dump.iter()
            .any(|r| r.starts_with("d4 ") && r.contains("/ch/new?")),
        "{dump:?}"
    );
    assert_eq!(dump.len(), 2, "the account survives too: {dump:?}");
}

#[test]
fn a_channel_outside_the_allowlist_is_never_contacted() {
    let (wns, mut server) = start(json!({}));
    let c = server.client();
    register(&c, &wns, 2, "d5", "x", None);
    // The operator narrows the allowlist; the stored channel no longer passes.
    let mut config: Value =
        serde_json::from_slice(&std::fs::read(&server.config).unwrap()).unwrap();
    config["wns"]["channel_hosts"] = json!(["notify.windows.com"]);
    std::fs::write(&server.config, serde_json::to_vec(&config).unwrap()).unwrap();
    server.restart();
    assert_error(
        &server.client().send_json(&test_push(2, "d5")),
        2,
        "Server misconfigured",
    );
    assert!(
        wns.fake.channel_requests("x").is_empty(),
        "the fake must see nothing"
    );
    assert!(server.log_shows("not in wns.channel_hosts"));
}

#[test]
fn a_full_queue_fails_fast_as_transient() {
    let (wns, server) = start(json!({"wns": {"workers": 1, "queue_capacity": 1}}));
    let c = Arc::new(server.client());
    for i in 0..4 {
        register(&c, &wns, 2, &format!("d6{i}"), "slow", None);
    }
    wns.fake.script(
        "slow",
        vec![Reply::status(200).delay(Duration::from_millis(700)); 4],
    );
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let c = c.clone();
            std::thread::spawn(move || c.send_json(&test_push(2, &format!("d6{i}"))))
        })
        .collect();
    let answers: Vec<Value> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let full = answers
        .iter()
        .filter(|a| {
            a["error"]
                .as_str()
                .is_some_and(|e| e.contains("queue is full"))
        })
        .count();
    let ok = answers.iter().filter(|a| a["status"] == 1).count();
    assert!(full >= 1 && ok >= 1 && full + ok == 4, "{answers:?}");
}

#[test]
fn a_delivery_moves_last_seen_forward() {
    let (wns, mut server) = start(json!({}));
    let c = server.client();
    register(&c, &wns, 2, "d7", "seen", None);
    let before = server.db().int("SELECT last_seen_at FROM devices");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(c.send_json(&test_push(2, "d7"))["status"], 1);
    assert_eq!(server.stop(), Some(0)); // flushes the batched last-seen writes
    let after = server.db().int("SELECT last_seen_at FROM devices");
    assert!(after > before, "{before} -> {after}");
}

#[test]
fn at_start_the_token_and_a_connection_per_worker_wait_for_the_first_push() {
    let (wns, mut server) = start(json!({"wns": {"workers": 3}}));
    let c = server.client();
    register(&c, &wns, 2, "aa01", "warm", None);
    // Started again with a stored channel: its host gets the connections before the
    // XMPP link (and the registration listener) start.
    server.restart();
    let warm = server
        .log_text()
        .lines()
        .rev()
        .find(|l| l.contains("wns: warm in"))
        .map(str::to_owned);
    let warm = warm.expect("a warm-up line before the listener starts");
    assert!(
        warm.contains("token ready, 3 connections to 1 hosts"),
        "{warm}"
    );
    let opened = wns.fake.connections();
    let answer = server.client().send_json(&test_push(2, "aa01"));
    assert_eq!(answer["status"], 1, "{answer}");
    assert_eq!(wns.fake.channel_requests("warm").len(), 1);
    // The push went over one of the connections opened at start.
    assert_eq!(wns.fake.connections(), opened);
}

#[test]
fn a_token_endpoint_that_never_answers_holds_the_start_up_only_briefly() {
    // Accepts and then says nothing: the TLS handshake of the token request hangs.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "https://localhost:{}/accesstoken.srf",
        silent.local_addr().unwrap().port()
    );
    let (wns, mut server) = start(json!({"wns": {"token_url": url, "timeout_ms": 3000}}));
    assert!(
        server.log_shows("wns: not warm after 2000 ms"),
        "{}",
        server.log_text()
    );
    // Started all the same: registrations are answered.
    let answer = server
        .client()
        .send_json(&set_channel(2, "aa01", &wns.fake.channel_uri("c1")));
    assert_eq!(answer["status"], 1, "{answer}");
    assert_eq!(server.stop(), Some(0));
    drop(silent);
}
