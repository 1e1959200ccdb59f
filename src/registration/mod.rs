//! The registration service: the TCP/TLS listener UWPX devices talk to.
//!
//! Data flows one way: socket → [`codec`] (frame, decode, validate) → [`handler`]
//! (store) → [`wire`] (answer bytes) → socket. [`conn`] owns the socket side.
//!
//! Threads: `reg-accept` runs the accept loop. Each connection is served start to end by
//! one `reg-conn` thread, up to `tcp.max_connections` at once, and up to
//! `tcp.max_connections_per_ip` from one source (an IPv4 address or an IPv6 /64, see
//! [`Source`]), so that one host cannot take every slot. A `reg-conn` thread that
//! finished its connection waits up to [`IDLE_THREAD`] to be handed the next one, so a
//! burst of short connections (one request each, like the real client) does not pay a
//! thread creation per connection; idle threads end on their own. Over the cap, up to
//! [`REJECTERS`] short-lived `reg-reject` threads answer "busy" and close; past that,
//! connections are dropped. Nothing here builds SQL: the store is reached through the
//! handler.
//!
//! Memory: request bytes beyond a small allowance per connection come from one
//! [`conn::Budget`] shared by all connections, so many large requests at once are
//! answered busy instead of growing the process.
//!
//! Locks: the per-source counts (a `Mutex<HashMap>`), held for one lookup when a
//! connection starts and one when it ends.

pub mod codec;
pub mod conn;
pub mod handler;
pub mod wire;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, TrySendError};

use conn::{Budget, ConnContext};

/// How many over-the-cap connections may be answered "busy" at once.
pub const REJECTERS: usize = 64;

/// How long a `reg-conn` thread without a connection waits for the next one.
pub const IDLE_THREAD: Duration = Duration::from_secs(30);

/// Stack size of connection threads: serde_json's recursion limit and an OpenSSL
/// handshake fit comfortably, and 1024 threads stay cheap.
const CONN_STACK: usize = 512 * 1024;

/// A bound listener that has not started accepting yet.
pub struct RegistrationServer {
    listener: TcpListener,
    addr: SocketAddr,
    caps: Caps,
}

/// How many connections may be in service at once.
#[derive(Debug, Clone, Copy)]
struct Caps {
    total: usize,
    per_source: usize,
}

/// The running accept loop and its connection counter.
pub struct Running {
    accept: JoinHandle<()>,
    active: Arc<AtomicUsize>,
    threads: Arc<AtomicUsize>,
}

impl RegistrationServer {
    /// Binds the listener, so a port conflict fails at start with a clear error.
    /// `max_connections` caps the connections in service, `max_per_ip` those from one
    /// [`Source`].
    pub fn bind(addr: SocketAddr, max_connections: usize, max_per_ip: usize) -> io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        Ok(Self {
            listener,
            addr,
            caps: Caps {
                total: max_connections,
                per_source: max_per_ip,
            },
        })
    }

    /// The bound address (with the real port when the configured port was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts the `reg-accept` thread.
    pub fn start(self, ctx: Arc<ConnContext>) -> io::Result<Running> {
        let active = Arc::new(AtomicUsize::new(0));
        let threads = Arc::new(AtomicUsize::new(0));
        let counters = Counters {
            active: active.clone(),
            threads: threads.clone(),
        };
        let accept = thread::Builder::new()
            .name("reg-accept".into())
            .spawn(move || accept_loop(self.listener, self.caps, ctx, counters))?;
        Ok(Running {
            accept,
            active,
            threads,
        })
    }
}

impl Running {
    /// Waits for the accept loop to end (after shutdown was triggered and the loop was
    /// woken), then up to `grace` for connections to finish their request in flight and
    /// for every `reg-conn` thread to end (idle ones end as soon as the loop is gone).
    /// Returns how many connections were still open when the grace ran out.
    pub fn join(self, grace: Duration) -> usize {
        if self.accept.join().is_err() {
            log::error!("registration: accept thread panicked");
        }
        let deadline = Instant::now() + grace;
        while self.threads.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        self.active.load(Ordering::Acquire)
    }
}

/// Decrements a counter when dropped, including when the thread panics.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Where connections come from, for `tcp.max_connections_per_ip`: an IPv4 address, or
/// the /64 prefix of an IPv6 address (one subscriber's network usually has a whole /64,
/// so counting single IPv6 addresses would cap nothing). An IPv4-mapped IPv6 address
/// counts as its IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(IpAddr);

impl Source {
    /// The source of a peer address.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !(u128::MAX >> 64);
                    Self(IpAddr::V6(Ipv6Addr::from(prefix)))
                }
            },
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// Connections in service per [`Source`].
type PerSource = Arc<Mutex<HashMap<Source, usize>>>;

/// One connection counted against its source; uncounted when dropped.
struct SourceSlot {
    counts: PerSource,
    source: Source,
}

impl SourceSlot {
    /// Counts a connection from `source`, unless `cap` are in service from there.
    fn take(counts: &PerSource, source: Source, cap: usize) -> Option<Self> {
        let mut map = counts.lock().unwrap_or_else(PoisonError::into_inner);
        let n = map.entry(source).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(Self {
            counts: counts.clone(),
            source,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.source);
            }
        }
    }
}

/// A connection on its way to a `reg-conn` thread, with its source counted.
struct Accepted {
    stream: TcpStream,
    source: SourceSlot,
}

/// Connections in service, and `reg-conn` threads alive (serving or idle).
struct Counters {
    active: Arc<AtomicUsize>,
    threads: Arc<AtomicUsize>,
}

fn accept_loop(listener: TcpListener, caps: Caps, ctx: Arc<ConnContext>, counters: Counters) {
    let Counters { active, threads } = counters;
    let budget = Arc::new(Budget::new(ctx.max_request_bytes));
    let rejecting = Arc::new(AtomicUsize::new(0));
    let per_source: PerSource = Arc::new(Mutex::new(HashMap::new()));
    let (idle_tx, idle_rx) = crossbeam_channel::bounded::<Accepted>(0);
    let mut backoff = Duration::from_millis(5);
    let mut last_busy_warning: Option<Instant> = None;
    let mut last_source_warning: Option<Instant> = None;
    loop {
        let (stream, peer) = match listener.accept() {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                (stream, peer)
            }
            Err(e) => {
                if ctx.shutdown.is_triggered() {
                    break;
                }
                // EMFILE and friends: keep serving the connections we have.
                log::warn!("registration: accept failed: {e}; retrying in {backoff:?}");
                thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        if ctx.shutdown.is_triggered() {
            break;
        }
        if active.load(Ordering::Acquire) >= caps.total {
            spawn_rejecter(stream, &ctx, &rejecting);
            if last_busy_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                log::warn!(
                    "registration: over tcp.max_connections ({}), answering busy",
                    caps.total
                );
                last_busy_warning = Some(Instant::now());
            }
            continue;
        }
        let source = Source::of(peer.ip());
        let Some(source) = SourceSlot::take(&per_source, source, caps.per_source) else {
            spawn_rejecter(stream, &ctx, &rejecting);
            if last_source_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                log::warn!(
                    "registration: {source} is over tcp.max_connections_per_ip ({}), answering busy",
                    caps.per_source
                );
                last_source_warning = Some(Instant::now());
            }
            continue;
        };
        active.fetch_add(1, Ordering::AcqRel);
        // An idle thread takes it if one is waiting (rendezvous channel); otherwise a
        // new thread starts with it.
        let accepted = match idle_tx.try_send(Accepted { stream, source }) {
            Ok(()) => continue,
            Err(TrySendError::Full(a) | TrySendError::Disconnected(a)) => a,
        };
        let slot = Slot(active.clone());
        threads.fetch_add(1, Ordering::AcqRel);
        let alive = Slot(threads.clone());
        let (ctx, idle_rx, budget) = (ctx.clone(), idle_rx.clone(), budget.clone());
        let spawned = thread::Builder::new()
            .name("reg-conn".into())
            .stack_size(CONN_STACK)
            .spawn(move || {
                let _alive = alive;
                conn_thread(accepted, slot, &ctx, &budget, &idle_rx);
            });
        if let Err(e) = spawned {
            // The closure (and with it the slot and the stream) was dropped.
            log::warn!("registration: cannot start a connection thread: {e}");
        }
    }
    log::info!("registration: stopped accepting");
}

/// A `reg-conn` thread: serves its first connection, then each one handed to it while
/// it waits idle, until none comes within [`IDLE_THREAD`] or the accept loop ended.
fn conn_thread(
    first: Accepted,
    slot: Slot,
    ctx: &ConnContext,
    budget: &Budget,
    idle: &Receiver<Accepted>,
) {
    let counter = slot.0.clone();
    conn::serve(first.stream, ctx, budget);
    drop((slot, first.source));
    loop {
        match idle.recv_timeout(IDLE_THREAD) {
            Ok(accepted) => {
                // The accept loop counted this connection before handing it over.
                let slot = Slot(counter.clone());
                conn::serve(accepted.stream, ctx, budget);
                drop((slot, accepted.source));
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn spawn_rejecter(stream: TcpStream, ctx: &Arc<ConnContext>, rejecting: &Arc<AtomicUsize>) {
    if rejecting.load(Ordering::Acquire) >= REJECTERS {
        return; // dropping the stream closes it
    }
    rejecting.fetch_add(1, Ordering::AcqRel);
    let slot = Slot(rejecting.clone());
    let ctx = ctx.clone();
    let spawned = thread::Builder::new()
        .name("reg-reject".into())
        .stack_size(CONN_STACK)
        .spawn(move || {
            let _slot = slot;
            conn::reject(stream, ctx.tls.as_ref(), &ctx.shutdown);
        });
    if spawned.is_err() {
        log::warn!("registration: cannot start a reject thread");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(ip: &str) -> String {
        Source::of(ip.parse().unwrap()).to_string()
    }

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_slash_64s() {
        assert_eq!(source("192.0.2.7"), "192.0.2.7");
        assert_eq!(source("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(source("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(
            Source::of("2001:db8:1:2:aaaa::1".parse().unwrap()),
            Source::of("2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap())
        );
        assert_ne!(source("2001:db8:1:3::1"), source("2001:db8:1:2::1"));
    }

    #[test]
    fn a_source_gets_its_cap_and_its_slots_back() {
        let counts: PerSource = Arc::default();
        let a = Source::of("192.0.2.1".parse().unwrap());
        let b = Source::of("192.0.2.2".parse().unwrap());
        let held: Vec<_> = (0..3)
            .map(|_| SourceSlot::take(&counts, a, 3).unwrap())
            .collect();
        assert!(SourceSlot::take(&counts, a, 3).is_none());
        assert!(SourceSlot::take(&counts, b, 3).is_some());
        drop(held);
        assert!(counts.lock().unwrap().is_empty());
        assert!(SourceSlot::take(&counts, a, 3).is_some());
    }
}
