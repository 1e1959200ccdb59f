//! The registration service: the TCP/TLS listener UWPX devices talk to.
//!
//! Data flows one way: socket → [`codec`] (frame, decode, validate) → [`handler`]
//! (store) → [`wire`] (answer bytes) → socket. [`conn`] owns the socket side.
//!
//! Threads: `reg-accept` runs the accept loop. Each connection is served start to end by
//! one `reg-conn` thread, up to `tcp.max_connections` at once. A `reg-conn` thread that
//! finished its connection waits up to [`IDLE_THREAD`] to be handed the next one, so a
//! burst of short connections (one request each, like the real client) does not pay a
//! thread creation per connection; idle threads end on their own. Over the cap, up to
//! [`REJECTERS`] short-lived `reg-reject` threads answer "busy" and close; past that,
//! connections are dropped. Nothing here builds SQL: the store is reached through the
//! handler.

pub mod codec;
pub mod conn;
pub mod handler;
pub mod wire;

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, TrySendError};

use conn::ConnContext;

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
    max_connections: usize,
}

/// The running accept loop and its connection counter.
pub struct Running {
    accept: JoinHandle<()>,
    active: Arc<AtomicUsize>,
    threads: Arc<AtomicUsize>,
}

impl RegistrationServer {
    /// Binds the listener, so a port conflict fails at start with a clear error.
    pub fn bind(addr: SocketAddr, max_connections: usize) -> io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        Ok(Self {
            listener,
            addr,
            max_connections,
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
            .spawn(move || accept_loop(self.listener, self.max_connections, ctx, counters))?;
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

/// Connections in service, and `reg-conn` threads alive (serving or idle).
struct Counters {
    active: Arc<AtomicUsize>,
    threads: Arc<AtomicUsize>,
}

fn accept_loop(
    listener: TcpListener,
    max_connections: usize,
    ctx: Arc<ConnContext>,
    counters: Counters,
) {
    let Counters { active, threads } = counters;
    let rejecting = Arc::new(AtomicUsize::new(0));
    let (idle_tx, idle_rx) = crossbeam_channel::bounded::<TcpStream>(0);
    let mut backoff = Duration::from_millis(5);
    let mut last_busy_warning: Option<Instant> = None;
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => {
                backoff = Duration::from_millis(5);
                stream
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
        if active.load(Ordering::Acquire) >= max_connections {
            spawn_rejecter(stream, &ctx, &rejecting);
            if last_busy_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                log::warn!(
                    "registration: over tcp.max_connections ({max_connections}), answering busy"
                );
                last_busy_warning = Some(Instant::now());
            }
            continue;
        }
        active.fetch_add(1, Ordering::AcqRel);
        // An idle thread takes it if one is waiting (rendezvous channel); otherwise a
        // new thread starts with it.
        let stream = match idle_tx.try_send(stream) {
            Ok(()) => continue,
            Err(TrySendError::Full(s) | TrySendError::Disconnected(s)) => s,
        };
        let slot = Slot(active.clone());
        threads.fetch_add(1, Ordering::AcqRel);
        let alive = Slot(threads.clone());
        let (ctx, idle_rx) = (ctx.clone(), idle_rx.clone());
        let spawned = thread::Builder::new()
            .name("reg-conn".into())
            .stack_size(CONN_STACK)
            .spawn(move || {
                let _alive = alive;
                conn_thread(stream, slot, &ctx, &idle_rx);
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
fn conn_thread(first: TcpStream, slot: Slot, ctx: &ConnContext, idle: &Receiver<TcpStream>) {
    let counter = slot.0.clone();
    conn::serve(first, ctx);
    drop(slot);
    loop {
        match idle.recv_timeout(IDLE_THREAD) {
            Ok(stream) => {
                // The accept loop counted this connection before handing it over.
                let slot = Slot(counter.clone());
                conn::serve(stream, ctx);
                drop(slot);
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
