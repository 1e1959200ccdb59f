//! Test support: a temp dir, a self-signed certificate, the server process, clients.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const DEVICE: &str = "5486bd868050a620141f4e81c9f1d2c67ab0de27e5e26d218ca41c9394ee806b";
pub const PUSH_JID: &str = "push@push.example.org";

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let p = std::env::temp_dir().join(format!(
            "uwpx-test-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The test database on either backend.
#[path = "db.rs"]
pub mod db;
pub use db::{Db, on_postgres};

/// Test certificates made at run time.
#[path = "cert.rs"]
mod cert;
pub use cert::TestCert;

/// What a test wants in the configuration, on top of a plain-TCP default.
pub struct Setup {
    pub tls: bool,
    pub extra: Value,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            tls: false,
            extra: json!({}),
        }
    }
}

/// Merges `b` into `a`, objects recursively.
pub fn merge(a: &mut Value, b: &Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b.clone(),
    }
}

/// A running server process with its directory, config and captured stderr.
pub struct Server {
    pub dir: TempDir,
    pub config: PathBuf,
    pub addr: SocketAddr,
    pub cert: Option<TestCert>,
    child: Option<Child>,
    pub log: Arc<Mutex<String>>,
    env: Vec<(String, String)>,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_uwpx-push-server")
}

impl Server {
    pub fn start(setup: Setup) -> Self {
        Self::start_with_env(setup, Vec::new())
    }

    /// [`Server::start`] with environment variables for the process (e.g.
    /// UWPX_TEST_NAMESERVER).
    pub fn start_with_env(setup: Setup, env: Vec<(String, String)>) -> Self {
        let dir = TempDir::new("srv");
        let mut config = json!({
            "xmpp": {"bare_jid": PUSH_JID},
            "tcp": {"host": "127.0.0.1", "port": 0, "read_timeout_ms": 2000},
            "db": db::db_section(),
            "log": {"level": "debug"},
        });
        let cert = setup.tls.then(|| {
            let cert = TestCert::new();
            std::fs::write(dir.path().join("server.crt"), &cert.cert_pem).unwrap();
            std::fs::write(dir.path().join("server.key"), &cert.key_pem).unwrap();
            merge(
                &mut config,
                &json!({"tcp": {"tls": {"cert_path": "server.crt", "key_path": "server.key"}}}),
            );
            cert
        });
        merge(&mut config, &setup.extra);
        let path = dir.path().join("configuration.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let mut server = Server {
            dir,
            config: path,
            addr: "127.0.0.1:0".parse().unwrap(),
            cert,
            child: None,
            log: Arc::new(Mutex::new(String::new())),
            env,
        };
        server.launch();
        server
    }

    /// Starts the process (again) on the same directory and waits for it to listen.
    /// The port is re-used when restarting, so clients keep their address.
    pub fn launch(&mut self) {
        if self.addr.port() != 0 {
            let mut config: Value =
                serde_json::from_slice(&std::fs::read(&self.config).unwrap()).unwrap();
            config["tcp"]["port"] = json!(self.addr.port());
            std::fs::write(&self.config, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        }
        let mut child = Command::new(binary())
            .arg("--config")
            .arg(&self.config)
            .envs(self.env.clone())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_owned();
                    let _ = tx.send(addr);
                }
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("server did not start:\n{}", self.log.lock().unwrap()));
        self.addr = addr.parse().unwrap();
        self.child = Some(child);
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("server did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Waits for the process to exit by itself; returns its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > end {
                let _ = child.kill();
                panic!("server did not exit");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// kill -9: no chance to flush or checkpoint.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// The SQLite file (SQLite runs only).
    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("push.db")
    }

    /// The server's configuration as written.
    pub fn config_value(&self) -> Value {
        serde_json::from_slice(&std::fs::read(&self.config).unwrap()).unwrap()
    }

    /// A connection to the server's database beside the running server (SQLite's WAL
    /// and PostgreSQL both allow it).
    pub fn db(&self) -> Db {
        Db::open(&self.config_value(), self.dir.path())
    }

    /// The value of an unlabelled series on `/metrics` (the ops endpoint must be on).
    pub fn metric(&self, name: &str) -> f64 {
        let metrics = self.http_get("/metrics");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
    }

    /// A plain HTTP GET to the ops endpoint (`metrics.listen`), whole response.
    pub fn http_get(&self, path: &str) -> String {
        assert!(self.log_shows("ops: health and metrics on http://"));
        let log = self.log_text();
        let addr = log
            .split("ops: health and metrics on http://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .expect("ops endpoint address in the log")
            .to_owned();
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    /// A snapshot of everything stored, for "nothing changed" assertions.
    pub fn dump(&self) -> Vec<String> {
        let mut db = self.db();
        let mut out = db.rows(
            "SELECT device_id || ' ' || channel_uri || ' ' || CAST(version AS TEXT) || ' ' || coalesce(account_form,'-') FROM devices ORDER BY 1",
        );
        out.extend(db.rows(
            "SELECT device_id || ' ' || account_key || ' ' || coalesce(domain,'-') || ' ' || node || ' ' || secret FROM accounts ORDER BY 1",
        ));
        out
    }

    pub fn client(&self) -> Client {
        Client {
            addr: self.addr,
            tls: self
                .cert
                .as_ref()
                .map(|c| Arc::new(tls_connector(&c.cert_pem))),
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Whether `needle` shows up in the server's log within a few seconds (the log is
    /// read from a pipe by another thread, so a line may trail the answer it explains).
    pub fn log_shows(&self, needle: &str) -> bool {
        self.log_shows_any(&[needle]).is_some()
    }

    /// The first of `needles` the log shows, waiting up to 10 s for one to appear.
    pub fn log_shows_any<'n>(&self, needles: &[&'n str]) -> Option<&'n str> {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log_text();
            if let Some(found) = needles.iter().find(|n| log.contains(**n)) {
                return Some(found);
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    /// Kills the process. When a test fails, prints the tail of the server's log as
    /// well, so a failure in CI says what the server saw.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(SERVER_LOG_TAIL)..];
            eprintln!(
                "--- the last {} lines of the server's log ---\n{}",
                tail.len(),
                tail.join("\n")
            );
        }
    }
}

/// How many lines of the server's log a failing test prints.
const SERVER_LOG_TAIL: usize = 80;

/// A registration client, plain or TLS (trusting the test certificate only).
#[derive(Clone)]
pub struct Client {
    pub addr: SocketAddr,
    pub tls: Option<Arc<native_tls::TlsConnector>>,
}

/// A TLS 1.2 client (what UWPX offers) trusting only `root_pem`. Built once per client:
/// building one loads the system trust store, which is slow.
pub fn tls_connector(root_pem: &[u8]) -> native_tls::TlsConnector {
    native_tls::TlsConnector::builder()
        .add_root_certificate(native_tls::Certificate::from_pem(root_pem).unwrap())
        .min_protocol_version(Some(native_tls::Protocol::Tlsv12))
        .max_protocol_version(Some(native_tls::Protocol::Tlsv12))
        .build()
        .unwrap()
}

pub trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

impl Client {
    pub fn connect(&self) -> Box<dyn Stream> {
        let tcp = TcpStream::connect(self.addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        match &self.tls {
            None => Box::new(tcp),
            Some(connector) => Box::new(connector.connect("localhost", tcp).unwrap()),
        }
    }

    /// One request on a fresh connection, as the real client does; returns the raw answer.
    pub fn raw(&self, bytes: &[u8]) -> Vec<u8> {
        let mut s = self.connect();
        s.write_all(bytes).unwrap();
        read_answer(&mut s)
    }

    /// One request; the answer parsed, after checking it is one JSON object plus one NUL.
    pub fn send(&self, bytes: &[u8]) -> Value {
        parse_answer(&self.raw(bytes))
    }

    pub fn send_json(&self, v: &Value) -> Value {
        let mut bytes = serde_json::to_vec(v).unwrap();
        bytes.push(0);
        self.send(&bytes)
    }
}

/// Reads one answer: up to and including the first NUL, or to EOF.
pub fn read_answer<S: Read + ?Sized>(s: &mut S) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.contains(&0) {
                    return out;
                }
            }
            Err(e) => panic!("read failed after {} bytes: {e}", out.len()),
        }
    }
}

pub fn parse_answer(raw: &[u8]) -> Value {
    assert_eq!(
        raw.last(),
        Some(&0),
        "answer must end in NUL: {:?}",
        String::from_utf8_lossy(raw)
    );
    assert_eq!(
        raw.iter().filter(|&&b| b == 0).count(),
        1,
        "exactly one NUL"
    );
    serde_json::from_slice(&raw[..raw.len() - 1]).unwrap()
}

/// A request in the client's own format: Newtonsoft-indented, CRLF, then NUL.
pub fn newtonsoft(v: &Value) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(v).unwrap();
    let text = String::from_utf8(bytes.clone())
        .unwrap()
        .replace('\n', "\r\n");
    bytes = text.into_bytes();
    bytes.push(0);
    bytes
}

pub fn channel(n: usize) -> String {
    format!("https://db5p.notify.windows.com/?token=AwYAAAB%2b{n}%2fToken%3d")
}

pub fn set_channel(version: u8, device: &str, uri: &str) -> Value {
    json!({"version": version, "action": "set_channel_uri", "device_id": device, "channel_uri": uri})
}

pub fn set_accounts(version: u8, device: &str, accounts: Value) -> Value {
    json!({"version": version, "action": "set_push_accounts", "device_id": device, "accounts": accounts})
}

/// Asserts a success answer to set_push_accounts and returns `key -> (node, secret)`.
pub fn nodes(answer: &Value, key: &str) -> Vec<(String, String, String)> {
    assert_eq!(answer["status"], 1, "{answer}");
    assert_eq!(answer["action"], "response");
    assert_eq!(answer["push_bare_jid"], PUSH_JID);
    answer["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            assert_eq!(a["success"], true);
            let node = a["node"].as_str().unwrap().to_owned();
            let secret = a["secret"].as_str().unwrap().to_owned();
            assert!(
                node.len() >= 32
                    && node
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{node}"
            );
            assert!(secret.len() >= 32, "{secret}");
            (a[key].as_str().unwrap().to_owned(), node, secret)
        })
        .collect()
}

pub fn assert_error(answer: &Value, version: u64, text: &str) {
    assert_eq!(answer["status"], 0, "{answer}");
    assert_eq!(answer["action"], "response");
    assert_eq!(answer["version"], version, "{answer}");
    let err = answer["error"].as_str().unwrap();
    assert!(err.contains(text), "expected {text:?} in {err:?}");
}

/// A stand-in for an XMPP server's component port.
pub mod fake_xmpp;

/// Real Prosody and ejabberd for the end-to-end tests.
pub mod real_xmpp;

/// The project's fake WNS.
#[path = "../fake_wns/lib.rs"]
pub mod fake_wns;

pub mod nginx;

/// A fake WNS plus the configuration that points the server at it.
pub struct WnsFixture {
    pub fake: fake_wns::FakeWns,
    pub cert: TestCert,
    pub ca_path: PathBuf,
    _dir: TempDir,
}

impl WnsFixture {
    pub fn start() -> Self {
        let dir = TempDir::new("wns");
        let cert = TestCert::new();
        let ca_path = dir.path().join("fake-wns-ca.pem");
        std::fs::write(&ca_path, &cert.cert_pem).unwrap();
        let fake = fake_wns::FakeWns::start(&cert.cert_pem, &cert.key_pem, 0, true);
        Self {
            fake,
            cert,
            ca_path,
            _dir: dir,
        }
    }

    /// The `wns` section for the server under test, merged with `extra`.
    pub fn config(&self, extra: Value) -> Value {
        let mut wns = json!({"wns": {
            "packet_id": fake_wns::CLIENT_ID,
            "client_secret": fake_wns::CLIENT_SECRET,
            "token_url": self.fake.token_url(),
            "ca_file": self.ca_path.to_str().unwrap(),
            "channel_hosts": ["localhost"],
            "timeout_ms": 2000,
            "deadline_ms": 8000,
        }});
        merge(&mut wns, &extra);
        wns
    }
}
