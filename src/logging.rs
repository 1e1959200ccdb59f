//! Logging: the throttle for lines that a client can trigger at will.
//!
//! Threads: [`Throttle`] is shared by every thread that logs through it (a `Mutex` held
//! for a compare and an add).

use std::sync::Mutex;
use std::time::{Duration, Instant};

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
