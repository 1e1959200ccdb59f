//! The XMPP side: one I/O thread holds the connection to the XMPP server, reads
//! publishes, and writes their replies once WNS has answered.
//!
//! - [`reader`]: incremental stanza reader with size and depth caps.
//! - [`component`]: the XEP-0114 handshake; [`client`]: client mode's login.
//! - [`publish`]: stanza → typed request (lenient, namespace-agnostic envelope).
//! - [`reply`]: outcome → IQ reply (THE mapping table), disco, ping, stream errors.
//! - [`pep`]: client mode's PEP nodes; `session`: one stream's state, no I/O.
//!
//! Threads: `xmpp-io` owns the socket. This module is its I/O loop: connect, log in,
//! then read with a short timeout (1 ms while replies are outstanding, up to 200 ms
//! when idle), hand each stanza and the current time to the session, and write what
//! the session queued. It never waits on WNS. It reconnects forever with exponential
//! backoff (1 s to 60 s, with jitter, sleeping on the shutdown signal) and logs every
//! state change.

pub mod client;
pub mod component;
pub mod pep;
pub mod publish;
pub mod reader;
pub mod reply;
mod session;
pub mod srv;

use std::fmt;
use std::io;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::config::{ClientConfig, ComponentConfig};
use crate::net::Socket;
use crate::push::{Completed, Dispatcher};
use crate::shutdown::{Shutdown, join_logged};
use crate::store::{Lease, Store};
use pep::PepRequest;
use reader::{ReadError, StanzaReader, StreamEvent};
use session::{Session, Timing};

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
}

impl fmt::Display for XmppError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "{e}"),
            Self::Auth(e) | Self::Protocol(e) => f.write_str(e),
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
    /// Starts the `xmpp-io` thread. `peps` carries client mode's node requests.
    pub fn start(
        settings: LinkSettings,
        dispatcher: Dispatcher,
        outcomes: Receiver<Completed>,
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
                    outcomes: &outcomes,
                    peps: &peps,
                    shutdown: &shutdown,
                    lease: None,
                    standby_said: false,
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

/// How a session ended.
enum End {
    Shutdown,
    Lost(String),
}

/// Everything the I/O thread works with.
struct Io<'a> {
    s: &'a LinkSettings,
    dispatcher: Dispatcher,
    outcomes: &'a Receiver<Completed>,
    peps: &'a Receiver<PepRequest>,
    shutdown: &'a Shutdown,
    /// Client mode: the lease that makes this the one instance logged in (several
    /// instances on one database would otherwise each get every PEP event).
    lease: Option<Lease>,
    /// Whether the standby line was logged (once per spell).
    standby_said: bool,
}

/// The database lease client mode's login runs under.
const CLIENT_LEASE: &str = "client-mode-login";
/// How often a standby asks for the lease, and a holder checks it still has it.
const LEASE_STEP: Duration = Duration::from_secs(3);

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
        let mut backoff = Duration::from_secs(1);
        let mut first = true;
        while !self.shutdown.is_triggered() {
            let end = match &self.s.mode {
                Mode::Component(c) => {
                    log::info!(
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
                        backoff = Duration::from_secs(1);
                        self.session(&id, &mut reader, Vec::new())
                    })
                }
                Mode::Client(c) => {
                    if !self.take_lease() {
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
                        backoff = Duration::from_secs(1);
                        Ok(self.session(&id, &mut session.reader, held))
                    })
                }
            };
            status.connected.store(false, Ordering::Release);
            match end {
                Ok(End::Shutdown) => {
                    log::info!("xmpp: stream closed for shutdown");
                    return;
                }
                Ok(End::Lost(why)) => log::warn!("xmpp: connection lost: {why}"),
                Err(XmppError::Auth(e)) => log::error!("xmpp: {e}"),
                Err(e) => log::warn!("xmpp: cannot connect: {e}"),
            }
            let wait = jitter(backoff);
            log::info!("xmpp: reconnecting in {:.1} s", wait.as_secs_f64());
            if self.shutdown.wait_timeout(wait) {
                return;
            }
            backoff = (backoff * 2).min(Duration::from_secs(60));
        }
    }

    /// Client mode: holds (or takes) the login lease; false while another instance has
    /// it (said once at info) or the database cannot be asked.
    fn take_lease(&mut self) -> bool {
        if self.lease.as_mut().is_some_and(Lease::is_held) {
            return true;
        }
        self.lease = None;
        match self.s.store.acquire_lease(CLIENT_LEASE) {
            Ok(Some(lease)) => {
                if self.standby_said {
                    log::info!("xmpp: took over the client-mode login from another instance");
                }
                self.standby_said = false;
                self.lease = Some(lease);
                true
            }
            Ok(None) => {
                if !self.standby_said {
                    log::info!(
                        "xmpp: standby: another instance holds the client-mode login; asking again every {} s",
                        LEASE_STEP.as_secs()
                    );
                    self.standby_said = true;
                }
                false
            }
            Err(e) => {
                log::warn!("xmpp: cannot ask the database for the client-mode login: {e}");
                false
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
            (self.outcomes, self.peps),
            Instant::now(),
        );
        for stanza in held {
            session.on_stanza(&stanza, Instant::now());
        }
        let mut current_wait = Duration::ZERO;
        let mut next_lease_check = Instant::now() + LEASE_STEP;
        loop {
            let wait = session.read_wait(Instant::now());
            if wait != current_wait {
                if reader.get_ref().tcp().set_read_timeout(Some(wait)).is_err() {
                    return End::Lost("cannot set the read timeout".into());
                }
                current_wait = wait;
            }
            match reader.next_event() {
                Ok(StreamEvent::Stanza(stanza)) => {
                    log::trace!("xmpp: <- {}", reply::redact_secrets(&String::from(&stanza)));
                    session.on_stanza(&stanza, Instant::now());
                }
                Err(ReadError::Idle) => {}
                Ok(event) => return End::Lost(stream_ended(event)),
                Err(e) => return End::Lost(read_failed(reader, e)),
            }
            let now = Instant::now();
            session.drain_outcomes();
            session.drain_peps();
            if let Err(why) = session.tick(now) {
                return End::Lost(why);
            }
            if now >= next_lease_check {
                next_lease_check = now + LEASE_STEP;
                if self.lease.as_mut().is_some_and(|l| !l.is_held()) {
                    self.lease = None;
                    return End::Lost("lost the client-mode lease (database connection)".into());
                }
            }
            if self.shutdown.is_triggered() {
                session.begin_shutdown(now);
            }
            if session.is_drained(now) {
                session.finish_shutdown();
                let _ = reader.get_mut().write_all(session.out.as_bytes());
                let _ = reader.get_mut().flush();
                return End::Shutdown;
            }
            if !session.out.is_empty() {
                log::trace!("xmpp: -> {}", session.out);
                if let Err(e) = reader.get_mut().write_all(session.out.as_bytes()) {
                    return End::Lost(format!("write failed: {e}"));
                }
                session.out.clear();
            }
        }
    }
}

/// Why a stream that sent something other than a stanza is over.
fn stream_ended(event: StreamEvent) -> String {
    match event {
        StreamEvent::Close => "the server closed the stream".into(),
        _ => "unexpected second stream header".into(),
    }
}

/// Why a read failed, after telling the server when it broke a rule.
fn read_failed<S: Socket>(reader: &mut StanzaReader<S>, e: ReadError) -> String {
    let (condition, why) = match e {
        ReadError::Eof => return "the server closed the connection".into(),
        ReadError::Io(e) => return e.to_string(),
        ReadError::Idle => return "idle".into(),
        ReadError::Policy(why) => ("policy-violation", format!("policy violation: {why}")),
        ReadError::Xml(e) => ("not-well-formed", format!("XML error: {e}")),
    };
    let _ = reader
        .get_mut()
        .write_all(reply::stream_error(condition).as_bytes());
    why
}

/// Backoff with ±25 % jitter so a fleet does not reconnect in lockstep.
fn jitter(d: Duration) -> Duration {
    let mut r = [0u8; 1];
    let f = if getrandom::fill(&mut r).is_ok() {
        0.75 + f64::from(r[0]) / 510.0
    } else {
        1.0
    };
    d.mul_f64(f)
}

/// The next event while logging in, where a timeout or the end is a failure.
fn login_event<S: io::Read>(reader: &mut StanzaReader<S>) -> Result<StreamEvent, XmppError> {
    reader.next_event().map_err(|e| match e {
        ReadError::Idle => XmppError::Protocol("the server did not answer in time".into()),
        ReadError::Eof => XmppError::Protocol("the server closed the connection".into()),
        ReadError::Io(e) => XmppError::Io(e),
        ReadError::Policy(p) => XmppError::Protocol(p.into()),
        ReadError::Xml(x) => XmppError::Protocol(x),
    })
}

fn connect_component(c: &ComponentConfig) -> Result<StanzaReader<TcpStream>, XmppError> {
    let mut reader = StanzaReader::new(srv::dial(&c.host, c.port)?);
    if let Err(e) = component::authenticate(&mut reader, c.jid.as_str(), c.secret.expose()) {
        if reader.violated() {
            let stream_error = reply::stream_error("policy-violation");
            let _ = io::Write::write_all(reader.get_mut(), stream_error.as_bytes());
        }
        return Err(e);
    }
    Ok(reader)
}
