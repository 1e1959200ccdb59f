//! The XMPP side: one I/O thread holds the connection to the XMPP server and reads
//! publishes; their replies are written once WNS has answered, by the WNS worker that
//! got the answer.
//!
//! - [`reader`]: incremental stanza reader with size and depth caps; `quick`: its
//!   one-pass path for stanzas whole in the buffer, in the plain shape servers write,
//!   which reads a publish straight into its fields, with no tree.
//! - [`component`]: the XEP-0114 handshake; [`client`]: client mode's login.
//! - [`publish`]: stanza → typed request (lenient, namespace-agnostic envelope).
//! - [`reply`]: outcome → IQ reply (THE mapping table), disco, ping, stream errors.
//! - [`pep`]: client mode's PEP nodes; `lease`: client mode's login lease (one
//!   instance at a time); [`srv`]: DNS SRV and dialling every address.
//! - `session`: one stream's state, no I/O; [`Answers`]: the publishes waiting for
//!   WNS, answered on the worker, and the one queue every write to the socket goes
//!   through; `stream`: the component connection and how a broken stream is
//!   explained; `reconnect`: when to try again.
//!
//! Threads: `xmpp-io` owns the socket. This module is its I/O loop: connect, log in,
//! then read until the socket would block, hand each stanza and the current time to
//! the session, write what the session queued (and replies the workers left queued),
//! and sleep in [`Waiter::wait`] (epoll) until the socket has input, a WNS worker or
//! registration thread calls [`crate::net::Wake`], or the session's next timer is due.
//! No polling interval: a reply leaves as soon as its outcome arrives, from the worker
//! while this thread sleeps, or with this thread's next write while it is awake or
//! many publishes are in flight. It never waits on WNS. It reconnects forever with exponential
//! backoff (1 s to 60 s, with jitter, sleeping on the shutdown signal) and logs every
//! state change. One failure is not a failure: a `<conflict/>` stream error means that
//! another instance holds the component (Prosody keeps one connection per component),
//! and this instance waits as a standby, retrying every few seconds (`reconnect`).

mod answers;
pub mod client;
pub mod component;
mod lease;
pub mod pep;
pub mod publish;
mod quick;
pub mod reader;
mod reconnect;
pub mod reply;
mod session;
pub mod srv;
mod stream;

use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

pub use answers::Answers;

use crate::config::{ClientConfig, ComponentConfig};
use crate::metrics::METRICS;
use crate::net::{Socket, Waiter};
use crate::push::Dispatcher;
use crate::shutdown::{Shutdown, join_logged};
use crate::store::Store;
use component::connect_component;
use lease::{LEASE_STEP, LoginLease};
use pep::PepRequest;
use publish::Inbound;
use reader::{Next, ReadError, StanzaReader, StreamEvent};
use reconnect::{Reconnect, STANDBY_RETRY, jitter};
use session::{Session, Timing};
use stream::{is_stream_error, read_failed, stream_ended};

/// Why a connection ended or could not be made. Drives the reconnect backoff and the log;
/// never reaches a wire.
#[derive(Debug)]
pub enum XmppError {
    /// The socket failed.
    Io(io::Error),
    /// The server refused our credentials.
    Auth(String),
    /// The server said something we cannot follow, or closed the stream.
    Protocol(String),
    /// A `<conflict/>` stream error: another connection (another instance) holds the
    /// component.
    Conflict,
}

impl fmt::Display for XmppError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "{e}"),
            Self::Auth(e) | Self::Protocol(e) => f.write_str(e),
            Self::Conflict => f.write_str("another connection holds the component"),
        }
    }
}

impl From<io::Error> for XmppError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// Connection state shared with the rest of the server (health, metrics, tests).
#[derive(Debug, Default)]
pub struct LinkStatus {
    connected: AtomicBool,
    reconnects: AtomicU64,
}

impl LinkStatus {
    /// True while the stream is up and authenticated.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Successful connections after the first.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }
}

/// How the server is connected to XMPP.
#[derive(Debug, Clone)]
pub enum Mode {
    /// XEP-0114 component: users' servers publish IQs to the component JID.
    Component(ComponentConfig),
    /// An ordinary account with one PEP node per registered account: pushes arrive as
    /// pubsub event messages.
    Client(ClientConfig),
}

/// What the link needs besides the dispatcher.
#[derive(Clone)]
pub struct LinkSettings {
    /// Component or client mode.
    pub mode: Mode,
    /// The store, for client mode's node reconciliation and removed-node list.
    pub store: Arc<Store>,
    /// How often to ping the server.
    pub ping_interval: Duration,
    /// At shutdown, how long publishes waiting for WNS may still be answered.
    pub grace: Duration,
    /// Longest wait for WNS before answering `wait`.
    pub deadline: Duration,
}

/// The running XMPP link.
pub struct XmppLink {
    thread: JoinHandle<()>,
    status: Arc<LinkStatus>,
}

impl XmppLink {
    /// Starts the `xmpp-io` thread. `answers` is the one the `dispatcher` hands its
    /// outcomes to; `peps` carries client mode's node requests, and whoever sends on it
    /// calls the `waiter`'s [`crate::net::Wake`] after.
    pub fn start(
        settings: LinkSettings,
        waiter: Waiter,
        dispatcher: Dispatcher,
        answers: Arc<Answers>,
        peps: Receiver<PepRequest>,
        status: Arc<LinkStatus>,
        shutdown: Shutdown,
    ) -> io::Result<Self> {
        let st = status.clone();
        let thread = thread::Builder::new()
            .name("xmpp-io".into())
            .spawn(move || {
                let mut io = Io {
                    s: &settings,
                    dispatcher,
                    answers,
                    peps: &peps,
                    shutdown: &shutdown,
                    lease: LoginLease::default(),
                    waiter,
                };
                io.run(&st)
            })?;
        Ok(Self { thread, status })
    }

    /// The shared status.
    pub fn status(&self) -> Arc<LinkStatus> {
        self.status.clone()
    }

    /// Waits for the thread to end (after shutdown was triggered: it answers open IQs
    /// with `wait` and closes the stream).
    pub fn join(self) {
        join_logged(self.thread);
    }
}

/// Stanzas handled per read batch before outcomes and timers get their turn.
const READ_BATCH: usize = 64;
/// How long a write may block when the server does not take our bytes.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// How a session ended.
enum End {
    Shutdown,
    Lost(String),
    /// A `<conflict/>` stream error: another connection took the component.
    Conflict,
}

/// Everything the I/O thread works with.
struct Io<'a> {
    s: &'a LinkSettings,
    dispatcher: Dispatcher,
    /// The publishes waiting for WNS, and every write to the socket.
    answers: Arc<Answers>,
    peps: &'a Receiver<PepRequest>,
    shutdown: &'a Shutdown,
    /// Client mode: the lease that makes this the one instance logged in.
    lease: LoginLease,
    /// Sleeps until the socket, a finished push or a PEP request needs the thread.
    waiter: Waiter,
}

/// Who we are on the current stream.
struct Identity {
    /// The stream's default namespace.
    ns: &'static str,
    /// Our JID: the component JID, or the account's bare JID.
    own: String,
    /// Where pings go.
    server: String,
    /// Client mode (PEP nodes, events) rather than component mode (publish IQs).
    client: bool,
}

impl Io<'_> {
    fn run(&mut self, status: &LinkStatus) {
        let mut policy = Reconnect::new();
        let mut first = true;
        while !self.shutdown.is_triggered() {
            let end = match &self.s.mode {
                Mode::Component(c) => {
                    // A standby's attempts every few seconds are not news.
                    let level = if policy.is_standby() {
                        log::Level::Debug
                    } else {
                        log::Level::Info
                    };
                    log::log!(
                        level,
                        "xmpp: connecting to {}:{} as component {}",
                        c.host,
                        c.port,
                        c.jid
                    );
                    connect_component(c).map(|mut reader| {
                        let id = Identity {
                            ns: component::NS_COMPONENT,
                            own: c.jid.as_str().to_owned(),
                            server: c.jid.server_domain().to_owned(),
                            client: false,
                        };
                        self.connected(status, &mut first, &id.own);
                        policy.connected();
                        self.session(&id, &mut reader, Vec::new())
                    })
                }
                Mode::Client(c) => {
                    if !self.lease.take(&self.s.store) {
                        if self.shutdown.wait_timeout(LEASE_STEP) {
                            return;
                        }
                        continue;
                    }
                    log::info!("xmpp: connecting as {}", c.bare_jid.as_str());
                    client::login(c).and_then(|mut session| {
                        let id = Identity {
                            ns: client::NS_CLIENT,
                            own: c.bare_jid.as_str().to_owned(),
                            server: c.bare_jid.domain(),
                            client: true,
                        };
                        let held = pep::reconcile(&mut session.reader, &id.own, &self.s.store)?;
                        self.connected(status, &mut first, &session.full_jid);
                        policy.connected();
                        Ok(self.session(&id, &mut session.reader, held))
                    })
                }
            };
            status.connected.store(false, Ordering::Release);
            let conflict = matches!(end, Ok(End::Conflict) | Err(XmppError::Conflict));
            match end {
                Ok(End::Shutdown) => {
                    log::info!("xmpp: stream closed for shutdown");
                    return;
                }
                Ok(End::Conflict) | Err(XmppError::Conflict) => {}
                Ok(End::Lost(why)) => log::warn!("xmpp: connection lost: {why}"),
                Err(XmppError::Auth(e)) => log::error!("xmpp: {e}"),
                Err(e) => log::warn!("xmpp: cannot connect: {e}"),
            }
            let retry = policy.failed(conflict);
            let wait = jitter(retry.wait);
            if retry.became_standby {
                log::info!(
                    "xmpp: another instance holds the component (conflict); standing by, trying again every {} s",
                    STANDBY_RETRY.as_secs()
                );
            } else if conflict {
                log::debug!("xmpp: still standing by");
            } else {
                log::info!("xmpp: reconnecting in {:.1} s", wait.as_secs_f64());
            }
            if self.shutdown.wait_timeout(wait) {
                return;
            }
        }
    }

    fn connected(&self, status: &LinkStatus, first: &mut bool, jid: &str) {
        status.connected.store(true, Ordering::Release);
        if !*first {
            status.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        *first = false;
        log::info!("xmpp: connected as {jid}");
    }

    /// The authenticated stream: read, hand to the session, write what it queued,
    /// until the stream ends or shutdown has drained it. `held`: stanzas that arrived
    /// before (during client mode's reconciliation), handled first.
    fn session<S: Socket>(
        &mut self,
        id: &Identity,
        reader: &mut StanzaReader<S>,
        held: Vec<minidom::Element>,
    ) -> End {
        let timing = Timing {
            ping_interval: self.s.ping_interval,
            deadline: self.s.deadline,
            grace: self.s.grace,
        };
        let mut session = Session::new(
            id,
            timing,
            &self.s.store,
            &mut self.dispatcher,
            (&self.answers, self.peps),
            Instant::now(),
        );
        for stanza in held {
            session.on_stanza(&stanza, Instant::now());
        }
        let tcp = reader.get_ref().tcp();
        if let Err(e) = self.waiter.watch(tcp) {
            return End::Lost(format!("cannot watch the socket: {e}"));
        }
        // Component mode: WNS workers write their IQ replies to the socket themselves.
        // (Without a second handle they queue them for this thread instead.)
        self.answers.begin(if id.client {
            None
        } else {
            tcp.try_clone().ok()
        });
        let end = pump(
            &mut self.waiter,
            &mut self.lease,
            self.shutdown,
            &mut session,
            reader,
            &self.answers,
        );
        drop(session);
        self.answers.end();
        self.waiter.unwatch(reader.get_ref().tcp());
        // No lookups until the next stream: hold no read snapshot meanwhile.
        self.s.store.end_read();
        end
    }
}

/// The session's loop: read until the socket would block, run the timers, write what
/// the session and the workers queued, then sleep until the socket, a
/// [`crate::net::Wake`] or the next timer needs the thread. (Replies to publishes that
/// WNS finished are written by the workers: see `answers`.)
fn pump<S: Socket>(
    waiter: &mut Waiter,
    lease: &mut LoginLease,
    shutdown: &Shutdown,
    session: &mut Session,
    reader: &mut StanzaReader<S>,
    answers: &Answers,
) -> End {
    let mut next_lease_check = Instant::now() + LEASE_STEP;
    // Whether the socket may have input (edge-triggered: until a read would block).
    let mut readable = true;
    // On a shared store (PostgreSQL) the publishes of one batch are decided together,
    // with a round trip or two for all; on SQLite a lookup is local, and each publish
    // goes to WNS as soon as it is read.
    let batching = session.batches_publishes();
    let mut publishes = Vec::new();
    loop {
        let mut idle = !readable;
        // A bounded batch, so replies keep flowing under a flood of publishes.
        for _ in 0..READ_BATCH {
            if idle {
                break;
            }
            // At trace level every stanza is logged whole, so all are read as trees.
            let next = if log::log_enabled!(log::Level::Trace) {
                reader.next_event().map(Next::Event)
            } else {
                reader.next_inbound(session.stream_ns())
            };
            // Whatever else comes, the publishes read before it go first.
            if !publishes.is_empty() && !matches!(next, Ok(Next::Publish(..))) {
                session.on_publishes(&mut publishes, Instant::now());
            }
            match next {
                Ok(Next::Publish(header, publish)) => {
                    METRICS.publish_without_tree();
                    if batching {
                        publishes.push((header, publish));
                    } else {
                        session.on_inbound(Inbound::Publish(header, publish), Instant::now());
                    }
                }
                Ok(Next::Event(StreamEvent::Stanza(e))) if is_stream_error(&e) => {
                    return match reply::error_condition(&e).as_str() {
                        "conflict" => End::Conflict,
                        other => End::Lost(format!("stream error: {other}")),
                    };
                }
                Ok(Next::Event(StreamEvent::Stanza(stanza))) => {
                    log::trace!("xmpp: <- {}", reply::loggable(&stanza));
                    session.on_stanza(&stanza, Instant::now());
                }
                Err(ReadError::Idle) => {
                    idle = true;
                    break;
                }
                Ok(Next::Event(event)) => return End::Lost(stream_ended(event)),
                Err(e) => return End::Lost(read_failed(reader, e)),
            }
        }
        if !publishes.is_empty() {
            session.on_publishes(&mut publishes, Instant::now());
        }
        let now = Instant::now();
        session.drain_peps();
        if let Err(why) = session.tick(now) {
            return End::Lost(why);
        }
        if now >= next_lease_check {
            next_lease_check = now + LEASE_STEP;
            if lease.is_lost() {
                return End::Lost("lost the client-mode lease (database connection)".into());
            }
        }
        if shutdown.is_triggered() {
            session.begin_shutdown(now);
        }
        if session.is_drained(now) {
            session.finish_shutdown();
            let _ = answers.flush(&session.out, reader.get_mut(), WRITE_TIMEOUT);
            return End::Shutdown;
        }
        // `needs_io` includes a worker's failed write, which `flush` then reports.
        if !session.out.is_empty() || answers.needs_io() {
            if !session.out.is_empty() {
                log::trace!("xmpp: -> {}", session.out);
            }
            if let Err(e) = answers.flush(&session.out, reader.get_mut(), WRITE_TIMEOUT) {
                return End::Lost(format!("write failed: {e}"));
            }
            session.out.clear();
        }
        if idle {
            let wait = session.next_wake(Instant::now());
            readable = match waiter.wait(wait, || session.has_work()) {
                Ok(r) => r,
                Err(e) => return End::Lost(format!("cannot wait for the socket: {e}")),
            };
        }
    }
}
