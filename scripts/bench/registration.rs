//! Registration benchmark: set_push_accounts per second and latency, with a new
//! connection per request (as the real client does), plain TCP and TLS 1.2 (a full
//! handshake each), at 1, 16 and 64 concurrent clients.
//!
//! Run: `cargo bench --bench registration` (or `scripts/bench-registration.sh`).
//! Options after `--`: `--seconds N` per measurement (default 4), `--runs N` (default 3;
//! the median run is reported), `--sync full|normal` (default full), `--clients 1,16,64`
//! (closed loop), `--rate-plain 5000` and `--rate-tls 1000` (the open-loop rows: that
//! many requests per second offered by 64 clients, latency counted from when each
//! request was due), `--pg-url URL` (PostgreSQL instead of SQLite: a fresh database is
//! made on the server URL names; `scripts/bench-registration.sh --postgres` starts a
//! throw-away one with scripts/pg.sh).
//!
//! It starts the real release binary with a temporary database, registers 1,000 devices,
//! then each client loops: connect, (TLS handshake,) send set_push_accounts with two
//! accounts (one stable, one new each time, so every request inserts one account and
//! deletes one), read the answer, check `status` 1, close.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[path = "common.rs"]
mod common;

struct Opts {
    seconds: u64,
    runs: usize,
    sync: String,
    clients: Vec<usize>,
    rate_plain: f64,
    rate_tls: f64,
    pg_url: Option<String>,
}

fn opts() -> Opts {
    let a = common::Args::parse(&[
        "seconds",
        "runs",
        "sync",
        "clients",
        "rate-plain",
        "rate-tls",
        "pg-url",
    ]);
    Opts {
        seconds: a.get("seconds", 4),
        runs: a.get("runs", 3),
        sync: a.get("sync", "full".to_owned()),
        clients: a.list("clients", &[1, 16, 64]),
        rate_plain: a.get("rate-plain", 5000.0),
        rate_tls: a.get("rate-tls", 1000.0),
        pg_url: Some(a.get("pg-url", String::new())).filter(|u| !u.is_empty()),
    }
}

#[path = "../../tests/util/cert.rs"]
mod cert;

/// Writes a fresh certificate and key into `dir`; returns the certificate.
fn cert(dir: &std::path::Path) -> Vec<u8> {
    let c = cert::TestCert::new();
    std::fs::write(dir.join("server.crt"), &c.cert_pem).unwrap();
    std::fs::write(dir.join("server.key"), &c.key_pem).unwrap();
    c.cert_pem
}

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// The `db` section: SQLite `bench.db`, or a fresh database on the PostgreSQL server.
fn db_section(sync: &str, pg_url: Option<&str>) -> String {
    match pg_url {
        None => format!(r#"{{"path": "bench.db", "synchronous": "{sync}"}}"#),
        Some(admin) => {
            let name = format!("bench_{}_{}", std::process::id(), common::nanos());
            let mut c = postgres::Client::connect(admin, postgres::NoTls).unwrap();
            c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
            let base = &admin[..admin.rfind('/').unwrap()];
            format!(r#"{{"url": "{base}/{name}"}}"#)
        }
    }
}

fn start(dir: &std::path::Path, tls: bool, sync: &str, pg_url: Option<&str>) -> Server {
    let tls_cfg = if tls {
        r#", "tls": {"cert_path": "server.crt", "key_path": "server.key"}"#
    } else {
        ""
    };
    let _ = std::fs::remove_file(dir.join("bench.db"));
    let level = std::env::var("BENCH_LOG_LEVEL").unwrap_or_else(|_| "info".into());
    // A free port: bind to port 0, note it, release it.
    let addr: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap();
    let port = addr.port();
    let db = db_section(sync, pg_url);
    // Every bench client comes from 127.0.0.1: lift the per-address cap.
    let config = format!(
        r#"{{"xmpp": {{"bare_jid": "push@push.example.org"}},
            "tcp": {{"host": "127.0.0.1", "port": {port}, "max_connections_per_ip": 1024{tls_cfg}}},
            "db": {db},
            "log": {{"level": "{level}", "file": "server.log"}}}}"#
    );
    std::fs::write(dir.join("configuration.json"), config).unwrap();
    let child = common::spawn_server(&dir.join("configuration.json"));
    let t0 = Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Server { child, addr }
}

fn request(device: usize, seq: u64) -> Vec<u8> {
    let mut b = format!(
        "{{\r\n  \"version\": 2,\r\n  \"action\": \"set_push_accounts\",\r\n  \"device_id\": \"{device:064x}\",\r\n  \"accounts\": [\r\n    {{\r\n      \"account_id\": \"stable-{device}\"\r\n    }},\r\n    {{\r\n      \"account_id\": \"rotating-{seq}\"\r\n    }}\r\n  ]\r\n}}"
    )
    .into_bytes();
    b.push(0);
    b
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn read_answer<S: Read + ?Sized>(s: &mut S) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    let mut buf = [0u8; 4096];
    while !out.contains(&0) {
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0, "server closed early");
        out.extend_from_slice(&buf[..n]);
    }
    out
}

const DEVICES: usize = 1000;

fn register_devices(addr: SocketAddr, tls: Option<&native_tls::TlsConnector>) {
    let tcp = TcpStream::connect(addr).unwrap();
    let mut s: Box<dyn ReadWrite> = match tls {
        None => Box::new(tcp),
        Some(c) => Box::new(c.connect("localhost", tcp).unwrap()),
    };
    for d in 0..DEVICES {
        let mut b = format!(
            r#"{{"version":2,"action":"set_channel_uri","device_id":"{d:064x}","channel_uri":"https://db5p.notify.windows.com/?token=t{d}"}}"#
        )
        .into_bytes();
        b.push(0);
        s.write_all(&b).unwrap();
        let a = read_answer(&mut s);
        assert!(
            a.starts_with(b"{\"action\":\"response\",\"status\":1"),
            "{}",
            String::from_utf8_lossy(&a)
        );
    }
}

struct Measurement {
    rate: f64,
    p50: Duration,
    p99: Duration,
    /// Server CPU (user + system) per request.
    cpu_us: f64,
    /// PostgreSQL's CPU (postmaster and backends) per request, when it is local.
    db_us: Option<f64>,
}

/// One request on a fresh connection; panics unless the answer has `status` 1.
fn one_request(addr: SocketAddr, tls: Option<&native_tls::TlsConnector>, req: &[u8]) {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_nodelay(true).unwrap();
    let answer = match tls {
        None => {
            let mut s = tcp;
            s.write_all(req).unwrap();
            read_answer(&mut s)
        }
        Some(c) => {
            let mut s = c.connect("localhost", tcp).unwrap();
            s.write_all(req).unwrap();
            read_answer(&mut s)
        }
    };
    assert!(
        answer.windows(10).any(|w| w == b"\"status\":1"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

/// Closed loop (`rate` None): each client sends its next request as soon as the last
/// was answered; latency is per request. Open loop (`rate` Some): requests are due at a
/// fixed rate whatever the answers do, taken by the next free client, and latency runs
/// from when a request was due, so a slow server shows up as latency (no coordinated
/// omission).
fn measure(
    pid: u32,
    addr: SocketAddr,
    tls: Option<Arc<native_tls::TlsConnector>>,
    clients: usize,
    seconds: u64,
    rate: Option<f64>,
    postmaster: Option<u32>,
) -> Measurement {
    let stop = Arc::new(AtomicBool::new(false));
    let seq = Arc::new(AtomicU64::new(0));
    let start = Instant::now() + Duration::from_millis(50);
    let end = start + Duration::from_secs(seconds);
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (stop, seq, tls) = (stop.clone(), seq.clone(), tls.clone());
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(100_000);
                while !stop.load(Ordering::Relaxed) {
                    let n = seq.fetch_add(1, Ordering::Relaxed);
                    let req = request(n as usize % DEVICES, n);
                    let t0 = match rate {
                        None => Instant::now(),
                        Some(r) => {
                            let due = start + Duration::from_secs_f64(n as f64 / r);
                            if due >= end {
                                break;
                            }
                            std::thread::sleep(due.saturating_duration_since(Instant::now()));
                            due
                        }
                    };
                    one_request(addr, tls.as_deref(), &req);
                    lat.push(t0.elapsed());
                }
                lat
            })
        })
        .collect();
    std::thread::sleep(start.saturating_duration_since(Instant::now()));
    let cpu0 = common::process_cpu(pid);
    let db0 = postmaster.map(common::tree_cpu);
    std::thread::sleep(end.saturating_duration_since(Instant::now()));
    stop.store(true, Ordering::Relaxed);
    let mut all: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let elapsed = start.elapsed();
    let cpu = common::process_cpu(pid) - cpu0;
    let db = db0.zip(postmaster.map(common::tree_cpu));
    all.sort();
    let pct = |p| common::percentile(&all, p);
    Measurement {
        rate: all.len() as f64 / elapsed.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
        cpu_us: cpu * 1e6 / all.len() as f64,
        db_us: db.map(|(a, b)| (b - a) * 1e6 / all.len() as f64),
    }
}

fn main() {
    let o = opts();
    let dir = std::env::temp_dir().join(format!("uwpx-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pem = cert(&dir);
    let connector = Arc::new(
        native_tls::TlsConnector::builder()
            .add_root_certificate(native_tls::Certificate::from_pem(&pem).unwrap())
            .max_protocol_version(Some(native_tls::Protocol::Tlsv12))
            .build()
            .unwrap(),
    );
    println!(
        "set_push_accounts, new connection per request, {}, {} s per run, median of {} runs",
        match &o.pg_url {
            Some(_) => "PostgreSQL (same machine)".to_owned(),
            None => format!("SQLite db.synchronous={}", o.sync),
        },
        o.seconds,
        o.runs
    );
    println!(
        "{:<6} {:>8} {:>10} {:>12} {:>10} {:>10} {:>14}",
        "mode", "clients", "load", "requests/s", "p50 ms", "p99 ms", "server CPU/req"
    );
    let postmaster = o.pg_url.as_deref().and_then(common::postmaster_pid);
    for tls in [false, true] {
        let server = start(&dir, tls, &o.sync, o.pg_url.as_deref());
        register_devices(server.addr, tls.then_some(&*connector));
        let open_rate = if tls { o.rate_tls } else { o.rate_plain };
        let scenarios = o
            .clients
            .iter()
            .map(|&c| (c, None))
            .chain(std::iter::once((64, Some(open_rate))));
        for (clients, rate) in scenarios {
            let c = tls.then(|| connector.clone());
            let mut runs: Vec<Measurement> = (0..o.runs)
                .map(|_| {
                    measure(
                        server.child.id(),
                        server.addr,
                        c.clone(),
                        clients,
                        o.seconds,
                        rate,
                        postmaster,
                    )
                })
                .collect();
            runs.sort_by(|a, b| a.rate.total_cmp(&b.rate));
            let m = &runs[runs.len() / 2];
            let db = m
                .db_us
                .map_or(String::new(), |d| format!(" + PostgreSQL {d:.0} µs"));
            println!(
                "{:<6} {:>8} {:>10} {:>12.0} {:>10.2} {:>10.2} {:>11.0} µs{db}   (runs: {})",
                if tls { "tls" } else { "plain" },
                clients,
                rate.map_or("closed".to_owned(), |r| format!("{r:.0}/s")),
                m.rate,
                m.p50.as_secs_f64() * 1e3,
                m.p99.as_secs_f64() * 1e3,
                m.cpu_us,
                runs.iter()
                    .map(|r| format!("{:.0}/{:.1}ms", r.rate, r.p99.as_secs_f64() * 1e3))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        drop(server);
        let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
        if let Some(line) = log.lines().rev().find(|l| l.contains("writes committed")) {
            println!(
                "       server: {}",
                line.split("store: ").nth(1).unwrap_or(line)
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
