//! Helpers shared by the benchmarks: options, CPU accounting from /proc, percentiles.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::Duration;

/// `--name value` options after `cargo bench -- …` (cargo's own `--bench` is skipped).
pub struct Args(HashMap<String, String>);

impl Args {
    pub fn parse(known: &[&str]) -> Self {
        let mut map = HashMap::new();
        let mut it = std::env::args().skip(1);
        while let Some(a) = it.next() {
            if a == "--bench" {
                continue;
            }
            let name = a
                .strip_prefix("--")
                .unwrap_or_else(|| panic!("unexpected argument {a}"));
            assert!(
                known.contains(&name),
                "unknown option --{name} (known: {known:?})"
            );
            let value = it
                .next()
                .unwrap_or_else(|| panic!("--{name} needs a value"));
            map.insert(name.to_owned(), value);
        }
        Self(map)
    }

    pub fn get<T: FromStr>(&self, name: &str, default: T) -> T {
        self.0.get(name).map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("--{name}: cannot parse {v:?}"))
        })
    }

    /// A comma-separated list, e.g. `--clients 1,16,64`.
    pub fn list(&self, name: &str, default: &[usize]) -> Vec<usize> {
        self.0.get(name).map_or(default.to_vec(), |v| {
            v.split(',').map(|x| x.parse().expect("a number")).collect()
        })
    }
}

/// Nanoseconds of the current second, to make names unique.
pub fn nanos() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

/// utime + stime (seconds) from a /proc `stat` file.
fn stat_cpu(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the ")" that closes the command name; utime and stime are 14 and 15.
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds used so far by another process (all its threads).
pub fn process_cpu(pid: u32) -> f64 {
    stat_cpu(&format!("/proc/{pid}/stat"))
}

/// CPU seconds used so far by this process's threads whose name starts with `prefix`.
pub fn threads_cpu(prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with(prefix))
        })
        .map(|t| stat_cpu(&t.path().join("stat").to_string_lossy()))
        .sum()
}

/// The `p` quantile (0..1) of sorted latencies.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1))]
}

/// Starts the real release binary with `config`, draining its stderr so it never
/// blocks on a full pipe.
pub fn spawn_server(config: &Path) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_uwpx-push-server"))
        .arg("--config")
        .arg(config)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start uwpx-push-server");
    if let Some(stderr) = child.stderr.take() {
        std::thread::spawn(move || for _ in BufReader::new(stderr).lines() {});
    }
    child
}
