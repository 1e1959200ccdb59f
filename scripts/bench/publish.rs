//! Publish benchmark: the whole inbound path of the real binary under load. A load
//! generator takes the XMPP server's place on the component port (XEP-0114), sends
//! XEP-0357 publish IQs (Prosody's shape, with the secret) for random nodes out of
//! 100,000 registered devices, and times each IQ until its reply; the server looks up
//! the node, checks the secret, POSTs to the project's fake WNS over keep-alive TLS
//! (answering 200), and replies `result`.
//!
//! Run: `cargo bench --bench publish` (or `scripts/bench-publish.sh`). Options after
//! `--`: `--seconds N` (default 5), `--runs N` (default 3, median), `--devices N`
//! (default 100000), `--rate R,R…` (open-loop rows, default 5000,20 per second),
//! `--against fake|nginx` (the WNS endpoint: the project's fake, default, or nginx,
//! which `scripts/bench-publish.sh --against nginx` installs and which is then also
//! driven by wrk for L1, the outbound leg's limit), `--window W`
//! (closed-loop IQs outstanding, default 256; 0 skips the closed-loop row), `--workers K` (wns.workers, default 4),
//! `--min-interval MS` (push.min_interval_ms, default 0: every publish is a POST;
//! the server's default is 2000, where a publish to a node pushed within the last 2 s
//! is answered at once and folded into a trailing push, and on PostgreSQL each publish
//! also decides that in the database),
//! `--pg-url URL` (PostgreSQL instead of SQLite: a fresh database is made on the server
//! URL names; `scripts/bench-publish.sh --postgres` starts a throw-away one with
//! scripts/pg.sh), `--instances N` (default 1; more than one needs `--pg-url`, and the
//! script's `--instances` implies `--postgres`): N server processes on the one
//! database, all connected as the same component; the load generator holds the N
//! component connections and sends each publish over one picked at random, as ejabberd
//! does.
//!
//! "server CPU/push" is the servers' CPU time (all processes, all their threads) per
//! reply; "per instance" is each process's CPU time per reply it sent. Under each row:
//! the load generator's, nginx's and (on a local PostgreSQL) PostgreSQL's CPU per
//! push, and the first server's by thread,
//! with the threads that ended during the run counted too.

use std::collections::HashMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uwpx_push_server::xmpp::component::handshake;
use uwpx_push_server::xmpp::reader::{ReadError, StanzaReader, StreamEvent};

#[path = "../../tests/util/cert.rs"]
mod cert;
#[path = "../../tests/fake_wns/lib.rs"]
mod fake_wns;

const JID: &str = "push.localhost";
const SECRET: &str = "bench-component-secret";

#[path = "common.rs"]
mod common;
#[path = "devices.rs"]
mod devices;
use devices::{node, populate};
#[path = "nginx.rs"]
mod nginx;
#[path = "../../tests/util/nginx.rs"]
mod nginx_process;

struct Opts {
    seconds: u64,
    runs: usize,
    devices: usize,
    rates: Vec<usize>,
    window: usize,
    workers: usize,
    /// `push.min_interval_ms` (0: no coalescing, every publish is a POST).
    min_interval_ms: u64,
    instances: usize,
    pg_url: Option<String>,
    /// `fake` (the project's fake WNS) or `nginx`.
    against: String,
}

fn opts() -> Opts {
    let a = common::Args::parse(&[
        "seconds",
        "runs",
        "devices",
        "rate",
        "window",
        "workers",
        "min-interval",
        "instances",
        "pg-url",
        "against",
    ]);
    Opts {
        instances: a.get("instances", 1),
        pg_url: Some(a.get("pg-url", String::new())).filter(|u| !u.is_empty()),
        seconds: a.get("seconds", 5),
        runs: a.get("runs", 3),
        devices: a.get("devices", 100_000),
        rates: a.list("rate", &[5000, 20]),
        against: a.get("against", "fake".to_owned()),
        window: a.get("window", 256),
        workers: a.get("workers", 4),
        min_interval_ms: a.get("min-interval", 0),
    }
}

/// The same rows as [`devices::populate`], on PostgreSQL (whose schema the first server made),
/// 1000 rows per statement.
fn populate_pg(url: &str, n: usize, channel: &dyn Fn(usize) -> String) {
    let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut tx = c.transaction().unwrap();
    for start in (0..n).step_by(1000) {
        let range = start..(start + 1000).min(n);
        let devices: Vec<String> = range
            .clone()
            .map(|i| {
                format!(
                    "('{i:064x}', '{}', 2, 'account_id', {now}, {now}, {now})",
                    channel(i)
                )
            })
            .collect();
        let accounts: Vec<String> = range
            .map(|i| {
                format!(
                    "('{i:064x}', '{:064x}', NULL, '{}', 's{i:040}', 0)",
                    i + 7,
                    node(i)
                )
            })
            .collect();
        tx.batch_execute(&format!(
            "INSERT INTO devices (device_id, channel_uri, version, account_form, created_at, updated_at, last_seen_at) VALUES {};
             INSERT INTO accounts (device_id, account_key, domain, node, secret, created_at) VALUES {};",
            devices.join(","),
            accounts.join(",")
        ))
        .unwrap();
    }
    tx.commit().unwrap();
}

/// A fresh database on the PostgreSQL server of `admin`; its URL.
fn fresh_pg_database(admin: &str) -> String {
    let name = format!("bench_publish_{}_{}", std::process::id(), common::nanos());
    let mut c = postgres::Client::connect(admin, postgres::NoTls).unwrap();
    c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
    let (base, query) = admin.split_once('?').map_or((admin, ""), |(b, q)| (b, q));
    let cut = base.rfind('/').unwrap();
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    format!("{}/{name}{query}", &base[..cut])
}

fn publish(id: u64, i: usize) -> String {
    format!(
        "<iq id='{id}' to='{JID}' from='localhost' type='set'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='{}'><item><notification xmlns='urn:xmpp:push:0'><x xmlns='jabber:x:data' type='form'><field var='FORM_TYPE' type='hidden'><value>urn:xmpp:push:summary</value></field><field var='message-count' type='text-single'><value>1</value></field><field var='pending-subscription-count' type='text-single'/><field var='last-message-sender' type='jid-single'/><field var='last-message-body' type='text-single'><value>New Message!</value></field></x></notification></item></publish><publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field><field var='secret'><value>s{i:040}</value></field></x></publish-options></pubsub></iq>",
        node(i)
    )
}

/// A tiny xorshift for picking nodes (no need for a crypto RNG here).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

struct Measurement {
    rate: f64,
    p50: Duration,
    p99: Duration,
    cpu_us: f64,
    /// CPU µs per reply of each instance.
    per_instance: Vec<f64>,
    errors: u64,
    /// CPU µs per reply of the WNS endpoint (nginx, or the fake: then it is in
    /// `loadgen_us`, which is this process).
    wns_us: f64,
    /// CPU µs per reply of the load generator (this process).
    loadgen_us: f64,
    /// CPU µs per reply of PostgreSQL (its postmaster and backends), when it runs on
    /// this machine.
    db_us: Option<f64>,
    /// The first instance's CPU µs and context switches per reply, by thread.
    threads: Vec<(String, f64, f64)>,
}

/// Where the server's POSTs go.
enum Wns {
    Fake(fake_wns::FakeWns),
    Nginx(nginx::Nginx),
}

impl Wns {
    fn channel(&self, i: usize) -> String {
        match self {
            Self::Fake(f) => f.channel_uri(&format!("c{i}")),
            Self::Nginx(n) => n.url(&format!("/?token=c{i}")),
        }
    }

    fn token_url(&self) -> String {
        match self {
            Self::Fake(f) => f.token_url(),
            Self::Nginx(n) => n.url("/accesstoken.srf"),
        }
    }

    /// CPU seconds of the endpoint when it is a process of its own.
    fn cpu(&self) -> f64 {
        match self {
            Self::Fake(_) => 0.0,
            Self::Nginx(n) => n.cpu(),
        }
    }
}

/// One instance: its process and its component connection.
struct Instance {
    pid: u32,
    conn: TcpStream,
    replies: Replies,
}

/// The load generator's side of the replies: finds each `<iq …>` start tag in what the
/// server sent and reads its `id` and `type`, without building an XML tree, so the
/// load generator takes as little of the machine's CPU as it can.
struct Replies {
    tcp: TcpStream,
    buf: Vec<u8>,
    chunk: Vec<u8>,
}

impl Replies {
    /// One read; calls `f(id, type is result, start tag)` for each complete reply
    /// whose id is a number. `Ok(false)` when the server closed the stream.
    fn read(&mut self, mut f: impl FnMut(u64, bool, &str)) -> std::io::Result<bool> {
        let n = std::io::Read::read(&mut self.tcp, &mut self.chunk)?;
        if n == 0 {
            return Ok(false);
        }
        self.buf.extend_from_slice(&self.chunk[..n]);
        let mut used = 0;
        while let Some(at) = find(&self.buf[used..], b"<iq ") {
            let start = used + at;
            let Some(len) = find(&self.buf[start..], b">") else {
                used = start;
                break;
            };
            let tag = std::str::from_utf8(&self.buf[start..start + len]).unwrap_or("");
            if let Some(id) = attr(tag, "id").and_then(|i| i.parse().ok()) {
                f(id, attr(tag, "type") == Some("result"), tag);
            }
            used = start + len;
        }
        // Keep only what may begin an unfinished tag.
        let keep = self
            .buf
            .len()
            .saturating_sub(3)
            .max(used)
            .min(self.buf.len());
        let keep = if find(&self.buf[used..], b"<iq ").is_some() {
            used
        } else {
            keep
        };
        self.buf.drain(..keep);
        Ok(true)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `name='value'` (or double quotes) in a start tag.
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let at = tag.find(&format!(" {name}="))? + name.len() + 2;
    let quote = tag[at..].chars().next()?;
    let rest = &tag[at + 1..];
    rest.find(quote).map(|end| &rest[..end])
}

/// What one connection's reader saw.
#[derive(Default)]
struct Seen {
    lat: Vec<Duration>,
    errors: u64,
    counted: u64,
}

/// Sends publishes (closed loop with `window` outstanding, or open loop at `rate`),
/// each over one of the instances' connections picked at random, and times each until
/// its reply.
fn measure(
    instances: &mut [Instance],
    o: &Opts,
    rate: Option<f64>,
    seq: &mut u64,
    wns: &Wns,
    postmaster: Option<u32>,
) -> Measurement {
    let sent_at: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let outstanding = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now() + Duration::from_millis(20);
    let end = start + Duration::from_secs(o.seconds);
    let first_id = *seq;
    let writer = {
        let (sent_at, outstanding, stop) = (sent_at.clone(), outstanding.clone(), stop.clone());
        let mut ws: Vec<TcpStream> = instances
            .iter()
            .map(|i| i.conn.try_clone().unwrap())
            .collect();
        let (window, devices) = (o.window as u64, o.devices);
        let mut id = first_id;
        std::thread::spawn(move || {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ id);
            let mut bufs = vec![String::new(); ws.len()];
            while !stop.load(Ordering::Relaxed) {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                let (due, batch) = match rate {
                    None => {
                        let free = window.saturating_sub(outstanding.load(Ordering::Acquire));
                        if free == 0 {
                            // A reader wakes us when replies free the window (spinning
                            // here took CPU from a slow server and its database).
                            std::thread::park_timeout(Duration::from_millis(2));
                            continue;
                        }
                        (now, free.min(32))
                    }
                    Some(r) => {
                        let due = start + Duration::from_secs_f64((id - first_id) as f64 / r);
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                        (due, 1)
                    }
                };
                for b in &mut bufs {
                    b.clear();
                }
                let mut map = sent_at.lock().unwrap();
                for _ in 0..batch {
                    id += 1;
                    let to = (rng.next() % bufs.len() as u64) as usize;
                    bufs[to].push_str(&publish(id, (rng.next() % devices as u64) as usize));
                    map.insert(id, due);
                }
                drop(map);
                outstanding.fetch_add(batch, Ordering::AcqRel);
                let sent = ws
                    .iter_mut()
                    .zip(&bufs)
                    .filter(|(_, b)| !b.is_empty())
                    .all(|(w, b)| w.write_all(b.as_bytes()).is_ok());
                if !sent {
                    break;
                }
            }
            id
        })
    };
    let cpu0: Vec<f64> = instances
        .iter()
        .map(|i| common::process_cpu(i.pid))
        .collect();
    let threads0 = common::ThreadSample::take(instances[0].pid);
    let (wns0, loadgen0) = (wns.cpu(), common::process_cpu(std::process::id()));
    let db0 = postmaster.map(common::tree_cpu);
    let writing_done = AtomicBool::new(false);
    let waker = writer.thread().clone();
    let seen: Vec<Seen> = std::thread::scope(|scope| {
        let readers: Vec<_> = instances
            .iter_mut()
            .map(|inst| {
                let (sent_at, outstanding, writing_done) = (&sent_at, &outstanding, &writing_done);
                let waker = &waker;
                scope.spawn(move || {
                    let mut seen = Seen::default();
                    while !(writing_done.load(Ordering::Acquire)
                        && outstanding.load(Ordering::Acquire) == 0)
                    {
                        let mut lost = false;
                        let read = inst.replies.read(|id, ok, tag| {
                            let Some(t0) = sent_at.lock().unwrap().remove(&id) else {
                                return;
                            };
                            outstanding.fetch_sub(1, Ordering::AcqRel);
                            if !ok {
                                if seen.errors == 0 {
                                    eprintln!("first error reply: {tag}");
                                }
                                seen.errors += 1;
                            }
                            seen.lat.push(t0.elapsed());
                            if Instant::now() <= end {
                                seen.counted += 1;
                            }
                        });
                        if rate.is_none() {
                            waker.unpark();
                        }
                        match read {
                            Ok(true) => {}
                            Ok(false) => lost = true,
                            Err(e)
                                if e.kind() == std::io::ErrorKind::WouldBlock
                                    || e.kind() == std::io::ErrorKind::TimedOut =>
                            {
                                if Instant::now() > end + Duration::from_secs(30) {
                                    panic!(
                                        "{} replies missing",
                                        outstanding.load(Ordering::Acquire)
                                    );
                                }
                            }
                            Err(e) => panic!("{e:?}"),
                        }
                        assert!(!lost, "stream ended");
                    }
                    seen
                })
            })
            .collect();
        while !writer.is_finished() {
            std::thread::sleep(Duration::from_millis(5));
        }
        writing_done.store(true, Ordering::Release);
        readers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    stop.store(true, Ordering::Relaxed);
    *seq = writer.join().unwrap();
    let elapsed = o.seconds as f64;
    let threads1 = common::ThreadSample::take(instances[0].pid);
    let (wns1, loadgen1) = (wns.cpu(), common::process_cpu(std::process::id()));
    let db1 = postmaster.map(common::tree_cpu);
    let cpu: Vec<f64> = instances
        .iter()
        .zip(&cpu0)
        .map(|(i, c0)| common::process_cpu(i.pid) - c0)
        .collect();
    let per_instance = cpu
        .iter()
        .zip(&seen)
        .map(|(c, s)| c * 1e6 / s.lat.len().max(1) as f64)
        .collect();
    let mut lat: Vec<Duration> = seen.iter().flat_map(|s| s.lat.iter().copied()).collect();
    lat.sort();
    let pct = |p| common::percentile(&lat, p);
    let replies = lat.len().max(1) as f64;
    let first = seen[0].lat.len().max(1) as f64;
    Measurement {
        wns_us: (wns1 - wns0) * 1e6 / replies,
        loadgen_us: (loadgen1 - loadgen0) * 1e6 / replies,
        db_us: db0.zip(db1).map(|(a, b)| (b - a) * 1e6 / replies),
        threads: threads0
            .report_with_switches(&threads1)
            .into_iter()
            .map(|(n, c, s)| (n, c * 1e6 / first, s as f64 / first))
            .collect(),
        rate: seen.iter().map(|s| s.counted).sum::<u64>() as f64 / elapsed,
        p50: pct(0.5),
        p99: pct(0.99),
        cpu_us: cpu.iter().sum::<f64>() * 1e6 / lat.len() as f64,
        per_instance,
        errors: seen.iter().map(|s| s.errors).sum(),
    }
}

/// Sends one publish at once and times its reply.
fn first_push(inst: &mut Instance) -> Duration {
    let t = Instant::now();
    inst.conn.write_all(publish(0, 0).as_bytes()).unwrap();
    let mut answered = None;
    while answered.is_none() {
        match inst.replies.read(|id, ok, tag| {
            if id == 0 {
                assert!(ok, "the first push failed: {tag}");
                answered = Some(t.elapsed());
            }
        }) {
            Ok(true) => {}
            Ok(false) => panic!("stream ended"),
            Err(_) => assert!(t.elapsed() < Duration::from_secs(30), "no reply"),
        }
    }
    answered.unwrap_or_default()
}

/// Plays the XMPP server for one instance: accepts its connection, opens the stream,
/// checks the handshake.
fn accept_instance(component: &TcpListener, pid: u32, n: usize) -> Instance {
    let (tcp, _) = component.accept().unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut reader = StanzaReader::new(tcp.try_clone().unwrap());
    let Ok(StreamEvent::Open(_)) = reader.next_event() else {
        panic!("no stream header")
    };
    let sid = format!("bench{n}");
    write!(reader.get_mut(), "<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' id='{sid}' from='{JID}'>").unwrap();
    let hs = loop {
        match reader.next_event() {
            Ok(StreamEvent::Stanza(e)) => break e,
            Err(ReadError::Idle) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(hs.text(), handshake(&sid, SECRET));
    reader.get_mut().write_all(b"<handshake/>").unwrap();
    drop(reader);
    Instance {
        pid,
        replies: Replies {
            tcp: tcp.try_clone().unwrap(),
            buf: Vec::new(),
            chunk: vec![0; 64 * 1024],
        },
        conn: tcp,
    }
}

fn main() {
    let o = opts();
    assert!(
        o.instances == 1 || o.pg_url.is_some(),
        "--instances {} needs --pg-url URL: several instances share one PostgreSQL database (scripts/bench-publish.sh --instances starts one)",
        o.instances
    );
    let dir = std::env::temp_dir().join(format!("uwpx-bench-publish-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let c = cert::TestCert::new();
    std::fs::write(dir.join("ca.pem"), &c.cert_pem).unwrap();
    let wns = match o.against.as_str() {
        "fake" => Wns::Fake(fake_wns::FakeWns::start(&c.cert_pem, &c.key_pem, 0, false)),
        "nginx" => Wns::Nginx(nginx::Nginx::start(&dir, &c.cert_pem, &c.key_pem)),
        other => panic!("--against {other}: fake or nginx"),
    };
    let channel = |i: usize| wns.channel(i);
    let pg_url = o.pg_url.as_deref().map(fresh_pg_database);
    let postmaster = pg_url.as_deref().and_then(common::postmaster_pid);
    let t = Instant::now();
    if pg_url.is_none() {
        populate(&dir.join("bench.db"), o.devices, &channel);
    }

    let component = TcpListener::bind("127.0.0.1:0").unwrap();
    let db = match &pg_url {
        Some(url) => serde_json::json!({"url": url}),
        None => match std::env::var("BENCH_MMAP_MB") {
            Ok(mb) => {
                serde_json::json!({"path": "bench.db", "mmap_size_mb": mb.parse::<u64>().unwrap()})
            }
            Err(_) => serde_json::json!({"path": "bench.db"}),
        },
    };
    let config = serde_json::json!({
        "wns": {"packet_id": fake_wns::CLIENT_ID, "client_secret": fake_wns::CLIENT_SECRET,
                "token_url": wns.token_url(), "ca_file": dir.join("ca.pem"), "channel_hosts": ["localhost"],
                "workers": o.workers, "queue_capacity": 100000},
        "xmpp": {"bare_jid": "push@localhost",
                 "component": {"jid": JID, "secret": SECRET, "host": "127.0.0.1", "port": component.local_addr().unwrap().port()}},
        "tcp": {"host": "127.0.0.1", "port": 0},
        "db": db,
        "push": {"min_interval_ms": o.min_interval_ms},
        "log": {"level": std::env::var("BENCH_LOG_LEVEL").unwrap_or_else(|_| "info".into())},
    });
    std::fs::write(
        dir.join("configuration.json"),
        serde_json::to_vec(&config).unwrap(),
    )
    .unwrap();
    // The first server makes the schema; on PostgreSQL the devices are stored once it
    // has (it is connected by then), before the others start.
    let mut servers = vec![common::spawn_server(&dir.join("configuration.json"))];
    let mut instances = vec![accept_instance(&component, servers[0].id(), 0)];
    if let Some(url) = &pg_url {
        populate_pg(url, o.devices, &channel);
    } else {
        // The first push right after the component session is up: WNS connections and
        // the token should be ready by then (SQLite only: with PostgreSQL the devices
        // are stored after the start).
        let first = first_push(&mut instances[0]);
        println!(
            "first push after the session is up: {:.1} ms",
            first.as_secs_f64() * 1e3
        );
    }
    println!(
        "{} devices stored in {:.1} s ({})",
        o.devices,
        t.elapsed().as_secs_f64(),
        if pg_url.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        }
    );
    for n in 1..o.instances {
        let server = common::spawn_server(&dir.join("configuration.json"));
        instances.push(accept_instance(&component, server.id(), n));
        servers.push(server);
    }

    let mut seq = 0u64;
    // Warm up: token, TLS connections, page cache.
    let _ = measure(
        &mut instances,
        &Opts {
            seconds: 2,
            window: o.window.max(256),
            ..opts()
        },
        None,
        &mut seq,
        &wns,
        postmaster,
    );
    println!(
        "publish → WNS → reply through the real binary, {} instance(s) on {}, {} devices, {} WNS workers each, {} s per run, median of {} runs",
        o.instances,
        if pg_url.is_some() {
            "one PostgreSQL database"
        } else {
            "SQLite"
        },
        o.devices,
        o.workers,
        o.seconds,
        o.runs
    );
    println!(
        "{:>14} {:>10} {:>10} {:>10} {:>16} {:>7}   per instance CPU/push",
        "load", "pushes/s", "p50 ms", "p99 ms", "server CPU/push", "errors"
    );
    let mut p1 = 0.0;
    let rates = o.rates.iter().map(|&r| Some(r as f64));
    for rate in std::iter::once(None).filter(|_| o.window > 0).chain(rates) {
        let mut runs: Vec<Measurement> = (0..o.runs)
            .map(|_| measure(&mut instances, &o, rate, &mut seq, &wns, postmaster))
            .collect();
        runs.sort_by(|a, b| a.rate.total_cmp(&b.rate));
        let m = &runs[runs.len() / 2];
        println!(
            "{:>14} {:>10.0} {:>10.2} {:>10.2} {:>13.1} µs {:>7}   {}   (runs: {})",
            rate.map_or(format!("closed/{}", o.window), |r| format!("{r:.0}/s")),
            m.rate,
            m.p50.as_secs_f64() * 1e3,
            m.p99.as_secs_f64() * 1e3,
            m.cpu_us,
            m.errors,
            m.per_instance
                .iter()
                .map(|c| format!("{c:.0} µs"))
                .collect::<Vec<_>>()
                .join(" / "),
            runs.iter()
                .map(|r| format!("{:.0}/{:.2}ms", r.rate, r.p99.as_secs_f64() * 1e3))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let mut endpoint = match wns {
            Wns::Fake(_) => "the fake WNS is in the load generator".to_owned(),
            Wns::Nginx(_) => format!("nginx {:.1} µs", m.wns_us),
        };
        if let Some(db) = m.db_us {
            endpoint.push_str(&format!(", PostgreSQL {db:.1} µs"));
        }
        println!(
            "{:>14} CPU per push: load generator {:.1} µs, {endpoint}; server by thread: {}",
            "",
            m.loadgen_us,
            m.threads
                .iter()
                .map(|(n, c, s)| format!("{n} {c:.1} µs ({s:.2} switches)"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if rate.is_none() {
            p1 = m.rate;
        }
    }
    match &wns {
        Wns::Fake(fake) => println!(
            "fake WNS: {} POSTs, {} connections",
            fake.notifies(),
            fake.connections()
        ),
        Wns::Nginx(n) => {
            // L1: the same nginx, the same request shape, driven by wrk.
            let body = uwpx_push_server::wns::payload::push(
                uwpx_push_server::types::ClientGeneration::V2,
                &format!("{:064x}", 7),
                &Default::default(),
            );
            let l1: Vec<(f64, f64, f64)> =
                (0..o.runs).map(|_| n.wrk(&body, 64, o.seconds)).collect();
            let mut by_rate = l1.clone();
            by_rate.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (rate, wrk_cpu, nginx_cpu) = by_rate[by_rate.len() / 2];
            let total = rate * o.seconds as f64;
            println!(
                "{:>14} {:>10.0}   L1: wrk -t2 -c64 POSTs to the same nginx; CPU per request: nginx {:.1} µs, wrk {:.1} µs   (runs: {})",
                "L1 nginx",
                rate,
                nginx_cpu * 1e6 / total,
                wrk_cpu * 1e6 / total,
                l1.iter()
                    .map(|r| format!("{:.0}", r.0))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            println!("P1 / L1 = {:.1} %", 100.0 * p1 / rate);
        }
    }
    for server in &mut servers {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(server.id().to_string())
            .status();
        let _ = server.wait();
    }
    if let Some(url) = &pg_url {
        // The database goes with the run.
        let name = url
            .rsplit('/')
            .next()
            .unwrap_or("")
            .split('?')
            .next()
            .unwrap_or("");
        let admin = o.pg_url.as_deref().unwrap_or_default();
        if let Ok(mut c) = postgres::Client::connect(admin, postgres::NoTls) {
            let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {name}"));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
