//! Logging: setup (stderr and `log.file`), reopening `log.file` on SIGHUP for
//! logrotate, and the throttle for lines that a client can trigger at will.
//!
//! Threads: every thread logs; a line is one `write` under the logger's own lock.
//! [`LogFile`] holds its file behind a `Mutex` (taken for one write or one swap);
//! [`Throttle`] holds a `Mutex` for a compare and an add.

use std::fs::File;
use std::io::{self, LineWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::LogConfig;

/// Starts logging to stderr and, if set, `log.file`. Returns the file's handle, for
/// [`LogFile::reopen`] on SIGHUP.
///
/// Plain lines without colour codes (a daemon's log goes to journald or a file), and a
/// `LineWriter` so a line is never split across writes (simplelog's terminal logger
/// issues several writes per line, which cost more than the request being logged).
pub fn init(config: &LogConfig) -> Result<Option<LogFile>, String> {
    use simplelog::{CombinedLogger, ConfigBuilder, LevelFilter, SharedLogger, WriteLogger};
    let mut builder = ConfigBuilder::new();
    builder
        .set_target_level(LevelFilter::Off)
        .set_thread_level(LevelFilter::Off)
        .set_time_format_rfc3339()
        // Only our own lines: driver crates log query parameters (tokio-postgres at
        // debug), and those carry secrets, device ids and channel URIs.
        .add_filter_allow_str("uwpx_push_server");
    let _ = builder.set_time_offset_to_local();
    let log_config = builder.build();
    let mut loggers: Vec<Box<dyn SharedLogger>> = vec![WriteLogger::new(
        config.level,
        log_config.clone(),
        LineWriter::new(io::stderr()),
    )];
    let file = match &config.file {
        None => None,
        Some(path) => Some(LogFile::open(path).map_err(|e| {
            format!(
                "configuration: `log.file` cannot open {}: {e}",
                path.display()
            )
        })?),
    };
    if let Some(file) = &file {
        loggers.push(WriteLogger::new(
            config.level,
            log_config,
            LineWriter::new(file.clone()),
        ));
    }
    CombinedLogger::init(loggers).map_err(|e| format!("cannot start logging: {e}"))?;
    log_panics();
    Ok(file)
}

/// Every panic, on whichever thread (pooled connection threads and library threads
/// included, which nobody joins one by one), becomes an error line in the log with the
/// thread's name, instead of raw text on stderr only.
fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        let why = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        log::error!("thread {name} panicked{at}: {why}");
    }));
}

/// `log.file`, appended to, and reopened at the same path on request: logrotate renames
/// the file and sends SIGHUP, and the next line goes to a new file at the path.
#[derive(Clone, Debug)]
pub struct LogFile {
    path: PathBuf,
    file: Arc<Mutex<File>>,
}

impl LogFile {
    /// Opens (creating) `path` for appending.
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(Self {
            path: path.to_owned(),
            file: Arc::new(Mutex::new(append(path)?)),
        })
    }

    /// Opens the path again and writes there from now on. On an error the old file is
    /// kept, so no line is lost.
    pub fn reopen(&self) -> io::Result<()> {
        let fresh = append(&self.path)?;
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let _ = file.flush();
        *file = fresh;
        Ok(())
    }

    /// The path, for log lines.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn append(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.lock().unwrap_or_else(|p| p.into_inner()).flush()
    }
}

/// Lets one log line through per interval and counts the events in between, so an
/// operator sees that something keeps happening without one line per event (a client
/// can fail TLS handshakes as fast as it can connect).
#[derive(Debug)]
pub struct Throttle {
    interval: Duration,
    state: Mutex<ThrottleState>,
}

#[derive(Debug)]
struct ThrottleState {
    /// When the last line went out; `None` before the first.
    last: Option<Instant>,
    /// Events since that line.
    count: u64,
}

impl Throttle {
    /// At most one line per `interval`.
    pub const fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::new(ThrottleState {
                last: None,
                count: 0,
            }),
        }
    }

    /// Records one event at `now`. Returns the number of events to report (this one
    /// included) when a line may go out now, else `None` and the event is counted for the
    /// next line.
    pub fn hit(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.count += 1;
        let due = s
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= self.interval);
        if !due {
            return None;
        }
        s.last = Some(now);
        Some(std::mem::take(&mut s.count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reopened_log_file_writes_to_the_new_file_at_the_path() {
        let dir = std::env::temp_dir().join(format!("uwpx-logfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("server.log");
        let mut log = LogFile::open(&path).unwrap();
        log.write_all(b"before\n").unwrap();
        std::fs::rename(&path, dir.join("server.log.1")).unwrap();
        log.reopen().unwrap();
        log.write_all(b"after\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "after\n");
        assert_eq!(
            std::fs::read_to_string(dir.join("server.log.1")).unwrap(),
            "before\n"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_throttle_lets_one_line_through_per_interval_with_the_count() {
        let t = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(t.hit(t0), Some(1));
        for s in 1..10 {
            assert_eq!(t.hit(t0 + Duration::from_secs(s)), None);
        }
        assert_eq!(t.hit(t0 + Duration::from_secs(10)), Some(10));
        assert_eq!(t.hit(t0 + Duration::from_secs(11)), None);
        assert_eq!(t.hit(t0 + Duration::from_secs(60)), Some(2));
    }
}
