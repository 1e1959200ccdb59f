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
//! state change. One failure is not a failure: a `<conflict/>` stream error means that
//! another instance holds the component (Prosody keeps one connection per component),
//! and this instance waits as a standby, retrying every few seconds (`Reconnect`).

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
    /// A `<conflict/>` stream error: another connection took the component.
    Conflict,
}

/// The longest wait between two attempts while another instance holds the component:
/// a standby must take over within 10 s of the active instance stopping. With the
/// ±25 % jitter an attempt comes at most 3.75 s apart.
const STANDBY_RETRY: Duration = Duration::from_secs(3);
/// The first and the longest wait of the backoff after any other failure.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// What the I/O loop does between connections: exponential backoff after a failure, a
/// steady short retry while another instance holds the component (said once at info,
/// and again only after something else happened). Pure: the waits carry no jitter;
/// the loop adds it.
#[derive(Debug)]
struct Reconnect {
    backoff: Duration,
    standby: bool,
}

/// The decision after a connection ended or could not be made.
#[derive(Debug, PartialEq, Eq)]
struct Retry {
    /// How long to wait before the next attempt (before jitter).
    wait: Duration,
    /// Whether this instance just became a standby (log that once, at info).
    became_standby: bool,
}

impl Reconnect {
    fn new() -> Self {
        Self {
            backoff: BACKOFF_FIRST,
            standby: false,
        }
    }

    /// A stream came up: the next failure starts the backoff afresh, and a later
    /// conflict is worth a log line again.
    fn connected(&mut self) {
        self.backoff = BACKOFF_FIRST;
        self.standby = false;
    }

    /// A connection ended or failed; `conflict` says whether another instance holds
    /// the component.
    fn failed(&mut self, conflict: bool) -> Retry {
        if conflict {
            let became_standby = !self.standby;
            self.standby = true;
            // The active instance may be gone by the next try: keep the backoff fresh.
            self.backoff = BACKOFF_FIRST;
            return Retry {
                wait: STANDBY_RETRY,
                became_standby,
            };
        }
        self.standby = false;
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        Retry {
            wait,
            became_standby: false,
        }
    }
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
        let mut policy = Reconnect::new();
        let mut first = true;
        while !self.shutdown.is_triggered() {
            let end = match &self.s.mode {
                Mode::Component(c) => {
                    // A standby's attempts every few seconds are not news.
                    let level = if policy.standby {
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
                Ok(StreamEvent::Stanza(e)) if is_stream_error(&e) => {
                    return match reply::error_condition(&e).as_str() {
                        "conflict" => End::Conflict,
                        other => End::Lost(format!("stream error: {other}")),
                    };
                }
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

/// The streams namespace (RFC 6120), of `<stream:error>`.
const NS_STREAMS: &str = "http://etherx.jabber.org/streams";

/// Whether a top-level element is a `<stream:error>`.
fn is_stream_error(e: &minidom::Element) -> bool {
    e.name() == "error" && e.ns() == NS_STREAMS
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conflict_makes_a_standby_that_retries_every_few_seconds_and_says_so_once() {
        let mut p = Reconnect::new();
        let first = p.failed(true);
        assert_eq!(
            first,
            Retry {
                wait: STANDBY_RETRY,
                became_standby: true
            }
        );
        // However long the other instance holds on: the same short wait, no new line.
        for _ in 0..50 {
            assert_eq!(
                p.failed(true),
                Retry {
                    wait: STANDBY_RETRY,
                    became_standby: false
                }
            );
        }
        // With the jitter, never more than 5 s apart.
        assert!(STANDBY_RETRY.mul_f64(1.25) <= Duration::from_secs(5));
        // Once connected (the other instance stopped), a later conflict is news again.
        p.connected();
        assert!(p.failed(true).became_standby);
        // Something else in between (the XMPP server restarting) is news too.
        assert_eq!(p.failed(false).wait, BACKOFF_FIRST);
        assert!(p.failed(true).became_standby);
    }

    #[test]
    fn other_failures_back_off_exponentially_up_to_a_minute() {
        let mut p = Reconnect::new();
        let waits: Vec<u64> = (0..8).map(|_| p.failed(false).wait.as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        // A conflict does not inherit the long backoff, and the backoff after it
        // starts afresh.
        assert_eq!(p.failed(true).wait, STANDBY_RETRY);
        assert_eq!(p.failed(false).wait, BACKOFF_FIRST);
        p.connected();
        assert_eq!(p.failed(false).wait, BACKOFF_FIRST);
    }

    #[test]
    fn stream_error_conditions_are_read_past_the_text() {
        let parse = |xml: &str| -> minidom::Element {
            format!("<error xmlns='{NS_STREAMS}'>{xml}</error>")
                .parse()
                .unwrap()
        };
        let prosody = parse(
            "<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>Component already connected</text><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>",
        );
        assert!(is_stream_error(&prosody));
        assert_eq!(reply::error_condition(&prosody), "conflict");
        assert_eq!(
            reply::error_condition(&parse(
                "<not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
            )),
            "not-authorized"
        );
        assert_eq!(reply::error_condition(&parse("")), "undefined-condition");
        // As the reader hands it over on a live component stream.
        let wire: &[u8] = b"<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' id='s1'><stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/><text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>Replaced by a new connection</text></stream:error>";
        let mut reader = StanzaReader::new(wire);
        assert!(matches!(reader.next_event(), Ok(StreamEvent::Open(_))));
        let Ok(StreamEvent::Stanza(e)) = reader.next_event() else {
            panic!("no stanza")
        };
        assert!(is_stream_error(&e));
        assert_eq!(reply::error_condition(&e), "conflict");
        let iq_error: minidom::Element = "<error xmlns='jabber:component:accept' type='cancel'/>"
            .parse()
            .unwrap();
        assert!(!is_stream_error(&iq_error));
    }
}
