//! The idle connections of the notify client: per `host:port`, last in first out (the
//! most recently used is the least likely to have been closed by the server), capped
//! per host and in total. Nothing here probes a connection: one idle past the limit is
//! closed unused, and the client sends again when a pooled one turns out closed.
//!
//! Threads: any; one lock, held for a list operation. Connections are closed (dropped)
//! after it is released.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A pooled connection idle longer than this is closed rather than used: servers drop
/// idle connections after a while (nginx after 75 s by default), and a connection the
/// server closed costs a failed write and a resend.
pub const IDLE_LIMIT: Duration = Duration::from_secs(30);

/// How many idle connections the pool keeps.
#[derive(Debug, Clone, Copy)]
pub struct PoolLimits {
    /// Per `host:port`.
    pub per_host: usize,
    /// Over all hosts.
    pub total: usize,
}

/// Idle connections (`C`) by `host:port`.
pub struct Pool<C> {
    idle: Mutex<Idle<C>>,
    limits: PoolLimits,
    /// [`IDLE_LIMIT`] (shorter in tests).
    pub(super) idle_limit: Duration,
}

struct Idle<C> {
    /// Per authority, oldest first, each with the instant it went idle.
    hosts: HashMap<String, Vec<(Instant, C)>>,
    count: usize,
}

impl<C> Pool<C> {
    /// An empty pool.
    pub fn new(limits: PoolLimits) -> Self {
        Self {
            idle: Mutex::new(Idle {
                hosts: HashMap::new(),
                count: 0,
            }),
            limits,
            idle_limit: IDLE_LIMIT,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Idle<C>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The caps.
    pub fn limits(&self) -> PoolLimits {
        self.limits
    }

    /// Idle connections in all.
    pub fn idle(&self) -> usize {
        self.lock().count
    }

    /// Idle connections to `authority`.
    pub fn idle_for(&self, authority: &str) -> usize {
        self.lock().hosts.get(authority).map_or(0, Vec::len)
    }

    /// The most recently used idle connection to `authority`, if it has not been idle
    /// past the limit.
    pub fn take(&self, authority: &str) -> Option<C> {
        let now = Instant::now();
        let mut guard = self.lock();
        let Idle { hosts, count } = &mut *guard;
        let list = hosts.get_mut(authority)?;
        let (since, _) = list.last()?;
        if now.duration_since(*since) <= self.idle_limit {
            *count -= 1;
            return list.pop().map(|(_, c)| c);
        }
        // The newest is too old, so all are: close them outside the lock.
        let expired = std::mem::take(list);
        *count -= expired.len();
        drop(guard);
        drop(expired);
        None
    }

    /// Returns a connection; over a cap, the oldest idle one (of this host, or of any
    /// host) is closed instead.
    pub fn put(&self, authority: &str, conn: C) {
        let PoolLimits { per_host, total } = self.limits;
        if per_host == 0 || total == 0 {
            return;
        }
        let now = Instant::now();
        let mut guard = self.lock();
        let Idle { hosts, count } = &mut *guard;
        let evicted = if hosts.get(authority).is_some_and(|l| l.len() >= per_host) {
            hosts.get_mut(authority).map(|l| l.remove(0))
        } else if *count >= total {
            hosts
                .values_mut()
                .filter(|l| !l.is_empty())
                .min_by_key(|l| l.first().map(|(since, _)| *since))
                .map(|l| l.remove(0))
        } else {
            None
        };
        if evicted.is_none() {
            *count += 1;
        }
        match hosts.get_mut(authority) {
            Some(list) => list.push((now, conn)),
            None => {
                hosts.insert(authority.to_owned(), vec![(now, conn)]);
            }
        }
        drop(guard);
        drop(evicted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_in_first_out_with_the_oldest_evicted_over_a_cap() {
        let pool = Pool::new(PoolLimits {
            per_host: 2,
            total: 3,
        });
        for n in [1, 2, 3] {
            pool.put("a:443", n);
        }
        assert_eq!((pool.idle(), pool.idle_for("a:443")), (2, 2), "1 went");
        pool.put("b:443", 10);
        pool.put("b:443", 11);
        assert_eq!(pool.idle(), 3, "the total cap closed a's oldest");
        assert_eq!(pool.take("a:443"), Some(3));
        assert_eq!(pool.take("a:443"), None);
        assert_eq!(
            pool.take("b:443"),
            Some(11),
            "the most recently returned first"
        );
        assert_eq!(pool.take("c:443"), None);
        assert_eq!(pool.idle(), 1);
    }

    #[test]
    fn connections_idle_past_the_limit_are_dropped_unused() {
        let mut pool = Pool::new(PoolLimits {
            per_host: 4,
            total: 4,
        });
        pool.idle_limit = Duration::from_millis(30);
        pool.put("a:443", 1);
        pool.put("a:443", 2);
        std::thread::sleep(Duration::from_millis(60));
        pool.put("b:443", 3);
        assert_eq!(pool.take("a:443"), None);
        assert_eq!((pool.idle(), pool.idle_for("a:443")), (1, 0), "both closed");
        assert_eq!(pool.take("b:443"), Some(3));
        let none = Pool::new(PoolLimits {
            per_host: 0,
            total: 0,
        });
        none.put("a:443", 1);
        assert_eq!(none.idle(), 0);
    }
}
