//! A fake WNS for tests, benchmarks and the demo: a real HTTPS server (native-tls, a
//! certificate made by the caller) that serves both the token endpoint and channel
//! URIs, records every request, and can be scripted per channel.
//!
//! Behaviour, after Microsoft's documentation (xep0357-wns.md part B):
//! - `POST /accesstoken.srf`, form-encoded `grant_type=client_credentials`, `client_id`,
//!   `client_secret`, `scope=notify.windows.com`: 200 with
//!   `{"access_token","token_type":"bearer","expires_in"}`, or 400 `invalid_client`.
//! - `POST /ch/<name>?…` (a channel): 401 unless `Authorization: Bearer <valid token>`;
//!   400 unless `X-WNS-Type: wns/raw` and `Content-Type: application/octet-stream`;
//!   413 for a body over 5000 bytes, 400 for an empty one; 400 for a chunked body.
//!   Otherwise the channel's next scripted reply, or 200 with
//!   `X-WNS-NotificationStatus: received`, `X-WNS-DeviceConnectionStatus: connected`,
//!   `X-WNS-Msg-ID` and `MS-CV`.
//! - HTTP/1.1 keep-alive; every connection is counted.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One scripted answer.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: String::new(),
            delay: Duration::ZERO,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn body(mut self, body: &str) -> Self {
        self.body = body.into();
        self
    }

    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
}

/// A request as received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// Path and query exactly as sent.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The channel name for `/ch/<name>` requests.
    pub channel: Option<String>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct State {
    scripts: HashMap<String, VecDeque<Reply>>,
    token_script: VecDeque<Reply>,
    requests: Vec<Recorded>,
    valid_tokens: Vec<String>,
    client_id: String,
    client_secret: String,
    expires_in: String,
    record: bool,
}

/// The running fake.
pub struct FakeWns {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    tokens_issued: Arc<AtomicU64>,
    connections: Arc<AtomicUsize>,
    notifies: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    /// Print each channel request to stdout (the demo).
    pub verbose: Arc<AtomicBool>,
}

pub const CLIENT_ID: &str = "ms-app://s-1-15-2-1111111111-2222222222-3333333333-4444444444-5555555555-6666666666-7777777777";
pub const CLIENT_SECRET: &str = "fake-wns-client-secret";

impl FakeWns {
    /// Starts on 127.0.0.1 with a random port, serving TLS with `cert_pem`/`key_pem`
    /// (PKCS#8). Records requests unless `record` is false (benchmarks).
    pub fn start(cert_pem: &[u8], key_pem: &[u8], port: u16, record: bool) -> Self {
        let identity = native_tls::Identity::from_pkcs8(cert_pem, key_pem).expect("identity");
        let acceptor = Arc::new(native_tls::TlsAcceptor::new(identity).expect("acceptor"));
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
            expires_in: "86400".into(),
            record,
            ..State::default()
        }));
        let fake = Self {
            addr,
            state,
            tokens_issued: Arc::new(AtomicU64::new(0)),
            connections: Arc::new(AtomicUsize::new(0)),
            notifies: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            verbose: Arc::new(AtomicBool::new(false)),
        };
        let shared = fake.shared();
        std::thread::Builder::new()
            .name("fake-wns".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if shared.stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    shared.connections.fetch_add(1, Ordering::Relaxed);
                    let (acceptor, shared) = (acceptor.clone(), shared.clone());
                    std::thread::spawn(move || {
                        let _ = stream.set_nodelay(true);
                        if let Ok(tls) = acceptor.accept(stream) {
                            serve(tls, &shared);
                        }
                    });
                }
            })
            .unwrap();
        fake
    }

    fn shared(&self) -> Shared {
        Shared {
            state: self.state.clone(),
            tokens_issued: self.tokens_issued.clone(),
            notifies: self.notifies.clone(),
            connections: self.connections.clone(),
            stop: self.stop.clone(),
            verbose: self.verbose.clone(),
        }
    }

    pub fn token_url(&self) -> String {
        format!("https://localhost:{}/accesstoken.srf", self.addr.port())
    }

    /// A channel URI for `name`, with a percent-encoded query that must arrive verbatim.
    pub fn channel_uri(&self, name: &str) -> String {
        format!(
            "https://localhost:{}/ch/{name}?token=AwYAAAB%2b{name}%2fTok%3d",
            self.addr.port()
        )
    }

    /// Queues replies for a channel; after they are used up it answers 200 again.
    pub fn script(&self, channel: &str, replies: Vec<Reply>) {
        self.state
            .lock()
            .unwrap()
            .scripts
            .entry(channel.into())
            .or_default()
            .extend(replies);
    }

    /// Queues replies for the token endpoint.
    pub fn script_token(&self, replies: Vec<Reply>) {
        self.state.lock().unwrap().token_script.extend(replies);
    }

    /// What `expires_in` the token endpoint sends (a JSON string if `as_string`).
    pub fn set_expires_in(&self, seconds: u64, as_string: bool) {
        self.state.lock().unwrap().expires_in = if as_string {
            format!("\"{seconds}\"")
        } else {
            seconds.to_string()
        };
    }

    /// Makes every token issued so far invalid (the next channel POST gets 401).
    pub fn revoke_tokens(&self) {
        self.state.lock().unwrap().valid_tokens.clear();
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn channel_requests(&self, channel: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.channel.as_deref() == Some(channel))
            .collect()
    }

    pub fn token_requests(&self) -> u64 {
        self.tokens_issued.load(Ordering::SeqCst)
    }

    /// Channel POSTs answered so far (counted even when not recording).
    pub fn notifies(&self) -> u64 {
        self.notifies.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Waits until `channel` has seen `n` requests, or `timeout` passes.
    pub fn wait_for(&self, channel: &str, n: usize, timeout: Duration) -> Vec<Recorded> {
        let end = std::time::Instant::now() + timeout;
        loop {
            let got = self.channel_requests(channel);
            if got.len() >= n || std::time::Instant::now() > end {
                return got;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for FakeWns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

#[derive(Clone)]
struct Shared {
    state: Arc<Mutex<State>>,
    tokens_issued: Arc<AtomicU64>,
    notifies: Arc<AtomicU64>,
    connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    verbose: Arc<AtomicBool>,
}

fn serve<S: Read + Write>(stream: S, shared: &Shared) {
    let mut reader = BufReader::new(stream);
    loop {
        let Some(req) = read_request(&mut reader) else {
            return;
        };
        let reply = answer(&req, shared);
        if !reply.delay.is_zero() {
            std::thread::sleep(reply.delay);
        }
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Length: {}\r\n",
            reply.status,
            reason(reply.status),
            reply.body.len()
        );
        for (n, v) in &reply.headers {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        out.push_str("\r\n");
        out.push_str(&reply.body);
        let w = reader.get_mut();
        if w.write_all(out.as_bytes()).is_err() || w.flush().is_err() {
            return;
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        410 => "Gone",
        413 => "Request Entity Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Other",
    }
}

fn read_request<R: BufRead>(r: &mut R) -> Option<Recorded> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (n, v) = h.split_once(':')?;
        headers.push((n.trim().to_owned(), v.trim().to_owned()));
    }
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _): &&(String, String)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let body = if get("Transfer-Encoding").is_some() {
        Vec::new() // answered 400 below; the connection is not reused
    } else {
        let len: usize = get("Content-Length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len.min(1 << 20)];
        r.read_exact(&mut body).ok()?;
        body
    };
    let channel = target
        .strip_prefix("/ch/")
        .map(|rest| rest.split('?').next().unwrap_or("").to_owned());
    Some(Recorded {
        method,
        target,
        headers,
        body,
        channel,
    })
}

fn form_value(body: &str, key: &str) -> Option<String> {
    body.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match h.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn answer(req: &Recorded, shared: &Shared) -> Reply {
    let mut state = shared.state.lock().unwrap();
    if state.record {
        state.requests.push(req.clone());
    }
    if req.method != "POST" {
        return Reply::status(405);
    }
    if req.target == "/accesstoken.srf" {
        shared.tokens_issued.fetch_add(1, Ordering::SeqCst);
        if let Some(r) = state.token_script.pop_front() {
            return r;
        }
        let body = String::from_utf8_lossy(&req.body).into_owned();
        let ok = form_value(&body, "grant_type").as_deref() == Some("client_credentials")
            && form_value(&body, "scope").as_deref() == Some("notify.windows.com")
            && form_value(&body, "client_id").as_deref() == Some(state.client_id.as_str())
            && form_value(&body, "client_secret").as_deref() == Some(state.client_secret.as_str());
        if !ok {
            return Reply::status(400)
                .header("Content-Type", "application/json")
                .body(r#"{"error":"invalid_client","error_description":"Invalid client id or secret"}"#);
        }
        let token = format!("fake-token-{}", shared.tokens_issued.load(Ordering::SeqCst));
        state.valid_tokens.push(token.clone());
        return Reply::status(200)
            .header("Content-Type", "application/json")
            .header("Cache-Control", "no-store")
            .body(&format!(
                r#"{{"access_token":"{token}","token_type":"bearer","expires_in":{}}}"#,
                state.expires_in
            ));
    }
    let Some(channel) = &req.channel else {
        return Reply::status(404);
    };
    shared.notifies.fetch_add(1, Ordering::SeqCst);
    if shared.verbose.load(Ordering::Relaxed) {
        println!(
            "[fake WNS] POST {} X-WNS-Type={} body={}",
            req.target,
            req.header("X-WNS-Type").unwrap_or("-"),
            String::from_utf8_lossy(&req.body)
        );
    }
    let bearer_ok = req
        .header("Authorization")
        .and_then(|a| a.strip_prefix("Bearer "))
        .is_some_and(|t| state.valid_tokens.iter().any(|v| v == t));
    if !bearer_ok {
        return Reply::status(401).header("WWW-Authenticate", "Bearer error=\"invalid_token\"");
    }
    if req.header("Transfer-Encoding").is_some()
        || req.header("X-WNS-Type") != Some("wns/raw")
        || req.header("Content-Type") != Some("application/octet-stream")
        || req.body.is_empty()
    {
        return Reply::status(400).header("X-WNS-Error-Description", "bad headers or empty body");
    }
    if req.body.len() > 5000 {
        return Reply::status(413);
    }
    if let Some(r) = state.scripts.get_mut(channel).and_then(VecDeque::pop_front) {
        return r;
    }
    let n = shared.notifies.load(Ordering::Relaxed);
    Reply::status(200)
        .header("X-WNS-NotificationStatus", "received")
        .header("X-WNS-DeviceConnectionStatus", "connected")
        .header("X-WNS-Msg-ID", &format!("{n:016X}"))
        .header("MS-CV", &format!("fake.{n}"))
}
