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
    stat_fields(&std::fs::read_to_string(path).unwrap_or_default()).1
}

/// CPU seconds used so far by another process (all its threads).
pub fn process_cpu(pid: u32) -> f64 {
    stat_cpu(&format!("/proc/{pid}/stat"))
}

/// PostgreSQL's postmaster, when it runs on this machine: the parent of the backend
/// that serves a connection to `url`.
pub fn postmaster_pid(url: &str) -> Option<u32> {
    let mut c = postgres::Client::connect(url, postgres::NoTls).ok()?;
    let backend: i32 = c.query_one("SELECT pg_backend_pid()", &[]).ok()?.get(0);
    parent_pid(u32::try_from(backend).ok()?, "postgres")
}

/// The parent of a process on this machine, if `pid` is one and its command is
/// `comm` (a pid from another host would name some unrelated local process).
pub fn parent_pid(pid: u32, comm: &str) -> Option<u32> {
    let own = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    (own.trim() == comm).then(|| ppid(pid)).flatten()
}

/// The parent of `pid`, from `/proc/PID/stat` (the field after the state).
fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_fields(&stat).0
}

/// The parent and the CPU seconds in one `/proc/PID/stat` text.
fn stat_fields(stat: &str) -> (Option<u32>, f64) {
    // Fields after the ")" that closes the command name: ppid is the 2nd, utime and
    // stime the 12th and 13th.
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let ppid = f.get(1).and_then(|v| v.parse().ok());
    (ppid, (ticks(11) + ticks(12)) / 100.0)
}

/// CPU seconds of a master process and its children (nginx's workers, PostgreSQL's
/// backends) that are alive now: one read of each process's stat.
pub fn tree_cpu(master: u32) -> f64 {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return process_cpu(master);
    };
    let children: f64 = procs
        .flatten()
        .filter(|p| {
            p.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .filter_map(|p| std::fs::read_to_string(p.path().join("stat")).ok())
        .map(|stat| stat_fields(&stat))
        .filter(|(ppid, _)| *ppid == Some(master))
        .map(|(_, cpu)| cpu)
        .sum();
    process_cpu(master) + children
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

/// Starts the real release binary with `config` (or the binary `BENCH_SERVER_BIN`
/// names, to compare two builds under one load generator), draining its stderr so it
/// never blocks on a full pipe.
pub fn spawn_server(config: &Path) -> Child {
    let binary = std::env::var("BENCH_SERVER_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_uwpx-push-server").to_owned());
    let mut child = Command::new(binary)
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

/// The CPU of one process, whole and per live thread, at one moment (see
/// [`ThreadSample::report`]).
pub struct ThreadSample {
    total: f64,
    /// Thread id → (name, CPU seconds).
    threads: HashMap<u32, (String, f64)>,
    /// Thread id → context switches (voluntary and not): how often it slept or was
    /// put aside.
    switches: HashMap<u32, u64>,
}

impl ThreadSample {
    /// Reads `/proc/PID/stat` and every `/proc/PID/task/TID/{comm,stat}`.
    pub fn take(pid: u32) -> Self {
        let mut threads = HashMap::new();
        let mut switches = HashMap::new();
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for t in tasks.flatten() {
                let Some(tid) = t.file_name().to_str().and_then(|s| s.parse().ok()) else {
                    continue;
                };
                let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
                // schedstat's first field: nanoseconds on a CPU (stat counts 10 ms ticks).
                let cpu = std::fs::read_to_string(t.path().join("schedstat"))
                    .ok()
                    .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
                    .map_or_else(
                        || stat_cpu(&t.path().join("stat").to_string_lossy()),
                        |ns| ns / 1e9,
                    );
                threads.insert(tid, (name.trim().to_owned(), cpu));
                let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
                let n: u64 = status
                    .lines()
                    .filter(|l| l.contains("ctxt_switches:"))
                    .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .sum();
                switches.insert(tid, n);
            }
        }
        Self {
            total: process_cpu(pid),
            threads,
            switches,
        }
    }

    /// CPU seconds between `self` and a later sample, by thread name with its number
    /// folded (`wns-worker-3` → `wns-worker-*`), largest first. The process total counts
    /// threads that ended in between (the kernel adds a dead thread's time to its
    /// process); what the live threads do not account for is reported as
    /// "(threads that ended)".
    pub fn report(&self, later: &ThreadSample) -> Vec<(String, f64)> {
        self.report_with_switches(later)
            .into_iter()
            .map(|(n, c, _)| (n, c))
            .collect()
    }

    /// [`Self::report`] with each group's context switches in between.
    pub fn report_with_switches(&self, later: &ThreadSample) -> Vec<(String, f64, u64)> {
        let mut groups: HashMap<String, (f64, u64)> = HashMap::new();
        let mut live = 0.0;
        for (tid, (name, cpu)) in &later.threads {
            let before = self.threads.get(tid).map_or(0.0, |(_, c)| *c);
            let d = cpu - before;
            live += d;
            let folded = name.trim_end_matches(|c: char| c.is_ascii_digit());
            let key = if folded.len() < name.len() {
                format!("{folded}*")
            } else {
                name.clone()
            };
            let sw = later.switches.get(tid).copied().unwrap_or(0)
                - self.switches.get(tid).copied().unwrap_or(0);
            let g = groups.entry(key).or_default();
            g.0 += d;
            g.1 += sw;
        }
        // The totals count 10 ms ticks: only a difference above their noise is news.
        let ended = (later.total - self.total) - live;
        let mut out: Vec<(String, f64, u64)> = groups
            .into_iter()
            .filter(|(_, (c, _))| *c > 0.0)
            .map(|(n, (c, s))| (n, c, s))
            .collect();
        if ended > 0.03 {
            out.push(("(threads that ended)".into(), ended, 0));
        }
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        out
    }
}

/// The median of some values (sorted here).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}
