//! WNS pipeline benchmark: push jobs go through the real `WnsPool` (token cache, shared
//! keep-alive TLS notify client, classification, last-seen batching) into the
//! project's fake WNS on loopback, which answers 200.
//!
//! Run: `cargo bench --bench wns` (or `scripts/bench-wns.sh`). Options after `--`:
//! `--seconds N` (default 4), `--runs N` (default 3, median reported),
//! `--workers 1,4,16`, `--inflight N` (closed-loop jobs outstanding, default 64).
//!
//! Rows: for each worker count, a closed loop (N jobs always outstanding: the
//! saturation rate) and an open loop at half the 4-worker bar (2,500 pushes/s), where
//! latency counts from when a job was due. "our CPU" is the CPU time of the pool's own
//! threads (`wns-worker-*`, `wns-timer`) per push, read from /proc; the fake WNS and the
//! load generator run in the same process but are not counted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::unbounded;
use uwpx_push_server::app::StoreVault;
use uwpx_push_server::clock::Clock;
use uwpx_push_server::config::Config;
use uwpx_push_server::store::Store;
use uwpx_push_server::types::{ChannelUri, DeviceId};
use uwpx_push_server::wns::client::{WnsClient, parse_certs};
use uwpx_push_server::wns::token::{TokenCache, TokenVault};
use uwpx_push_server::wns::{Job, Outcome, WnsPool};

#[path = "../../tests/util/cert.rs"]
mod cert;
#[path = "../../tests/fake_wns/lib.rs"]
mod fake_wns;

#[path = "common.rs"]
mod common;

struct Opts {
    seconds: u64,
    runs: usize,
    workers: Vec<usize>,
    inflight: usize,
    rate: f64,
}

fn opts() -> Opts {
    let a = common::Args::parse(&["seconds", "runs", "workers", "inflight", "rate"]);
    Opts {
        seconds: a.get("seconds", 4),
        runs: a.get("runs", 3),
        workers: a.list("workers", &[1, 4, 16]),
        inflight: a.get("inflight", 64),
        rate: a.get("rate", 2500.0),
    }
}

struct Measurement {
    rate: f64,
    p50: Duration,
    p99: Duration,
    cpu_us: f64,
}

fn measure(
    pool: &Arc<WnsPool>,
    targets: &[(DeviceId, ChannelUri)],
    o: &Opts,
    rate: Option<f64>,
) -> Measurement {
    let (tx, rx) = unbounded::<(Instant, Outcome)>();
    let payload = br#"{"account_id":"e5397e96c6ff4d629ab9f203eec3ff17c777b2127cf1b41005e54877487ba982","action":"push","message_count":1,"pending_subscription_count":0,"version":2}"#;
    let submit = |n: u64, due: Instant| {
        let (device, channel) = &targets[n as usize % targets.len()];
        let tx = tx.clone();
        pool.submit(Job::new(
            device.clone(),
            channel.clone(),
            payload.to_vec(),
            Instant::now() + Duration::from_secs(20),
            Box::new(move |outcome| {
                let _ = tx.send((due, outcome.outcome));
            }),
        ));
    };
    let start = Instant::now();
    let end = start + Duration::from_secs(o.seconds);
    let cpu0 = common::threads_cpu("wns-");
    let mut lat = Vec::with_capacity(200_000);
    let mut sent = 0u64;
    match rate {
        None => {
            for _ in 0..o.inflight {
                submit(sent, Instant::now());
                sent += 1;
            }
            while Instant::now() < end {
                let Ok((t0, outcome)) = rx.recv_timeout(Duration::from_secs(5)) else {
                    panic!("no outcome")
                };
                assert_eq!(outcome, Outcome::Delivered);
                lat.push(t0.elapsed());
                submit(sent, Instant::now());
                sent += 1;
            }
        }
        Some(r) => {
            let interval = Duration::from_secs_f64(1.0 / r);
            let mut next = start;
            while next < end {
                let now = Instant::now();
                if now < next {
                    // Collect what came back while waiting for the next due time.
                    while let Ok((t0, outcome)) = rx.recv_timeout(next - now) {
                        assert_eq!(outcome, Outcome::Delivered);
                        lat.push(t0.elapsed());
                        if Instant::now() >= next {
                            break;
                        }
                    }
                    continue;
                }
                submit(sent, next);
                sent += 1;
                next += interval;
            }
        }
    }
    let elapsed = start.elapsed();
    let cpu = common::threads_cpu("wns-") - cpu0;
    let counted = lat.len();
    // Drain the rest so the next run starts clean (not counted in the rate).
    while (lat.len() as u64) < sent {
        let (t0, outcome) = rx.recv_timeout(Duration::from_secs(20)).expect("outcome");
        assert_eq!(outcome, Outcome::Delivered);
        lat.push(t0.elapsed());
    }
    lat.sort();
    let pct = |p| common::percentile(&lat, p);
    Measurement {
        rate: counted as f64 / elapsed.as_secs_f64(),
        p50: pct(0.5),
        p99: pct(0.99),
        cpu_us: cpu * 1e6 / sent as f64,
    }
}

fn main() {
    let o = opts();
    let dir = std::env::temp_dir().join(format!("uwpx-bench-wns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = cert::TestCert::new();
    let fake = fake_wns::FakeWns::start(&cert.cert_pem, &cert.key_pem, 0, false);
    println!(
        "WNS pipeline into the fake WNS (TLS, keep-alive), {} s per run, median of {} runs",
        o.seconds, o.runs
    );
    println!(
        "{:>8} {:>10} {:>12} {:>10} {:>10} {:>12}",
        "workers", "load", "pushes/s", "p50 ms", "p99 ms", "our CPU/push"
    );
    for &workers in &o.workers {
        let config = Config::from_value(
            &serde_json::json!({
                "xmpp": {"bare_jid": "push@push.example.org"},
                "wns": {"packet_id": fake_wns::CLIENT_ID, "client_secret": fake_wns::CLIENT_SECRET,
                        "token_url": fake.token_url(), "channel_hosts": ["localhost"],
                        "workers": workers, "queue_capacity": 100000},
                "db": {"path": dir.join(format!("bench-{workers}.db")).to_str().unwrap()},
            }),
            &dir,
        )
        .unwrap();
        let store = Arc::new(Store::open(&config.db).unwrap());
        let client = Arc::new(WnsClient::new(&config.wns, &parse_certs(&cert.cert_pem)).unwrap());
        let fetcher = client.clone();
        let vault: Arc<dyn TokenVault> = Arc::new(StoreVault(store.clone()));
        let tokens = Arc::new(TokenCache::new(
            Box::new(move || fetcher.fetch_token()),
            Some(vault),
            Clock::system().unix_now(),
        ));
        let pool = Arc::new(WnsPool::start(&config.wns, client, tokens, Clock::system()).unwrap());
        let targets: Vec<(DeviceId, ChannelUri)> = (0..1000)
            .map(|i| {
                let device = DeviceId::parse(&format!("{i:064x}")).unwrap();
                let uri = ChannelUri::parse(
                    &fake.channel_uri(&format!("c{i}")),
                    &config.wns.channel_hosts,
                )
                .unwrap();
                (device, uri)
            })
            .collect();
        // Warm up: token, TLS connections.
        let _ = measure(
            &pool,
            &targets,
            &Opts {
                seconds: 1,
                ..opts()
            },
            None,
        );
        for rate in [None, Some(o.rate)] {
            let mut runs: Vec<Measurement> = (0..o.runs)
                .map(|_| measure(&pool, &targets, &o, rate))
                .collect();
            runs.sort_by(|a, b| a.rate.total_cmp(&b.rate));
            let m = &runs[runs.len() / 2];
            println!(
                "{:>8} {:>10} {:>12.0} {:>10.2} {:>10.2} {:>9.1} µs   (runs: {})",
                workers,
                rate.map_or(format!("closed/{}", o.inflight), |r| format!("{r:.0}/s")),
                m.rate,
                m.p50.as_secs_f64() * 1e3,
                m.p99.as_secs_f64() * 1e3,
                m.cpu_us,
                runs.iter()
                    .map(|r| format!("{:.0}/{:.2}ms", r.rate, r.p99.as_secs_f64() * 1e3))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        if let Ok(pool) = Arc::try_unwrap(pool) {
            pool.stop(Duration::from_secs(5));
        }
    }
    println!(
        "fake WNS: {} connections, {} token requests",
        fake.connections(),
        fake.token_requests()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
