//! When to try the XMPP server again: exponential backoff after a failure, a steady
//! short retry while another instance holds the component (Prosody refuses a second
//! connection with `<conflict/>`). Pure decisions; the I/O loop in `mod.rs` sleeps.
//!
//! Threads: `xmpp-io`. No locks.

use std::time::Duration;

/// The longest wait between two attempts while another instance holds the component:
/// a standby must take over within 10 s of the active instance stopping. With the
/// ±25 % jitter an attempt comes at most 3.75 s apart.
pub(super) const STANDBY_RETRY: Duration = Duration::from_secs(3);
/// The first and the longest wait of the backoff after any other failure.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// What the I/O loop does between connections: exponential backoff after a failure, a
/// steady short retry while another instance holds the component (said once at info,
/// and again only after something else happened). Pure: the waits carry no jitter;
/// the loop adds it.
#[derive(Debug)]
pub(super) struct Reconnect {
    backoff: Duration,
    standby: bool,
}

/// The decision after a connection ended or could not be made.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Retry {
    /// How long to wait before the next attempt (before jitter).
    pub wait: Duration,
    /// Whether this instance just became a standby (log that once, at info).
    pub became_standby: bool,
}

impl Reconnect {
    pub fn new() -> Self {
        Self {
            backoff: BACKOFF_FIRST,
            standby: false,
        }
    }

    /// Whether another instance holds the component, as far as the last try showed.
    pub fn is_standby(&self) -> bool {
        self.standby
    }

    /// A stream came up: the next failure starts the backoff afresh, and a later
    /// conflict is worth a log line again.
    pub fn connected(&mut self) {
        self.backoff = BACKOFF_FIRST;
        self.standby = false;
    }

    /// A connection ended or failed; `conflict` says whether another instance holds
    /// the component.
    pub fn failed(&mut self, conflict: bool) -> Retry {
        if conflict {
            let became_standby = !self.standby;
            self.standby = true;
            // The active instance may be gone by the next try: keep the backoff fresh.
            self.backoff = BACKOFF_FIRST;
            return Retry {
                wait: STANDBY_RETRY,
                became_standby,
            };
        }
        self.standby = false;
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        Retry {
            wait,
            became_standby: false,
        }
    }
}

/// Backoff with ±25 % jitter so a fleet does not reconnect in lockstep.
pub(super) fn jitter(d: Duration) -> Duration {
    let mut r = [0u8; 1];
    let f = if getrandom::fill(&mut r).is_ok() {
        0.75 + f64::from(r[0]) / 510.0
    } else {
        1.0
    };
    d.mul_f64(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conflict_makes_a_standby_that_retries_every_few_seconds_and_says_so_once() {
        let mut p = Reconnect::new();
        let first = p.failed(true);
        assert_eq!(
            first,
            Retry {
                wait: STANDBY_RETRY,
                became_standby: true
            }
        );
        // However long the other instance holds on: the same short wait, no new line.
        for _ in 0..50 {
            assert_eq!(
                p.failed(true),
                Retry {
                    wait: STANDBY_RETRY,
                    became_standby: false
                }
            );
        }
        // With the jitter, never more than 5 s apart.
        assert!(STANDBY_RETRY.mul_f64(1.25) <= Duration::from_secs(5));
        // Once connected (the other instance stopped), a later conflict is news again.
        p.connected();
        assert!(p.failed(true).became_standby);
        // Something else in between (the XMPP server restarting) is news too.
        assert_eq!(p.failed(false).wait, BACKOFF_FIRST);
        assert!(p.failed(true).became_standby);
    }

    #[test]
    fn other_failures_back_off_exponentially_up_to_a_minute() {
        let mut p = Reconnect::new();
        let waits: Vec<u64> = (0..8).map(|_| p.failed(false).wait.as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        // A conflict does not inherit the long backoff, and the backoff after it
        // starts afresh.
        assert_eq!(p.failed(true).wait, STANDBY_RETRY);
        assert_eq!(p.failed(false).wait, BACKOFF_FIRST);
        p.connected();
        assert_eq!(p.failed(false).wait, BACKOFF_FIRST);
    }
}
