//! The optional health and metrics endpoint (`metrics.listen`): plain HTTP/1.1 on std,
//! one short request per connection.
//!
//! - `GET /health`: 200 "ok" when the database answers, the XMPP connection (if one
//!   is configured) is up and the WNS token endpoint has not refused our credentials;
//!   otherwise 503 with a one-line reason.
//! - `GET /metrics`: the Prometheus text format.
//!
//! Probes must get through whatever other clients do, so no client can hold a thread
//! while it sends slowly or not at all: the `ops-http` thread accepts and reads every
//! request head without blocking (up to [`MAX_PENDING`] at once; when full, the oldest
//! is dropped), and each request has [`DEADLINE`] in total from accept to the last byte
//! of the answer, however its bytes are spread out. A complete head goes to one of
//! [`HANDLERS`] `ops-http-N` threads, which compute and write the answer (the store may
//! be busy for a moment; the reader is not). Dropped and timed-out connections are
//! logged at most once per 10 s, with counts.
//!
//! Threads: `ops-http` (accept and read), `ops-http-1..N` (answer). Locks: the store's
//! read connection for the counts.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TrySendError};

use crate::clock::Clock;
use crate::metrics::{METRICS, gauge};
use crate::shutdown::Shutdown;
use crate::store::Store;
use crate::wns::WnsPool;
use crate::xmpp::LinkStatus;

/// The longest one request may take, from accept to the end of the answer.
pub const DEADLINE: Duration = Duration::from_secs(2);
/// Connections whose request head is still arriving, at most.
pub const MAX_PENDING: usize = 256;
/// Threads that compute and write answers.
pub const HANDLERS: usize = 4;
/// Largest request head read; the rest is ignored.
const MAX_HEAD: usize = 2048;
/// How often the reader looks at pending connections while it has some.
const TICK: Duration = Duration::from_millis(5);
/// At most one log line about dropped connections per this interval.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// What the endpoint reports on.
pub struct Sources {
    /// The database.
    pub store: Arc<Store>,
    /// The WNS pool, if WNS is configured.
    pub wns: Option<Arc<WnsPool>>,
    /// The XMPP link, if one is configured.
    pub xmpp: Option<Arc<LinkStatus>>,
}

/// The bound endpoint.
pub struct OpsHttp {
    /// Its address.
    pub addr: SocketAddr,
    thread: JoinHandle<()>,
}

impl OpsHttp {
    /// Binds and starts the `ops-http` thread and its handlers.
    pub fn start(addr: SocketAddr, sources: Sources, shutdown: Shutdown) -> io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        log::info!("ops: health and metrics on http://{addr}/health and /metrics");
        let sources = Arc::new(sources);
        let (tx, rx) = crossbeam_channel::bounded::<Ready>(HANDLERS * 4);
        let mut handlers = Vec::with_capacity(HANDLERS);
        for n in 1..=HANDLERS {
            let (rx, sources) = (rx.clone(), sources.clone());
            handlers.push(
                thread::Builder::new()
                    .name(format!("ops-http-{n}"))
                    .spawn(move || handle(&rx, &sources))?,
            );
        }
        let thread = thread::Builder::new()
            .name("ops-http".into())
            .spawn(move || {
                Reader::new(listener, shutdown).run(&tx);
                drop(tx);
                for h in handlers {
                    let _ = h.join();
                }
            })?;
        Ok(Self { addr, thread })
    }

    /// Wakes the accept loop and waits for the threads (after shutdown was triggered).
    pub fn stop(self) {
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        let _ = self.thread.join();
    }
}

/// A connection whose request head is arriving.
struct Pending {
    stream: TcpStream,
    head: Vec<u8>,
    deadline: Instant,
}

/// A request head that arrived whole (or filled [`MAX_HEAD`]), for a handler.
struct Ready {
    stream: TcpStream,
    head: Vec<u8>,
    deadline: Instant,
}

/// What happened to one pending connection on one look.
enum Step {
    Waiting,
    Ready,
    Gone,
}

/// The `ops-http` thread's state: the listener, the pending connections, and counts
/// of connections dropped since the last log line.
struct Reader {
    listener: TcpListener,
    shutdown: Shutdown,
    pending: VecDeque<Pending>,
    timed_out: u64,
    shed: u64,
    overloaded: u64,
    last_log: Option<Instant>,
}

impl Reader {
    fn new(listener: TcpListener, shutdown: Shutdown) -> Self {
        Self {
            listener,
            shutdown,
            pending: VecDeque::new(),
            timed_out: 0,
            shed: 0,
            overloaded: 0,
            last_log: None,
        }
    }

    fn run(&mut self, handlers: &crossbeam_channel::Sender<Ready>) {
        loop {
            // Block in accept while nothing is pending; poll while something is.
            let idle = self.pending.is_empty();
            if self.listener.set_nonblocking(!idle).is_err() {
                thread::sleep(TICK);
            }
            loop {
                if self.shutdown.is_triggered() {
                    return;
                }
                match self.listener.accept() {
                    Ok((stream, _)) => {
                        self.admit(stream);
                        if idle {
                            break; // switch to polling
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        log::debug!("ops: accept failed: {e}");
                        thread::sleep(TICK);
                        break;
                    }
                }
            }
            self.sweep(handlers);
            self.log_drops();
            if !self.pending.is_empty() {
                thread::sleep(TICK);
            }
        }
    }

    /// Takes a new connection, dropping the oldest pending one if the set is full.
    fn admit(&mut self, stream: TcpStream) {
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
            self.shed += 1;
        }
        self.pending.push_back(Pending {
            stream,
            head: Vec::with_capacity(256),
            deadline: Instant::now() + DEADLINE,
        });
    }

    /// Reads what each pending connection has sent; hands complete heads over.
    fn sweep(&mut self, handlers: &crossbeam_channel::Sender<Ready>) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.pending.len() {
            let step = read_some(&mut self.pending[i]);
            let step = match step {
                Step::Waiting if now >= self.pending[i].deadline => {
                    self.timed_out += 1;
                    Step::Gone
                }
                other => other,
            };
            match step {
                Step::Waiting => i += 1,
                Step::Gone => {
                    self.pending.remove(i);
                }
                Step::Ready => {
                    if let Some(p) = self.pending.remove(i) {
                        let ready = Ready {
                            stream: p.stream,
                            head: p.head,
                            deadline: p.deadline,
                        };
                        match handlers.try_send(ready) {
                            Ok(()) => {}
                            Err(TrySendError::Full(r) | TrySendError::Disconnected(r)) => {
                                self.overloaded += 1;
                                answer_quickly(r.stream, "503 Service Unavailable", "busy\n");
                            }
                        }
                    }
                }
            }
        }
    }

    /// One line per [`LOG_EVERY`] at most, only when something was dropped.
    fn log_drops(&mut self) {
        if self.timed_out + self.shed + self.overloaded == 0
            || self.last_log.is_some_and(|t| t.elapsed() < LOG_EVERY)
        {
            return;
        }
        log::warn!(
            "ops: dropped {} connection(s) that sent no whole request within {} s, {} over {} pending, and answered {} busy (all handlers taken)",
            self.timed_out,
            DEADLINE.as_secs(),
            self.shed,
            MAX_PENDING,
            self.overloaded
        );
        (self.timed_out, self.shed, self.overloaded) = (0, 0, 0);
        self.last_log = Some(Instant::now());
    }
}

/// Reads without blocking until the head is complete, the peer is done, or no more
/// bytes are waiting.
fn read_some(p: &mut Pending) -> Step {
    let mut buf = [0u8; 512];
    loop {
        if head_done(&p.head) || p.head.len() >= MAX_HEAD {
            return Step::Ready;
        }
        let room = (MAX_HEAD - p.head.len()).min(buf.len());
        match p.stream.read(&mut buf[..room]) {
            Ok(0) if p.head.is_empty() => return Step::Gone,
            Ok(0) => return Step::Ready,
            Ok(n) => p.head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Waiting,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Step::Gone,
        }
    }
}

fn head_done(head: &[u8]) -> bool {
    head.windows(4).any(|w| w == b"\r\n\r\n")
}

/// An `ops-http-N` thread: answers complete requests until the reader ends.
fn handle(rx: &Receiver<Ready>, sources: &Sources) {
    for r in rx {
        let Some(left) = r.deadline.checked_duration_since(Instant::now()) else {
            continue;
        };
        if r.stream.set_nonblocking(false).is_err()
            || r.stream
                .set_write_timeout(Some(left.max(Duration::from_millis(1))))
                .is_err()
        {
            continue;
        }
        serve(r.stream, &r.head, sources);
    }
}

fn serve(mut stream: TcpStream, head: &[u8], sources: &Sources) {
    let head = String::from_utf8_lossy(head);
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, body, kind) = match (method, path) {
        ("GET", "/health") => match health(sources) {
            Ok(()) => ("200 OK", "ok\n".to_owned(), "text/plain"),
            Err(why) => ("503 Service Unavailable", format!("{why}\n"), "text/plain"),
        },
        ("GET", "/metrics") => ("200 OK", metrics(sources), "text/plain; version=0.0.4"),
        ("GET", _) => ("404 Not Found", "not found\n".into(), "text/plain"),
        _ => ("405 Method Not Allowed", "GET only\n".into(), "text/plain"),
    };
    let _ = stream.write_all(response(status, kind, &body).as_bytes());
}

/// Answers without blocking the reader: the answer fits the socket buffer of a fresh
/// connection, and if it does not, the client loses nothing it was owed.
fn answer_quickly(mut stream: TcpStream, status: &str, body: &str) {
    let _ = stream.write_all(response(status, "text/plain", body).as_bytes());
}

fn response(status: &str, kind: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn health(s: &Sources) -> Result<(), String> {
    s.store.ping().map_err(|e| format!("database: {e}"))?;
    if let Some(x) = &s.xmpp
        && !x.is_connected()
    {
        return Err("xmpp: not connected".into());
    }
    // Issue 10 item 16: refused WNS credentials are a configuration error, not a blip.
    if let Some(why) = s.wns.as_ref().and_then(|w| w.credentials_rejected()) {
        return Err(format!(
            "wns: WNS credentials rejected by the token endpoint ({why}): check wns.packet_id and wns.client_secret"
        ));
    }
    Ok(())
}

fn metrics(s: &Sources) -> String {
    let mut out = String::with_capacity(8192);
    METRICS.render(&mut out);
    if let Some(pool) = &s.wns {
        gauge(
            &mut out,
            "uwpx_wns_queue_depth",
            "Push jobs waiting for a worker.",
            pool.queue_len(),
        );
        gauge(
            &mut out,
            "uwpx_wns_workers_busy",
            "WNS workers in the middle of a job.",
            pool.busy(),
        );
        if let Some(at) = pool.token_expires_at() {
            gauge(
                &mut out,
                "uwpx_wns_token_expiry_seconds",
                "Seconds until the WNS access token expires.",
                at - Clock::system().unix_now(),
            );
        }
    }
    if let Some(x) = &s.xmpp {
        gauge(
            &mut out,
            "uwpx_xmpp_connected",
            "1 while the XMPP stream is up.",
            u8::from(x.is_connected()),
        );
        let _ = writeln!(
            out,
            "# HELP uwpx_xmpp_reconnects_total Reconnections after the first connection.\n# TYPE uwpx_xmpp_reconnects_total counter\nuwpx_xmpp_reconnects_total {}",
            x.reconnects()
        );
    }
    if let Ok(c) = s.store.counts() {
        gauge(&mut out, "uwpx_devices", "Devices stored.", c.devices);
        gauge(
            &mut out,
            "uwpx_accounts",
            "Push accounts stored.",
            c.accounts,
        );
    }
    out
}
