//! Every bad input gets a clear error, changes nothing stored, and leaves the server and
//! every other connection running.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::*;

/// A server with one registered device and two accounts, and its stored state.
fn seeded(setup: Setup) -> (Server, Vec<String>) {
    let server = Server::start(setup);
    let c = server.client();
    assert_eq!(
        c.send_json(&set_channel(2, DEVICE, &channel(1)))["status"],
        1
    );
    let answer = c.send_json(&set_accounts(
        2,
        DEVICE,
        json!([{"account_id": "a"}, {"account_id": "b"}]),
    ));
    assert_eq!(answer["status"], 1);
    let dump = server.dump();
    assert_eq!(dump.len(), 3);
    (server, dump)
}

#[test]
fn each_bad_request_gets_its_own_error_and_changes_nothing() {
    let (server, before) = seeded(Setup::default());
    let c = server.client();
    let d = DEVICE;
    let long_id = "x".repeat(129);
    let too_many: Vec<Value> = (0..33)
        .map(|i| json!({"account_id": format!("n{i}")}))
        .collect();
    let cases: Vec<(Vec<u8>, u64, &str)> = vec![
        (b"\0".to_vec(), 2, "Malformed JSON: empty request."),
        (b"this is not json\0".to_vec(), 2, "Malformed JSON:"),
        (b"\xff\xfe{}\0".to_vec(), 2, "Malformed JSON:"),
        (b"[1,2]\0".to_vec(), 2, "must be a JSON object"),
        (
            b"\"set_channel_uri\"\0".to_vec(),
            2,
            "must be a JSON object",
        ),
        (
            json_nul(
                json!({"action": "set_channel_uri", "device_id": d, "channel_uri": channel(9)}),
            ),
            2,
            "missing field 'version'",
        ),
        (
            json_nul(json!({"version": 1, "device_id": d})),
            1,
            "missing field 'action'",
        ),
        (
            json_nul(json!({"version": 2, "action": "set_channel_uri", "channel_uri": channel(9)})),
            2,
            "missing field 'device_id'",
        ),
        (
            json_nul(json!({"version": 2, "action": "set_channel_uri", "device_id": d})),
            2,
            "missing field 'channel_uri'",
        ),
        (
            json_nul(json!({"version": 2, "action": "set_push_accounts", "device_id": d})),
            2,
            "missing field 'accounts'",
        ),
        (
            json_nul(
                json!({"version": "2", "action": "set_channel_uri", "device_id": d, "channel_uri": channel(9)}),
            ),
            2,
            "field 'version' must be an integer",
        ),
        (
            json_nul(json!({"version": 2, "action": 5, "device_id": d})),
            2,
            "field 'action' must be a string",
        ),
        (
            json_nul(
                json!({"version": 2, "action": "set_channel_uri", "device_id": 5, "channel_uri": channel(9)}),
            ),
            2,
            "field 'device_id' must be a string",
        ),
        (
            json_nul(
                json!({"version": 2, "action": "set_channel_uri", "device_id": d, "channel_uri": ["x"]}),
            ),
            2,
            "field 'channel_uri' must be a string",
        ),
        (
            json_nul(
                json!({"version": 2, "action": "set_push_accounts", "device_id": d, "accounts": {"account_id": "a"}}),
            ),
            2,
            "field 'accounts' must be an array",
        ),
        (
            json_nul(
                json!({"version": 2, "action": "set_push_accounts", "device_id": d, "accounts": [{"account_id": 7}]}),
            ),
            2,
            "field 'accounts[0].account_id' must be a string",
        ),
        (
            json_nul(
                json!({"version": 3, "action": "set_channel_uri", "device_id": d, "channel_uri": channel(9)}),
            ),
            2,
            "Unsupported version 3",
        ),
        (
            json_nul(
                json!({"version": 0, "action": "set_channel_uri", "device_id": d, "channel_uri": channel(9)}),
            ),
            2,
            "Unsupported version 0",
        ),
        (
            json_nul(json!({"version": 2, "action": "register_push", "device_id": d})),
            2,
            "Unknown action 'register_push'",
        ),
        (
            json_nul(json!({"version": 2, "action": "response", "device_id": d})),
            2,
            "Unknown action 'response'",
        ),
        (
            json_nul(set_channel(2, "", &channel(9))),
            2,
            "device_id must be 1 to 256 hexadecimal characters",
        ),
        (
            json_nul(set_channel(2, "not-hex", &channel(9))),
            2,
            "device_id must be 1 to 256 hexadecimal characters",
        ),
        (
            json_nul(set_channel(2, &"a".repeat(257), &channel(9))),
            2,
            "device_id must be 1 to 256 hexadecimal characters",
        ),
        (
            json_nul(set_accounts(2, d, json!([{"account_id": ""}]))),
            2,
            "accounts[0]: account_id must not be empty",
        ),
        (
            json_nul(set_accounts(
                2,
                d,
                json!([{"account_id": "a"}, {"account_id": long_id}]),
            )),
            2,
            "accounts[1]: account_id must be at most 128 characters",
        ),
        (
            json_nul(set_accounts(2, d, json!([{"account_id": "a\u{1}b"}]))),
            2,
            "account_id must not contain control characters",
        ),
        (
            json_nul(set_accounts(1, d, json!([{"bare_jid": "no-at-sign"}]))),
            1,
            "bare_jid must be a bare JID",
        ),
        (
            json_nul(set_accounts(
                1,
                d,
                json!([{"bare_jid": "user@example.org/resource"}]),
            )),
            1,
            "bare_jid must be a bare JID",
        ),
        (
            json_nul(set_accounts(
                2,
                d,
                json!([{"account_id": "a"}, {"account_id": "a"}]),
            )),
            2,
            "accounts[1] repeats an earlier account",
        ),
        (
            json_nul(set_accounts(
                1,
                d,
                json!([{"bare_jid": "u@example.org"}, {"bare_jid": "u@example.org"}]),
            )),
            1,
            "accounts[1] repeats an earlier account",
        ),
        (
            json_nul(set_accounts(
                2,
                d,
                json!([{"account_id": "a"}, {"bare_jid": "u@example.org"}]),
            )),
            2,
            "same form",
        ),
        (
            json_nul(set_accounts(
                2,
                d,
                json!([{"account_id": "a", "bare_jid": "u@example.org"}]),
            )),
            2,
            "exactly one of",
        ),
        (
            json_nul(set_accounts(2, d, json!([{}]))),
            2,
            "exactly one of",
        ),
        (
            json_nul(set_accounts(2, d, Value::Array(too_many))),
            2,
            "at most 32 accounts",
        ),
        (
            json_nul(set_channel(2, d, "ms-app://s-1-15-2-1234")),
            2,
            "channel_uri must use https",
        ),
        (
            json_nul(set_channel(2, d, "http://db5p.notify.windows.com/?token=x")),
            2,
            "channel_uri must use https",
        ),
        (
            json_nul(set_channel(2, d, "https://attacker.example.org/?token=x")),
            2,
            "not an allowed WNS host",
        ),
        (
            json_nul(set_channel(
                2,
                d,
                "https://notify.windows.com.attacker.org/?token=x",
            )),
            2,
            "not an allowed WNS host",
        ),
        (
            json_nul(set_channel(
                2,
                d,
                "https://x@db5p.notify.windows.com/?token=x",
            )),
            2,
            "user information",
        ),
        (
            json_nul(set_accounts(2, "ffff", json!([{"account_id": "a"}]))),
            2,
            "Device id unknown.",
        ),
        (
            json_nul(json!({"version": 1, "action": "request_test_push", "device_id": "ffff"})),
            1,
            "Device id unknown.",
        ),
        (
            deep_nesting(30_000),
            2,
            "Malformed JSON: recursion limit exceeded",
        ),
    ];
    let mut texts = std::collections::HashSet::new();
    for (bytes, version, text) in &cases {
        let answer = c.send(bytes);
        assert_error(&answer, *version, text);
        texts.insert(answer["error"].as_str().unwrap().to_owned());
    }
    assert!(
        texts.len() > 30,
        "errors should be specific, got {} distinct",
        texts.len()
    );
    assert_eq!(
        server.dump(),
        before,
        "a rejected request changed the store"
    );
    // The server still serves.
    assert_eq!(
        c.send_json(&set_channel(2, "abcd", &channel(2)))["status"],
        1
    );
}

fn json_nul(v: Value) -> Vec<u8> {
    let mut b = serde_json::to_vec(&v).unwrap();
    b.push(0);
    b
}

fn deep_nesting(depth: usize) -> Vec<u8> {
    let mut b = vec![b'['; depth];
    b.extend(std::iter::repeat_n(b']', depth));
    b.push(0);
    b
}

#[test]
fn an_oversize_request_is_answered_then_closed() {
    let (server, before) = seeded(Setup::default());
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut big =
        br#"{"version":2,"action":"set_channel_uri","device_id":"ab","channel_uri":""#.to_vec();
    big.extend(std::iter::repeat_n(b'a', 70_000));
    big.extend_from_slice(b"\"}\0");
    // The server may close while we are still writing; that is fine.
    let _ = s.write_all(&big);
    let answer = parse_answer(&read_answer(&mut s));
    assert_error(
        &answer,
        2,
        "Request too large: at most 65536 bytes are accepted.",
    );
    assert_eq!(read_to_eof(&mut s), 0, "closed after the answer");
    assert_eq!(server.dump(), before);
}

#[test]
fn idle_and_slow_clients_are_cut_off_without_hurting_others() {
    let (server, before) = seeded(Setup {
        extra: json!({"tcp": {"read_timeout_ms": 500}}),
        ..Setup::default()
    });
    // Idle: closed with no answer.
    let mut idle = TcpStream::connect(server.addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // Slow: half a request, then silence; answered with a timeout error, then closed.
    let mut slow = TcpStream::connect(server.addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    slow.write_all(br#"{"version":2,"action":"set_channel_uri","#)
        .unwrap();
    // Meanwhile a normal client is served.
    let c = server.client();
    assert_eq!(
        c.send_json(&set_channel(2, "abcd", &channel(2)))["status"],
        1
    );

    let mut buf = Vec::new();
    assert_eq!(
        idle.read_to_end(&mut buf).unwrap(),
        0,
        "idle connection closed silently"
    );
    let answer = parse_answer(&read_answer(&mut slow));
    assert_error(&answer, 2, "Request timed out");
    assert_eq!(read_to_eof(&mut slow), 0);
    assert_eq!(server.dump().len(), before.len() + 1);
}

#[test]
fn idle_tls_handshake_is_cut_off() {
    let server = Server::start(Setup {
        tls: true,
        extra: json!({"tcp": {"read_timeout_ms": 500}}),
    });
    let mut raw = TcpStream::connect(server.addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw.write_all(b"\x16\x03\x01").unwrap(); // the start of a ClientHello, then nothing
    let mut buf = Vec::new();
    let _ = raw.read_to_end(&mut buf); // EOF or reset, but not a hang
    assert_eq!(
        server
            .client()
            .send_json(&set_channel(2, "ab", &channel(3)))["status"],
        1
    );
}

fn read_to_eof(s: &mut TcpStream) -> usize {
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap_or(0);
    rest.len()
}

#[test]
fn connections_over_the_cap_get_a_busy_answer_and_the_rest_keep_working() {
    for tls in [false, true] {
        let server = Server::start(Setup {
            tls,
            extra: json!({"tcp": {"max_connections": 3, "read_timeout_ms": 5000}}),
        });
        let c = server.client();
        // Three connections held open (and, with TLS, fully handshaken).
        let mut held: Vec<_> = (0..3).map(|_| c.connect()).collect();
        std::thread::sleep(Duration::from_millis(200));
        let mut extra = c.connect();
        let answer = parse_answer(&read_answer(&mut extra));
        assert_error(&answer, 2, "Server busy: too many connections");
        // The held connections are still served.
        for (i, s) in held.iter_mut().enumerate() {
            s.write_all(&{
                let mut b =
                    serde_json::to_vec(&set_channel(2, &format!("c{i}"), &channel(i))).unwrap();
                b.push(0);
                b
            })
            .unwrap();
            assert_eq!(parse_answer(&read_answer(s))["status"], 1);
        }
        drop(held);
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            c.send_json(&set_channel(2, "abcd", &channel(4)))["status"],
            1
        );
    }
}

#[test]
fn a_flood_of_garbage_and_resets_does_not_take_the_server_down() {
    let (server, before) = seeded(Setup::default());
    let addr = server.addr;
    let threads: Vec<_> = (0..16)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..50 {
                    let Ok(mut s) = TcpStream::connect(addr) else {
                        continue;
                    };
                    let junk: Vec<u8> = (0..(i * 97 + t) % 3000)
                        .map(|k| (k * 31 + i) as u8)
                        .collect();
                    let _ = s.write_all(&junk);
                    if i % 3 == 0 {
                        let _ = s.write_all(b"\0");
                    }
                    // Drop without reading: many of these end in a reset.
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // The flood came from this address too, so until the server has seen every one of
    // its connections close, the per-address cap may still answer busy. That is the
    // cap working; a real client retries. Anything else is a failure.
    let c = server.client();
    let deadline = Instant::now() + Duration::from_secs(10);
    let answer = loop {
        let answer = c.send_json(&set_channel(2, "abcd", &channel(2)));
        let busy = answer["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("Server busy"));
        if !busy || Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(answer["status"], 1, "{answer}");
    let after = server.dump();
    assert_eq!(after.len(), before.len() + 1);
    assert!(before.iter().all(|row| after.contains(row)));
}

/// A TCP connection from `source` (any address of 127/8 works on loopback) to `to`.
fn connect_from(source: std::net::Ipv4Addr, to: std::net::SocketAddr) -> TcpStream {
    use std::os::fd::FromRawFd;
    let std::net::SocketAddr::V4(to) = to else {
        panic!("IPv4 only")
    };
    let sockaddr = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let (from, to) = (sockaddr(source, 0), sockaddr(*to.ip(), to.port()));
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a fresh socket, plain sockaddr_in values that outlive the calls, and the
    // descriptor is owned by the TcpStream from here on (or closed on failure).
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream = TcpStream::from_raw_fd(fd);
        let r = libc::bind(fd, (&raw const from).cast(), len);
        assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
        let r = libc::connect(fd, (&raw const to).cast(), len);
        assert_eq!(r, 0, "connect: {}", std::io::Error::last_os_error());
        stream
    }
}

/// Issue 10 item 8: one host holding idle connections up to `tcp.max_connections`
/// kept every other client out. With the default `tcp.max_connections_per_ip` (64), a
/// host gets 64 and the rest of its connections are answered busy, and a second
/// address still registers.
#[test]
fn one_address_at_its_cap_does_not_lock_out_another() {
    let server = Server::start(Setup {
        extra: json!({"tcp": {"max_connections": 100, "read_timeout_ms": 30000}}),
        ..Setup::default()
    });
    let first = std::net::Ipv4Addr::new(127, 0, 0, 1);
    let mut held: Vec<TcpStream> = (0..100).map(|_| connect_from(first, server.addr)).collect();
    std::thread::sleep(Duration::from_millis(1000));
    let mut busy = 0;
    for s in &mut held {
        s.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            Ok(n) if n > 0 => {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                assert!(text.contains("Server busy"), "{text}");
                busy += 1;
            }
            Ok(_) => panic!("closed without an answer"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock),
        }
    }
    assert_eq!(busy, 100 - 64, "connections over the per-address cap");
    assert!(server.log_shows("registration: 127.0.0.1 is over tcp.max_connections_per_ip (64)"));
    // Another address is served while the first one holds its 64.
    let mut other = connect_from(std::net::Ipv4Addr::new(127, 0, 0, 2), server.addr);
    other
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut request = serde_json::to_vec(&set_channel(2, "face", &channel(7))).unwrap();
    request.push(0);
    other.write_all(&request).unwrap();
    assert_eq!(parse_answer(&read_answer(&mut other))["status"], 1);
    // The held connections are still served, and their slots come back when closed.
    held[0].set_nonblocking(false).unwrap();
    held[0]
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut request = serde_json::to_vec(&set_channel(2, "feed", &channel(8))).unwrap();
    request.push(0);
    held[0].write_all(&request).unwrap();
    assert_eq!(parse_answer(&read_answer(&mut held[0]))["status"], 1);
    drop(held);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        server
            .client()
            .send_json(&set_channel(2, "beef", &channel(9)))["status"],
        1
    );
}

/// Issue 10 item 9: with `limits.max_request_bytes` at its allowed maximum, 32
/// connections each sending 15 MiB without a NUL took the server to 502 MB. The bytes
/// buffered across connections now share one budget: the peak resident memory stays
/// bounded, the connections over it are answered busy, and a normal client registers.
#[test]
fn big_requests_on_many_connections_keep_memory_bounded() {
    let server = Server::start(Setup {
        extra: json!({
            "tcp": {"read_timeout_ms": 60000},
            "limits": {"max_request_bytes": 16 * 1024 * 1024},
        }),
        ..Setup::default()
    });
    let addr = server.addr;
    let senders: Vec<_> = (0..32)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                let chunk = vec![b'x'; 64 * 1024];
                let mut sent = 0;
                while sent < 15 * 1024 * 1024 {
                    if s.write_all(&chunk).is_err() {
                        break;
                    }
                    sent += chunk.len();
                }
                s // held open, with what was sent still buffered by the server
            })
        })
        .collect();
    let mut held: Vec<TcpStream> = senders.into_iter().map(|t| t.join().unwrap()).collect();
    let peak = crate::component::proc_status_kib(server.pid(), "VmHWM");
    eprintln!("peak resident memory: {peak} KiB");
    assert!(peak < 128 * 1024, "peak resident memory {peak} KiB");
    assert!(server.log_shows("hold the whole shared buffer"));
    // Those that were refused got the busy answer.
    let mut busy = 0;
    for s in &mut held {
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = [0u8; 512];
        if let Ok(n) = s.read(&mut buf)
            && String::from_utf8_lossy(&buf[..n]).contains("Server busy")
        {
            busy += 1;
        }
    }
    assert!(busy >= 28, "only {busy} of 32 were answered busy");
    // A normal client registers meanwhile.
    assert_eq!(
        server
            .client()
            .send_json(&set_channel(2, DEVICE, &channel(1)))["status"],
        1
    );
    drop(held);
}
