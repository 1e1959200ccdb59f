//! The wall clock, as a value that can be injected.
//!
//! Every stored timestamp is unix seconds (UTC). Code that decides by the date (the
//! registration handler's `updated_at`, expiry, the "seen within the hour" shortcut on
//! the publish path, the token's expiry) reads it from a [`Clock`] it was handed, so
//! tests move time by hand instead of sleeping. Monotonic deadlines keep using
//! `Instant`, passed in as `now` by the loops that own them.
//!
//! Threads: any. A manual clock is one shared atomic; the system clock has no state.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// Where "now" comes from: the system clock, or a hand-set one in tests.
#[derive(Clone, Debug, Default)]
pub struct Clock(Option<Arc<AtomicI64>>);

impl Clock {
    /// The system's wall clock.
    pub fn system() -> Self {
        Self(None)
    }

    /// A clock that stands at `unix_secs` until moved with [`Clock::set`] or
    /// [`Clock::advance`]; clones share it.
    pub fn manual(unix_secs: i64) -> Self {
        Self(Some(Arc::new(AtomicI64::new(unix_secs))))
    }

    /// Seconds since the Unix epoch (UTC); 0 if the system clock is before 1970.
    pub fn unix_now(&self) -> i64 {
        match &self.0 {
            Some(t) => t.load(Ordering::Relaxed),
            None => system_unix_now(),
        }
    }

    /// Moves a manual clock to `unix_secs`; no effect on the system clock.
    pub fn set(&self, unix_secs: i64) {
        if let Some(t) = &self.0 {
            t.store(unix_secs, Ordering::Relaxed);
        }
    }

    /// Moves a manual clock forward by `secs`; no effect on the system clock.
    pub fn advance(&self, secs: i64) {
        if let Some(t) = &self.0 {
            t.fetch_add(secs, Ordering::Relaxed);
        }
    }
}

fn system_unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_by_hand_and_clones_share_it() {
        let c = Clock::manual(1_000);
        let d = c.clone();
        c.advance(5);
        assert_eq!(d.unix_now(), 1_005);
        d.set(7);
        assert_eq!(c.unix_now(), 7);
        assert!(Clock::system().unix_now() > 1_700_000_000);
    }
}
