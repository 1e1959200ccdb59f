//! Name resolution for both WNS clients (the token request's ureq agent and the notify
//! client): a short-lived cache, so a host is looked up at most once per TTL however
//! many pushes go to it, and a lookup that can be abandoned after its timeout.
//!
//! Threads: any. A lookup that misses the cache runs on a short-lived `wns-resolve`
//! thread; it is not joined (getaddrinfo cannot be interrupted) and ends by itself.
//! One lock, held for a map operation, never across the lookup.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// When a `host:port` was looked up, and its addresses.
type Resolved = (Instant, Arc<[SocketAddr]>);

/// Name resolution with a short-lived cache, shared by the notify client and the ureq
/// agent of the token request: a host is looked up at most once per `ttl`, however
/// many pushes go to it, and a lookup is abandoned after its timeout.
#[derive(Debug)]
pub struct CachingResolver {
    ttl: Duration,
    cache: Mutex<HashMap<String, Resolved>>,
    lookups: AtomicU64,
}

impl CachingResolver {
    /// A resolver that keeps each answer for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            cache: Mutex::new(HashMap::new()),
            lookups: AtomicU64::new(0),
        }
    }

    /// Lookups that went past the cache (tests, metrics).
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }

    /// The addresses of `host:port` in the system resolver's order, from the cache if
    /// they were looked up less than `ttl` ago. A lookup taking longer than `timeout`
    /// fails with `TimedOut`.
    pub fn resolve(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> io::Result<Arc<[SocketAddr]>> {
        let key = format!("{host}:{port}");
        let now = Instant::now();
        let cache = || self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, addrs)) = cache().get(&key)
            && now.duration_since(*at) < self.ttl
        {
            return Ok(addrs.clone());
        }
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let addrs: Arc<[SocketAddr]> = lookup(host, port, timeout)?.into();
        if addrs.is_empty() {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no address"));
        }
        cache().insert(key, (now, addrs.clone()));
        Ok(addrs)
    }
}

/// One system lookup, abandoned after `timeout` (the thread then ends on its own).
fn lookup(host: &str, port: u16, timeout: Duration) -> io::Result<Vec<SocketAddr>> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let (tx, rx) = mpsc::sync_channel(1);
    let name = format!("{host}:{port}");
    std::thread::Builder::new()
        .name("wns-resolve".into())
        .spawn(move || {
            let _ = tx.send(name.to_socket_addrs().map(Iterator::collect));
        })?;
    match rx.recv_timeout(timeout) {
        Ok(result) => result,
        Err(mpsc::RecvTimeoutError::Timeout) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer within {timeout:?}"),
        )),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(io::Error::other(
            "the lookup thread ended without an answer",
        )),
    }
}
