//! The shutdown signal shared by every thread, and joining threads that may have
//! panicked.
//!
//! Ctrl+C and SIGTERM trigger it (see `main.rs`). Two ways to notice:
//! - [`Shutdown::is_triggered`], a flag for loops that wake up anyway (a read timeout);
//! - [`Shutdown::wait_timeout`] and [`Shutdown::signal`], for loops that sleep (expiry,
//!   the XMPP reconnect backoff): triggering drops the one sender of a zero-capacity
//!   channel, so every receiver wakes at once, with no polling.
//!
//! Blocking `accept()` is woken by the app connecting to its own listener.
//!
//! Threads: any. The flag is lock-free; the sender sits behind a mutex taken once, at
//! trigger.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded};

struct Inner {
    flag: AtomicBool,
    /// Dropped at trigger: receivers then see a disconnected channel.
    sender: Mutex<Option<Sender<()>>>,
    receiver: Receiver<()>,
}

/// A cloneable handle on one process-wide stop signal.
#[derive(Clone)]
pub struct Shutdown(Arc<Inner>);

impl Default for Shutdown {
    fn default() -> Self {
        let (tx, rx) = bounded(0);
        Self(Arc::new(Inner {
            flag: AtomicBool::new(false),
            sender: Mutex::new(Some(tx)),
            receiver: rx,
        }))
    }
}

impl std::fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Shutdown(triggered: {})", self.is_triggered())
    }
}

impl Shutdown {
    /// A signal that is not triggered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks every thread to stop after its current request, and wakes every sleeper.
    pub fn trigger(&self) {
        self.0.flag.store(true, Ordering::Release);
        drop(
            self.0
                .sender
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
    }

    /// True once [`Shutdown::trigger`] was called.
    pub fn is_triggered(&self) -> bool {
        self.0.flag.load(Ordering::Acquire)
    }

    /// Sleeps up to `d`; returns true (at once) if shutdown is or becomes triggered.
    pub fn wait_timeout(&self, d: Duration) -> bool {
        match self.0.receiver.recv_timeout(d) {
            Err(RecvTimeoutError::Timeout) => self.is_triggered(),
            // Nothing is ever sent: any other result means the sender is gone.
            _ => true,
        }
    }

    /// A channel that becomes ready (disconnected) at trigger, for `select!` beside
    /// other channels. Nothing is ever sent on it.
    pub fn signal(&self) -> &Receiver<()> {
        &self.0.receiver
    }
}

/// Joins `handle`, logging (not propagating) a panic of the thread: every thread's end
/// is accounted for, and one component's bug does not hide the others' shutdown.
pub fn join_logged<T>(handle: JoinHandle<T>) -> Option<T> {
    let name = handle.thread().name().unwrap_or("unnamed").to_owned();
    match handle.join() {
        Ok(v) => Some(v),
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            log::error!("thread {name} panicked: {why}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_sleeper_wakes_at_trigger_not_at_its_timeout() {
        let s = Shutdown::new();
        assert!(!s.wait_timeout(Duration::from_millis(1)));
        let t = {
            let s = s.clone();
            std::thread::spawn(move || {
                let start = Instant::now();
                assert!(s.wait_timeout(Duration::from_secs(60)));
                start.elapsed()
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        s.trigger();
        assert!(t.join().unwrap() < Duration::from_secs(30));
        assert!(s.is_triggered() && s.wait_timeout(Duration::from_secs(60)));
    }

    #[test]
    fn a_panicking_thread_is_joined_and_reported_not_propagated() {
        let h = std::thread::Builder::new()
            .name("boom".into())
            .spawn(|| panic!("on purpose"))
            .unwrap();
        assert_eq!(join_logged::<()>(h), None);
        assert_eq!(join_logged(std::thread::spawn(|| 7)), Some(7));
    }
}
