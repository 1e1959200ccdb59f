//! The price of one sleep and wake-up between two threads on this machine: the floor
//! under the CPU per push at low rates (README, Performance, "why 5,000/s misses").
//!
//! A pacer thread ticks `--rate` times per second (sleeping between ticks, as a
//! thread that waits for a socket does) and wakes a sleeper through a condition
//! variable; the sleeper wakes, counts, and sleeps again. Both threads' CPU time comes
//! from `/proc/thread-self/schedstat`, so it includes the kernel's part: the futex
//! calls, the context switches and the inter-processor interrupt of a wake-up on the
//! other core. `--notify 0` leaves the sleeper asleep: the pacer's own timed sleep
//! and wake-up alone. `--rate 0` runs flat out instead (the sleeper mostly finds work without
//! sleeping), to show what the same hand-over costs when nobody sleeps.
//!
//! Run: `cargo bench --bench wake -- --rate 5000 --seconds 5 --runs 5`.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[path = "common.rs"]
mod common;

/// This thread's CPU time so far, in ns.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

struct Hand {
    seq: Mutex<(u64, bool)>,
    bell: Condvar,
}

/// One run: (pacer µs per hand-over, sleeper µs per hand-over, hand-overs).
fn run(rate: u64, seconds: u64, notify: bool, timeout: Option<Duration>) -> (f64, f64, u64) {
    let hand = Arc::new(Hand {
        seq: Mutex::new((0, false)),
        bell: Condvar::new(),
    });
    let sleeper = {
        let hand = hand.clone();
        std::thread::spawn(move || {
            let start = thread_cpu_ns();
            let mut seen = 0u64;
            let mut st = hand.seq.lock().unwrap();
            loop {
                while st.0 == seen && !st.1 {
                    st = match timeout {
                        None => hand.bell.wait(st).unwrap(),
                        Some(t) => hand.bell.wait_timeout(st, t).unwrap().0,
                    };
                }
                if st.1 {
                    break;
                }
                seen = st.0;
            }
            thread_cpu_ns() - start
        })
    };
    let start = thread_cpu_ns();
    let began = Instant::now();
    let end = began + Duration::from_secs(seconds);
    let period = (rate > 0).then(|| Duration::from_secs_f64(1.0 / rate as f64));
    let mut n = 0u64;
    while Instant::now() < end {
        if let Some(p) = period {
            let next = began + p * (n as u32 + 1);
            if let Some(d) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
        }
        if notify {
            hand.seq.lock().unwrap().0 += 1;
            hand.bell.notify_one();
        }
        n += 1;
    }
    let pacer = thread_cpu_ns() - start;
    hand.seq.lock().unwrap().1 = true;
    hand.bell.notify_one();
    let sleeper = sleeper.join().unwrap();
    (
        pacer as f64 / n as f64 / 1e3,
        sleeper as f64 / n as f64 / 1e3,
        n,
    )
}

fn main() {
    let a = common::Args::parse(&["rate", "seconds", "runs", "notify", "sleeper-timeout-ms"]);
    let (rate, seconds, runs) = (
        a.get("rate", 5000u64),
        a.get("seconds", 5),
        a.get("runs", 5),
    );
    let notify = a.get("notify", 1u8) == 1;
    let timeout = Some(a.get("sleeper-timeout-ms", 0u64))
        .filter(|&ms| ms > 0)
        .map(Duration::from_millis);
    let mut results: Vec<(f64, f64, u64)> = (0..runs)
        .map(|_| run(rate, seconds, notify, timeout))
        .collect();
    results.sort_by(|x, y| (x.0 + x.1).total_cmp(&(y.0 + y.1)));
    let m = results[results.len() / 2];
    println!(
        "hand-over between two threads at {}{}: pacer {:.1} µs + sleeper {:.1} µs = {:.1} µs CPU each (median of {runs} runs of {seconds} s; {} hand-overs in the median run)",
        if rate == 0 {
            "full speed".to_owned()
        } else {
            format!("{rate}/s")
        },
        if notify {
            ""
        } else {
            " (no hand-over: the pacer alone)"
        },
        m.0,
        m.1,
        m.0 + m.1,
        m.2
    );
}
