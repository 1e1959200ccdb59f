//! Operations: health and metrics over real HTTP, device expiry, admin commands, and a
//! graceful shutdown under load that loses no acknowledged registration and leaves no
//! publish IQ unanswered.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::fake_wns::Reply;
use crate::util::fake_xmpp::*;
use crate::util::*;

fn http_get(addr: &str, path: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent.get(&format!("http://{addr}{path}")).call().unwrap();
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_string().unwrap())
}

fn ops_addr(server: &Server) -> String {
    assert!(server.log_shows("ops: health and metrics on http://"));
    let log = server.log_text();
    let rest = log
        .split("ops: health and metrics on http://")
        .nth(1)
        .unwrap();
    rest.split('/').next().unwrap().to_owned()
}

/// A component-mode server with fake WNS, fake XMPP and the metrics endpoint.
fn rig(extra: Value) -> (WnsFixture, FakeXmpp, Server, XmppConn) {
    let wns = WnsFixture::start();
    let xmpp = FakeXmpp::start();
    let mut config = wns.config(json!({
        "xmpp": {"component": {"jid": COMPONENT_JID, "secret": COMPONENT_SECRET, "host": "127.0.0.1", "port": xmpp.port}},
        "push": {"min_interval_ms": 0},
        "metrics": {"listen": "127.0.0.1:0"},
    }));
    merge(&mut config, &extra);
    let server = Server::start(Setup {
        extra: config,
        ..Setup::default()
    });
    let conn = xmpp.accept(Duration::from_secs(10));
    (wns, xmpp, server, conn)
}

fn register(server: &Server, wns: &WnsFixture, device: &str, channel: &str) -> (String, String) {
    let c = server.client();
    assert_eq!(
        c.send_json(&set_channel(2, device, &wns.fake.channel_uri(channel)))["status"],
        1
    );
    let a = c.send_json(&set_accounts(2, device, json!([{"account_id": "acc"}])));
    let acc = &a["accounts"][0];
    (
        acc["node"].as_str().unwrap().into(),
        acc["secret"].as_str().unwrap().into(),
    )
}

#[test]
fn health_and_metrics_over_http() {
    let (wns, _xmpp, server, mut conn) = rig(json!({}));
    let addr = ops_addr(&server);
    let end = Instant::now() + Duration::from_secs(10);
    while http_get(&addr, "/health").0 != 200 {
        assert!(Instant::now() < end, "never healthy");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(http_get(&addr, "/health"), (200, "ok\n".into()));
    let (node, secret) = register(&server, &wns, "ab01", "m");
    server.client().send(b"not json\0");
    conn.send(&prosody_publish("m1", "localhost", &node, Some(&secret), 1));
    assert_eq!(verdict(&conn.reply_to("m1")), "result");
    conn.send(&prosody_publish(
        "m2",
        "localhost",
        "nope",
        Some(&secret),
        1,
    ));
    assert_eq!(verdict(&conn.reply_to("m2")), "cancel/item-not-found");

    let (status, body) = http_get(&addr, "/metrics");
    assert_eq!(status, 200);
    for line in [
        "uwpx_registrations_total{action=\"set_channel_uri\",result=\"ok\"} 1",
        "uwpx_registrations_total{action=\"set_push_accounts\",result=\"ok\"} 1",
        "uwpx_registrations_total{action=\"invalid\",result=\"rejected\"} 1",
        "uwpx_publishes_total{outcome=\"delivered\"} 1",
        "uwpx_publishes_total{outcome=\"unknown_node\"} 1",
        "uwpx_wns_responses_total{status=\"200\"} 1",
        "uwpx_wns_request_seconds_count 1",
        "uwpx_publish_reply_seconds_count 1",
        "uwpx_wns_queue_depth 0",
        "uwpx_wns_workers_busy 0",
        "uwpx_xmpp_connected 1",
        "uwpx_xmpp_reconnects_total 0",
        "uwpx_devices 1",
        "uwpx_accounts 1",
    ] {
        assert!(body.contains(line), "missing {line:?} in\n{body}");
    }
    let expiry = body
        .lines()
        .find_map(|l| l.strip_prefix("uwpx_wns_token_expiry_seconds "))
        .expect("token expiry gauge");
    assert!(expiry.parse::<i64>().unwrap() > 86_000, "{expiry}");

    assert_eq!(http_get(&addr, "/nothing").0, 404);
    drop(conn);
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = http_get(&addr, "/health");
        if status == 503 {
            assert_eq!(body, "xmpp: not connected\n");
            break;
        }
        assert!(Instant::now() < end, "still healthy without XMPP");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn devices_unseen_for_the_ttl_are_swept_at_start() {
    let mut server = Server::start(Setup::default());
    let c = server.client();
    for d in ["aa01", "aa02"] {
        assert_eq!(c.send_json(&set_channel(2, d, &channel(1)))["status"], 1);
    }
    server.stop();
    server.db().exec(
        "UPDATE devices SET last_seen_at = last_seen_at - 100 * 86400 WHERE device_id = 'aa01'",
    );
    server.launch();
    assert!(server.log_shows("expiry: removed 1 devices not seen for 90 days"));
    let dump = server.dump();
    assert_eq!(dump.len(), 1);
    assert!(dump[0].starts_with("aa02 "));
}

fn admin(server: &Server, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(binary())
        .args(args)
        .arg("--config")
        .arg(&server.config)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn admin_commands_work_while_the_server_runs() {
    let wns = WnsFixture::start();
    let server = Server::start(Setup {
        extra: wns.config(json!({})),
        ..Setup::default()
    });
    let c = server.client();
    assert_eq!(
        c.send_json(&set_channel(2, "bb01", &wns.fake.channel_uri("adm")))["status"],
        1
    );
    assert_eq!(
        c.send_json(&set_accounts(
            2,
            "bb01",
            json!([{"account_id": "a"}, {"account_id": "b"}])
        ))["status"],
        1
    );
    assert_eq!(
        c.send_json(&set_channel(1, "bb02", &wns.fake.channel_uri("adm2")))["status"],
        1
    );

    let (code, out, err) = admin(&server, &["test-push", "bb01"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("delivered"), "{out}");
    assert_eq!(
        wns.fake.channel_requests("adm")[0].body,
        br#"{"action":"test_push","version":2}"#
    );
    let (code, out, err) = admin(&server, &["stats"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("devices:  2") && out.contains("accounts: 2"),
        "{out}"
    );
    assert!(out.contains("newest device last seen:"), "{out}");
    assert!(out.contains("WNS token: expires in"), "{out}");

    wns.fake.script("adm2", vec![Reply::status(410)]);
    let (code, out, _) = admin(&server, &["test-push", "bb02"]);
    assert_eq!(code, Some(1));
    assert!(out.contains("channel gone"), "{out}");

    let (code, _, err) = admin(&server, &["remove-device", "bb01"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(server.dump().is_empty(), "{:?}", server.dump());
    let (code, _, err) = admin(&server, &["remove-device", "bb01"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("Device id unknown."));
    // The running server sees the change.
    assert_eq!(
        c.send_json(&set_accounts(2, "bb01", json!([])))["error"],
        "Device id unknown."
    );
}

/// Publishes in flight get their real answer within the grace, the rest `wait`; every
/// IQ is answered before the stream closes, and every acknowledged registration is kept.
#[test]
fn shutdown_under_load_answers_every_iq_and_keeps_every_ack() {
    let (wns, _xmpp, mut server, mut conn) =
        rig(json!({"shutdown": {"grace_ms": 1500}, "wns": {"workers": 2}}));
    let (node, secret) = register(&server, &wns, "cc01", "load");
    // Each push takes 400 ms at the fake: two workers get through about 7 in the grace.
    wns.fake.script(
        "load",
        vec![Reply::status(200).delay(Duration::from_millis(400)); 40],
    );
    let ids: Vec<String> = (0..20).map(|i| format!("s{i}")).collect();
    for id in &ids {
        conn.send(&prosody_publish(id, "localhost", &node, Some(&secret), 1));
    }
    // Registrations keep coming while we stop.
    let client = server.client();
    let uri = wns.fake.channel_uri("reg");
    let registering = std::thread::spawn(move || {
        let mut acked = Vec::new();
        for i in 0..200 {
            let device = format!("dd{i:04}");
            let raw = std::panic::catch_unwind(|| client.send_json(&set_channel(2, &device, &uri)));
            match raw {
                Ok(a) if a["status"] == 1 => acked.push(device),
                other => {
                    eprintln!("registration {i} ended: {other:?}");
                    break;
                }
            }
        }
        acked
    });
    std::thread::sleep(Duration::from_millis(300));
    let pid = server.pid();
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();

    let mut answered = std::collections::HashMap::new();
    while let Some(e) = conn.next(Duration::from_secs(10)) {
        if let Some(id) = e.attr("id").filter(|i| i.starts_with('s')) {
            answered.insert(id.to_owned(), verdict(&e));
        }
    }
    for id in &ids {
        assert!(
            answered.contains_key(id),
            "{id} was never answered: {answered:?}"
        );
    }
    let results = answered.values().filter(|v| *v == "result").count();
    let waits = answered.values().filter(|v| v.starts_with("wait/")).count();
    assert!(
        results >= 1 && waits >= 1 && results + waits == ids.len(),
        "{answered:?}"
    );
    assert_eq!(server.wait_exit(), Some(0));

    let acked = registering.join().unwrap();
    assert!(!acked.is_empty());
    let stored: std::collections::HashSet<String> = server
        .dump()
        .into_iter()
        .map(|row| row.split(' ').next().unwrap().to_owned())
        .collect();
    for d in &acked {
        assert!(stored.contains(d), "acknowledged {d} was lost");
    }
}

/// Issue 10 item 14: the log prints 12 characters of a device id, and the admin
/// commands wanted the whole id. A unique prefix of 6 or more now names the device,
/// an ambiguous one names its matches, a shorter one is refused, and `stats --devices`
/// lists the devices without any JID.
#[test]
fn admin_commands_take_a_unique_prefix_and_stats_lists_devices() {
    let wns = WnsFixture::start();
    let server = Server::start(Setup {
        extra: wns.config(json!({})),
        ..Setup::default()
    });
    let c = server.client();
    // Two ids alike in the log's 12 characters, and a third.
    let twin_a = format!("aaaaaa110000{}", "0".repeat(52));
    let twin_b = format!("aaaaaa110000{}", "f".repeat(52));
    let other = format!("c0ffee{}", "1".repeat(58));
    for (device, channel) in [(&twin_a, "pa"), (&twin_b, "pb"), (&other, "pc")] {
        assert_eq!(
            c.send_json(&set_channel(2, device, &wns.fake.channel_uri(channel)))["status"],
            1
        );
    }
    assert_eq!(
        c.send_json(&set_accounts(
            1,
            &other,
            json!([{"bare_jid": "someone@jids-stay-private.example"}])
        ))["status"],
        1
    );

    // A unique prefix, in any case.
    let (code, out, err) = admin(&server, &["test-push", "C0FFEE"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("test push to c0ffee111111: delivered"),
        "{out}"
    );
    assert_eq!(wns.fake.channel_requests("pc").len(), 1);

    // Too short: refused, with the reason.
    for short in ["c0ffe", "aa"] {
        let (code, _, err) = admin(&server, &["test-push", short]);
        assert_eq!(code, Some(1));
        assert!(
            err.contains("Device id unknown.") && err.contains("at least 6 characters"),
            "{err}"
        );
    }

    // Ambiguous: both matches named, told apart past the log's 12 characters.
    let (code, _, err) = admin(&server, &["remove-device", "aaaaaa"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("`aaaaaa` is ambiguous: 2 devices start with it")
            && err.contains("aaaaaa1100000000")
            && err.contains("aaaaaa110000ffff"),
        "{err}"
    );
    assert_eq!(server.dump().len(), 4, "nothing removed");

    let (code, _, err) = admin(&server, &["remove-device", "ffffff"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("Device id unknown. No device id starts with `ffffff`."),
        "{err}"
    );

    // stats --devices: every device, whole id, generation, accounts; no JID.
    let (code, out, err) = admin(&server, &["stats", "--devices"]);
    assert_eq!(code, Some(0), "{err}");
    for device in [&twin_a, &twin_b, &other] {
        assert!(out.contains(device.as_str()), "{out}");
    }
    let line = out.lines().find(|l| l.starts_with(&other)).unwrap();
    assert!(line.contains("v1 bare_jid (0.25-0.34)"), "{line}");
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols[cols.len() - 4], "1", "accounts column: {line}");
    assert!(line.ends_with("s ago"), "{line}");
    assert!(
        !out.contains("jids-stay-private"),
        "a JID was printed:\n{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with(&twin_a) && l.contains("v2 (0.39+)")),
        "{out}"
    );
    // Plain stats stays as it was.
    let (_, out, _) = admin(&server, &["stats"]);
    assert!(!out.contains(&other), "{out}");

    // A unique longer prefix removes exactly that device.
    let (code, out, err) = admin(&server, &["remove-device", "aaaaaa1100000"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(&format!("removed device {twin_a}")), "{out}");
    let left: Vec<String> = server
        .dump()
        .iter()
        .map(|r| r.split(' ').next().unwrap().to_owned())
        .collect();
    assert!(
        !left.contains(&twin_a) && left.contains(&twin_b),
        "{left:?}"
    );
}

/// Issue 10 item 16: a token endpoint that refuses our credentials was reported as a
/// transient failure everywhere. It is a configuration error in the log, in
/// `test-push`, in `/health` and in the metrics; the XMPP server is still told `wait`.
#[test]
fn rejected_wns_credentials_are_a_configuration_error() {
    let (wns, _xmpp, server, mut conn) =
        rig(json!({"wns": {"client_secret": "not-the-secret-7f3a"}}));
    let addr = ops_addr(&server);
    let (node, secret) = register(&server, &wns, "ee01", "cred");

    conn.send(&prosody_publish("r1", "localhost", &node, Some(&secret), 1));
    let v = verdict(&conn.reply_to("r1"));
    assert!(v.starts_with("wait/"), "{v}");

    let (status, body) = http_get(&addr, "/health");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.starts_with("wns: WNS credentials rejected by the token endpoint (HTTP 400")
            && body.contains("invalid_client")
            && body.contains("wns.packet_id")
            && body.contains("wns.client_secret"),
        "{body}"
    );

    let (_, metrics) = http_get(&addr, "/metrics");
    assert!(
        metrics.contains("\nuwpx_wns_credentials_rejected 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("uwpx_publishes_total{outcome=\"misconfigured\"} 1"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("uwpx_wns_token_requests_total{result=\"rejected\"} 0"),
        "{metrics}"
    );

    let answer = server.client().send_json(&json!(
        {"version": 2, "action": "request_test_push", "device_id": "ee01"}
    ));
    assert_error(&answer, 2, "Server misconfigured");

    let (code, out, err) = admin(&server, &["test-push", "ee01"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains("misconfigured"), "{out}");
    assert!(
        err.contains("configuration error") && err.contains("wns.client_secret"),
        "{err}"
    );
    assert!(!out.contains("transient") && !err.contains("transient"));

    assert!(server.log_shows(
        "[ERROR] wns: configuration error: the WNS token endpoint rejected our credentials"
    ));
    assert!(server.log_text().lines().any(|l| l.contains("[ERROR]")
        && l.contains("wns.packet_id")
        && l.contains("wns.client_secret")));
    assert!(
        !server.log_text().contains("will retry on the first push"),
        "refused credentials are not a passing failure"
    );
    assert!(
        !server.log_text().contains("not-the-secret-7f3a"),
        "secret logged"
    );
    assert!(wns.fake.channel_requests("cred").is_empty());
}

/// One `GET /health` over a fresh connection; the status line if the whole answer came
/// within `within`.
fn probe(addr: &str, within: Duration) -> Result<String, String> {
    use std::io::{Read, Write};
    let start = Instant::now();
    let sock: std::net::SocketAddr = addr.parse().unwrap();
    let mut s = std::net::TcpStream::connect_timeout(&sock, within).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(within)).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: probe\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("{e} after {:?}", start.elapsed())),
        }
        if start.elapsed() > within {
            return Err(format!("still reading after {:?}", start.elapsed()));
        }
    }
    if start.elapsed() > within {
        return Err(format!("answered after {:?}", start.elapsed()));
    }
    let text = String::from_utf8_lossy(&answer);
    Ok(text.lines().next().unwrap_or("").to_owned())
}

/// Issue 10 item 2: 200 idle connections and a slowloris client (one byte every
/// 1.5 s) made every health probe fail, because the endpoint served one connection at
/// a time with a timeout per read.
#[test]
fn idle_and_slow_clients_cannot_starve_health_probes() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let server = Server::start(Setup {
        extra: json!({"metrics": {"listen": "127.0.0.1:0"}}),
        ..Setup::default()
    });
    let addr = ops_addr(&server);
    assert_eq!(
        probe(&addr, Duration::from_secs(5)).unwrap(),
        "HTTP/1.1 200 OK"
    );
    let sock: std::net::SocketAddr = addr.parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // 200 idle connections, each reopened as soon as the server drops it.
    let idle = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let open = || {
                let s = TcpStream::connect(sock).unwrap();
                s.set_nonblocking(true).unwrap();
                s
            };
            let mut conns: Vec<TcpStream> = (0..200).map(|_| open()).collect();
            let mut reopened = 0;
            while !stop.load(Ordering::Relaxed) {
                for c in &mut conns {
                    let mut b = [0u8; 64];
                    let closed = match c.read(&mut b) {
                        Ok(_) => true,
                        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                    };
                    if closed {
                        *c = open();
                        reopened += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            reopened
        })
    };
    // A slowloris: one byte of a request every 1.5 s, reconnecting when dropped.
    let slow = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let request = b"GET /health HTTP/1.1\r\nHost: slow\r\n\r\n";
            let mut s = TcpStream::connect(sock).unwrap();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                if s.write_all(&request[i % request.len()..][..1]).is_err() {
                    s = TcpStream::connect(sock).unwrap();
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(1500));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let mut failures = Vec::new();
    for _ in 0..10 {
        match probe(&addr, Duration::from_secs(1)) {
            Ok(status) if status == "HTTP/1.1 200 OK" => {}
            other => failures.push(format!("{other:?}")),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, Ordering::Relaxed);
    let reopened = idle.join().unwrap();
    slow.join().unwrap();
    assert!(failures.is_empty(), "failed probes: {failures:?}");
    assert!(
        reopened >= 200,
        "the idle connections were not cut off ({reopened})"
    );
    assert!(server.log_shows("ops: dropped"));
}
