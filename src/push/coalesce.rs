//! Per-node burst coalescing: at most one WNS push per node per `push.min_interval_ms`.
//!
//! Real servers send bursts and duplicates (a message, its offline copy, a smacks
//! re-delivery). The first publish of a burst is sent at once; publishes inside the
//! window are answered `result` at once and folded into one trailing push, sent when
//! the window ends, carrying the latest summary. The last publish is never lost.
//!
//! Time is passed in, so tests need no sleeps.
//!
//! Threads: `xmpp-io` only. No locks.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::types::Node;

/// The coalescing state of every recently pushed node. Every operation is O(1) except a
/// sweep of idle windows once per interval, so a busy XMPP thread can call it per
/// stanza.
pub struct Coalescer<T> {
    interval: Duration,
    windows: HashMap<Node, Window<T>>,
    /// (due time, node) of trailing pushes, in due order; entries may be stale.
    queue: VecDeque<(Instant, Node)>,
    next_sweep: Option<Instant>,
}

struct Window<T> {
    sent_at: Instant,
    trailing: Option<T>,
}

/// What to do with a publish.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Send it now.
    Send,
    /// Inside the window: answer `result`; it will go out as the trailing push.
    Coalesced,
}

impl<T> Coalescer<T> {
    /// A coalescer with the given window (zero disables coalescing).
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            windows: HashMap::new(),
            queue: VecDeque::new(),
            next_sweep: None,
        }
    }

    /// Decides for a publish to `node`; `push` is kept as the trailing push if coalesced
    /// (replacing an older one: the latest summary wins).
    pub fn admit(&mut self, node: &Node, push: T, now: Instant) -> (Admit, Option<T>) {
        if self.interval.is_zero() {
            return (Admit::Send, Some(push));
        }
        self.next_sweep.get_or_insert(now + self.interval);
        match self.windows.get_mut(node) {
            Some(w) if now < w.sent_at + self.interval => {
                if w.trailing.is_none() {
                    self.queue
                        .push_back((w.sent_at + self.interval, node.clone()));
                }
                w.trailing = Some(push);
                (Admit::Coalesced, None)
            }
            Some(w) => {
                // A trailing push not yet sent is superseded by this one.
                w.sent_at = now;
                w.trailing = None;
                (Admit::Send, Some(push))
            }
            None => {
                self.windows.insert(
                    node.clone(),
                    Window {
                        sent_at: now,
                        trailing: None,
                    },
                );
                (Admit::Send, Some(push))
            }
        }
    }

    /// Trailing pushes whose window has ended; forgets idle windows now and then.
    pub fn due(&mut self, now: Instant) -> Vec<T> {
        let mut out = Vec::new();
        while self.queue.front().is_some_and(|(t, _)| *t <= now) {
            let Some((_, node)) = self.queue.pop_front() else {
                break;
            };
            if let Some(w) = self.windows.get_mut(&node)
                && let Some(push) = w.trailing.take()
            {
                out.push(push);
                w.sent_at = now; // the trailing push opens a new window
            }
        }
        if self.next_sweep.is_some_and(|t| now >= t) {
            let interval = self.interval;
            self.windows
                .retain(|_, w| w.trailing.is_some() || now < w.sent_at + interval);
            self.next_sweep = (!self.windows.is_empty()).then_some(now + interval);
        }
        out
    }

    /// When the next trailing push is due, if any (to size the I/O thread's wait).
    pub fn next_due(&self) -> Option<Instant> {
        self.queue.front().map(|(t, _)| *t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> Node {
        Node::parse(name).unwrap()
    }

    #[test]
    fn a_burst_becomes_one_push_now_and_one_trailing_push() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut c = Coalescer::new(ms(2000));
        let (n, other) = (node("n"), node("other"));
        assert_eq!(c.admit(&n, 1, t0), (Admit::Send, Some(1)));
        assert_eq!(c.admit(&n, 2, t0 + ms(10)), (Admit::Coalesced, None));
        assert_eq!(c.admit(&n, 3, t0 + ms(20)), (Admit::Coalesced, None));
        assert_eq!(c.admit(&other, 9, t0 + ms(30)), (Admit::Send, Some(9)));
        assert_eq!(c.next_due(), Some(t0 + ms(2000)));
        assert!(c.due(t0 + ms(1999)).is_empty());
        assert_eq!(c.due(t0 + ms(2000)), vec![3], "the latest summary wins");
        // The trailing push opened a new window.
        assert_eq!(c.admit(&n, 4, t0 + ms(2100)), (Admit::Coalesced, None));
        assert_eq!(c.due(t0 + ms(4000)), vec![4]);
        // Quiet nodes are forgotten, and the next publish goes straight out.
        assert!(c.due(t0 + ms(7000)).is_empty());
        assert!(c.due(t0 + ms(9500)).is_empty());
        assert!(c.windows.is_empty(), "idle windows are swept");
        assert_eq!(c.admit(&n, 5, t0 + ms(9501)), (Admit::Send, Some(5)));
        // A send after the window supersedes a trailing push not yet sent.
        assert_eq!(c.admit(&n, 6, t0 + ms(9600)), (Admit::Coalesced, None));
        assert_eq!(c.admit(&n, 7, t0 + ms(11_600)), (Admit::Send, Some(7)));
        assert!(c.due(t0 + ms(11_601)).is_empty());
    }

    #[test]
    fn a_zero_window_sends_everything() {
        let mut c = Coalescer::new(Duration::ZERO);
        let n = node("n");
        let t = Instant::now();
        assert_eq!(c.admit(&n, 1, t), (Admit::Send, Some(1)));
        assert_eq!(c.admit(&n, 2, t), (Admit::Send, Some(2)));
    }
}
