//! The registration service: the TCP/TLS listener UWPX devices talk to.
//!
//! Data flows one way: socket → [`codec`] (frame, decode, validate) → [`handler`]
//! (store) → [`wire`] (answer bytes) → socket. [`conn`] owns the socket side.
//!
//! Threads: `reg-accept` runs the accept loop and starts one `reg-conn` thread per
//! connection, up to `tcp.max_connections`. Over the cap, up to [`REJECTERS`] short-lived
//! `reg-reject` threads answer "busy" and close; past that, connections are dropped.
//! Nothing here builds SQL: the store is reached through the handler.

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

use conn::ConnContext;

/// How many over-the-cap connections may be answered "busy" at once.
pub const REJECTERS: usize = 64;

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
        let counter = active.clone();
        let accept = thread::Builder::new()
            .name("reg-accept".into())
            .spawn(move || accept_loop(self.listener, self.max_connections, ctx, counter))?;
        Ok(Running { accept, active })
    }
}

impl Running {
    /// Waits for the accept loop to end (after shutdown was triggered and the loop was
    /// woken), then up to `grace` for connections to finish their request in flight.
    /// Returns how many were still open when the grace ran out.
    pub fn join(self, grace: Duration) -> usize {
        if self.accept.join().is_err() {
            log::error!("registration: accept thread panicked");
        }
        let deadline = Instant::now() + grace;
        while self.active.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
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

fn accept_loop(
    listener: TcpListener,
    max_connections: usize,
    ctx: Arc<ConnContext>,
    active: Arc<AtomicUsize>,
) {
    let rejecting = Arc::new(AtomicUsize::new(0));
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
        let slot = Slot(active.clone());
        let ctx = ctx.clone();
        let spawned = thread::Builder::new()
            .name("reg-conn".into())
            .stack_size(CONN_STACK)
            .spawn(move || {
                let _slot = slot;
                conn::serve(stream, &ctx);
            });
        if let Err(e) = spawned {
            // The closure (and with it the slot and the stream) was dropped.
            log::warn!("registration: cannot start a connection thread: {e}");
        }
    }
    log::info!("registration: stopped accepting");
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
