//! The XMPP side: one I/O thread holds the connection to the XMPP server, reads
//! publishes, and writes their replies once WNS has answered.
//!
//! - [`reader`]: incremental stanza reader with size and depth caps.
//! - [`component`]: the XEP-0114 handshake.
//! - [`publish`]: stanza → typed request (lenient, namespace-agnostic envelope).
//! - [`reply`]: outcome → IQ reply (THE mapping table), disco, ping, stream errors.
//!
//! Threads: `xmpp-io` owns the socket. It reads with a short timeout (1 ms while replies
//! are outstanding, up to 200 ms when idle) and in between drains the channel of WNS
//! outcomes, answers IQs whose deadline passed, sends coalesced trailing pushes and
//! keep-alive pings. It never waits on WNS. It reconnects forever with exponential
//! backoff (1 s to 60 s, with jitter) and logs every state change.

pub mod client;
pub mod component;
pub mod pep;
pub mod publish;
pub mod reader;
pub mod reply;

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::config::{ClientConfig, ComponentConfig};
use crate::net::Socket;
use crate::push::{Completed, Decision, Dispatcher, PushOutcome};
use crate::shutdown::Shutdown;
use crate::store::Store;
use crate::wns::Outcome;
use pep::PepRequest;
use publish::{Inbound, IqHeader, Publish};
use reader::{ReadError, StanzaReader, StreamEvent};

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
        if self.thread.join().is_err() {
            log::error!("xmpp: the I/O thread panicked");
        }
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
                        self.session(&id, &mut reader)
                    })
                }
                Mode::Client(c) => {
                    log::info!(
                        "xmpp: connecting to {}:{} as {}",
                        c.host,
                        c.port,
                        c.bare_jid.as_str()
                    );
                    client::login(c).and_then(|mut session| {
                        let id = Identity {
                            ns: client::NS_CLIENT,
                            own: c.bare_jid.as_str().to_owned(),
                            server: c.bare_jid.domain(),
                            client: true,
                        };
                        pep::reconcile(&mut session.reader, &id.own, &self.s.store)?;
                        self.connected(status, &mut first, &session.full_jid);
                        backoff = Duration::from_secs(1);
                        Ok(self.session(&id, &mut session.reader))
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
            let until = Instant::now() + wait;
            while Instant::now() < until && !self.shutdown.is_triggered() {
                thread::sleep(Duration::from_millis(50));
            }
            backoff = (backoff * 2).min(Duration::from_secs(60));
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

    /// The authenticated stream: read, dispatch, reply, ping, until it ends.
    fn session<S: Socket>(&mut self, id: &Identity, reader: &mut StanzaReader<S>) -> End {
        let s = self.s;
        let ping_timeout = s.ping_interval.min(Duration::from_secs(30));
        let mut pending: HashMap<u64, Pending> = HashMap::new();
        // Deadlines in arrival order (all publishes get the same budget), so expiry is a
        // look at the front, not a scan; entries of answered IQs are skipped.
        let mut deadlines: VecDeque<(Instant, u64)> = VecDeque::new();
        let mut peps: HashMap<String, PepStep> = HashMap::new();
        let mut deleting: HashSet<String> = HashSet::new();
        let mut seen_items = publish::RecentItems::new(4096);
        let mut seq = 0u64;
        let mut next_timers = Instant::now();
        let mut next_removed = Instant::now();
        let mut out = String::new();
        let mut next_ping = Instant::now() + s.ping_interval;
        let mut ping_sent: Option<(String, Instant)> = None;
        let mut current_wait = Duration::ZERO;
        let mut draining: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let mut wait = Duration::from_millis(200);
            if !pending.is_empty() || !peps.is_empty() {
                wait = Duration::from_millis(1);
            }
            if let Some(due) = self.dispatcher.next_due() {
                wait = wait.min(
                    due.saturating_duration_since(now)
                        .max(Duration::from_millis(1)),
                );
            }
            if wait != current_wait {
                if reader.get_ref().tcp().set_read_timeout(Some(wait)).is_err() {
                    return End::Lost("cannot set the read timeout".into());
                }
                current_wait = wait;
            }
            match reader.next_event() {
                Ok(StreamEvent::Stanza(stanza)) => {
                    log::trace!("xmpp: <- {}", reply::redact_secrets(&String::from(&stanza)));
                    match publish::classify(&stanza, id.ns) {
                        Inbound::Publish(h, _) if draining.is_some() => {
                            let shutting =
                                PushOutcome::Wns(Outcome::Transient("shutting down".into()));
                            log_outcome(&h.from, &shutting);
                            out.push_str(&reply::iq_reply(&h, reply::for_outcome(&shutting)));
                        }
                        Inbound::Publish(h, p) if !id.client => {
                            match self.dispatcher.publish(Some(&h.from), &p, Instant::now()) {
                                Decision::Now(outcome) => {
                                    log_outcome(&h.from, &outcome);
                                    out.push_str(&reply::iq_reply(
                                        &h,
                                        reply::for_outcome(&outcome),
                                    ));
                                }
                                Decision::Later(token) => {
                                    let deadline = Instant::now() + s.deadline;
                                    pending.insert(
                                        token,
                                        Pending {
                                            header: Some(h),
                                            since: Instant::now(),
                                        },
                                    );
                                    deadlines.push_back((deadline, token));
                                }
                            }
                        }
                        Inbound::Publish(h, _) | Inbound::Unsupported(h) => {
                            out.push_str(&reply::unsupported(&h))
                        }
                        Inbound::BadPublish(h, why) => {
                            log::info!("xmpp: malformed publish from {}: {why}", h.from);
                            out.push_str(&reply::bad_request(&h));
                        }
                        Inbound::DiscoInfo(h) if !id.client => out.push_str(&reply::disco_info(&h)),
                        Inbound::DiscoItems(h) if !id.client => {
                            out.push_str(&reply::disco_items(&h))
                        }
                        Inbound::DiscoInfo(h) | Inbound::DiscoItems(h) => {
                            out.push_str(&reply::unsupported(&h))
                        }
                        Inbound::Ping(h) => out.push_str(&reply::iq_result(&h, "")),
                        Inbound::Response { id: rid, error } => {
                            if ping_sent.as_ref().is_some_and(|(p, _)| *p == rid) {
                                ping_sent = None;
                            } else if let Some(step) = peps.remove(&rid) {
                                self.pep_answer(
                                    id,
                                    step,
                                    error,
                                    &mut peps,
                                    &mut deleting,
                                    &mut seq,
                                    &mut out,
                                );
                            }
                        }
                        Inbound::Event {
                            from,
                            node,
                            item_id,
                            publisher,
                            summary,
                        } if id.client => {
                            if bare(&from) != id.own.to_lowercase() {
                                log::debug!("xmpp: ignoring a pubsub event from {from}");
                            } else if item_id
                                .as_deref()
                                .is_some_and(|i| !seen_items.insert(&node, i))
                            {
                                log::debug!("xmpp: duplicate event for node {node}");
                            } else {
                                let p = Publish {
                                    node,
                                    secret: None,
                                    summary,
                                };
                                let from = publisher.as_deref();
                                match self.dispatcher.publish(from, &p, Instant::now()) {
                                    Decision::Now(outcome) => {
                                        log_outcome(from.unwrap_or("?"), &outcome)
                                    }
                                    Decision::Later(token) => {
                                        pending.insert(
                                            token,
                                            Pending {
                                                header: None,
                                                since: Instant::now(),
                                            },
                                        );
                                        deadlines.push_back((Instant::now() + s.deadline, token));
                                    }
                                }
                            }
                        }
                        Inbound::Event { .. } | Inbound::Ignored => {}
                    }
                }
                Ok(StreamEvent::Open(_)) => {
                    return End::Lost("unexpected second stream header".into());
                }
                Ok(StreamEvent::Close) => return End::Lost("the server closed the stream".into()),
                Err(ReadError::Idle) => {}
                Err(ReadError::Eof) => return End::Lost("the server closed the connection".into()),
                Err(ReadError::Policy(why)) => {
                    let _ = reader
                        .get_mut()
                        .write_all(reply::stream_error("policy-violation").as_bytes());
                    return End::Lost(format!("policy violation: {why}"));
                }
                Err(ReadError::Xml(e)) => {
                    let _ = reader
                        .get_mut()
                        .write_all(reply::stream_error("not-well-formed").as_bytes());
                    return End::Lost(format!("XML error: {e}"));
                }
                Err(ReadError::Io(e)) => return End::Lost(e.to_string()),
            }

            while let Ok(done) = self.outcomes.try_recv() {
                if let Some(p) = pending.remove(&done.token) {
                    crate::ops::metrics::METRICS
                        .publish_latency
                        .observe(p.since.elapsed());
                    let outcome = PushOutcome::Wns(done.outcome);
                    match &p.header {
                        Some(h) => {
                            log_outcome(&h.from, &outcome);
                            out.push_str(&reply::iq_reply(h, reply::for_outcome(&outcome)));
                        }
                        None => log_outcome("pep", &outcome),
                    }
                }
            }
            while let Ok(req) = self.peps.try_recv() {
                seq += 1;
                let rid = format!("pep-{seq}");
                out.push_str(&pep::create_iq(&rid, &id.own, &req.node));
                peps.insert(rid, PepStep::Create(req));
            }
            let now = Instant::now();
            if now >= next_timers {
                // Timers at most every 2 ms: cheap per stanza under load.
                next_timers = now + Duration::from_millis(2);
                while deadlines.front().is_some_and(|(d, _)| *d <= now) {
                    let Some((_, token)) = deadlines.pop_front() else {
                        break;
                    };
                    if let Some(p) = pending.remove(&token) {
                        match &p.header {
                            Some(h) => {
                                log_outcome(&h.from, &PushOutcome::TimedOut);
                                out.push_str(&reply::iq_reply(
                                    h,
                                    reply::for_outcome(&PushOutcome::TimedOut),
                                ));
                            }
                            None => log_outcome("pep", &PushOutcome::TimedOut),
                        }
                    }
                }
                if pending.is_empty() {
                    deadlines.clear();
                }
                self.dispatcher.tick(now);
                if let Some((_, sent)) = &ping_sent
                    && now.duration_since(*sent) > ping_timeout
                {
                    return End::Lost("no answer to our ping".into());
                }
                if now >= next_ping && ping_sent.is_none() {
                    seq += 1;
                    let pid = format!("uwpx-ping-{seq}");
                    out.push_str(&reply::ping(&pid, &id.own, &id.server));
                    ping_sent = Some((pid, now));
                    next_ping = now + s.ping_interval;
                }
                if now >= next_removed {
                    next_removed = now + Duration::from_secs(2);
                    self.work_off_removed(id, &mut deleting, &mut peps, &mut seq, &mut out);
                }
            }
            if self.shutdown.is_triggered() && draining.is_none() {
                // Let publishes already with WNS get their real answer for a while.
                log::info!(
                    "xmpp: shutting down; {} publishes wait for WNS",
                    pending.len()
                );
                draining = Some(Instant::now());
            }
            if draining.is_some_and(|since| pending.is_empty() || since.elapsed() >= s.grace) {
                for (_, p) in pending.drain() {
                    if let Some(h) = p.header {
                        let shutting = PushOutcome::Wns(Outcome::Transient("shutting down".into()));
                        out.push_str(&reply::iq_reply(&h, reply::for_outcome(&shutting)));
                    }
                }
                for (_, step) in peps.drain() {
                    if let PepStep::Create(r) | PepStep::Subscribe(r) = step {
                        let _ = r.reply.send(Err("shutting down".into()));
                    }
                }
                out.push_str("</stream:stream>");
                let _ = reader.get_mut().write_all(out.as_bytes());
                let _ = reader.get_mut().flush();
                return End::Shutdown;
            }
            if !out.is_empty() {
                log::trace!("xmpp: -> {out}");
                if let Err(e) = reader.get_mut().write_all(out.as_bytes()) {
                    return End::Lost(format!("write failed: {e}"));
                }
                out.clear();
            }
        }
    }

    /// The next step of a PEP request after the server's answer.
    #[allow(clippy::too_many_arguments)]
    fn pep_answer(
        &self,
        id: &Identity,
        step: PepStep,
        error: Option<String>,
        peps: &mut HashMap<String, PepStep>,
        deleting: &mut HashSet<String>,
        seq: &mut u64,
        out: &mut String,
    ) {
        match step {
            // An existing node (a retry, or a crash before the DB commit) is fine.
            PepStep::Create(req) if error.is_none() || error.as_deref() == Some("conflict") => {
                *seq += 1;
                let rid = format!("pep-{seq}");
                out.push_str(&pep::subscribe_iq(&rid, &id.own, &req.node));
                peps.insert(rid, PepStep::Subscribe(req));
            }
            PepStep::Create(req) | PepStep::Subscribe(req) => {
                let result = match error {
                    None => Ok(()),
                    Some(e) => {
                        log::warn!("xmpp: PEP node for a new account failed: {e}");
                        Err(e)
                    }
                };
                let _ = req.reply.send(result);
            }
            PepStep::Delete(node) => {
                deleting.remove(&node);
                if error.is_none() || error.as_deref() == Some("item-not-found") {
                    if let Err(e) = self
                        .s
                        .store
                        .forget_removed_nodes(std::slice::from_ref(&node))
                    {
                        log::warn!("xmpp: cannot update the removed-node list: {e}");
                    }
                } else {
                    log::warn!("xmpp: deleting a PEP node failed ({error:?}); will retry");
                }
            }
        }
    }

    /// Deletes PEP nodes of removed accounts (client mode); in component mode there are
    /// no PEP nodes, so the list is just cleared.
    fn work_off_removed(
        &self,
        id: &Identity,
        deleting: &mut HashSet<String>,
        peps: &mut HashMap<String, PepStep>,
        seq: &mut u64,
        out: &mut String,
    ) {
        let removed = match self.s.store.removed_nodes(200) {
            Ok(r) if !r.is_empty() => r,
            Ok(_) => return,
            Err(e) => return log::warn!("xmpp: cannot read the removed-node list: {e}"),
        };
        if !id.client {
            let _ = self.s.store.forget_removed_nodes(&removed);
            return;
        }
        for node in removed {
            if deleting.insert(node.clone()) {
                *seq += 1;
                let rid = format!("pep-{seq}");
                out.push_str(&pep::delete_iq(&rid, &id.own, &node));
                peps.insert(rid, PepStep::Delete(node));
            }
        }
    }
}

/// A PEP request in flight.
enum PepStep {
    Create(PepRequest),
    Subscribe(PepRequest),
    Delete(String),
}

/// A publish waiting for its WNS outcome; client mode's have no IQ to answer.
struct Pending {
    header: Option<IqHeader>,
    since: Instant,
}

/// The bare part of a JID, lowercased.
fn bare(jid: &str) -> String {
    jid.split('/').next().unwrap_or("").to_lowercase()
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

/// Connects to the XMPP server with 10 s timeouts for the login phase.
fn dial(host: &str, port: u16) -> Result<TcpStream, XmppError> {
    let addr = (host, port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| XmppError::Protocol(format!("{host} does not resolve")))?;
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(10)))?;
    Ok(tcp)
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
    let mut reader = StanzaReader::new(dial(&c.host, c.port)?);
    component::authenticate(&mut reader, c.jid.as_str(), c.secret.expose())?;
    Ok(reader)
}

/// One info line per push outcome; no secrets, no user JIDs (`from` is a server).
fn log_outcome(from: &str, outcome: &PushOutcome) {
    use crate::ops::metrics::{METRICS, PublishResult as R};
    METRICS.publish(match outcome {
        PushOutcome::Wns(Outcome::Delivered) => R::Delivered,
        PushOutcome::Coalesced => R::Coalesced,
        PushOutcome::Wns(Outcome::ChannelGone) => R::ChannelGone,
        PushOutcome::Wns(Outcome::Transient(_)) | PushOutcome::TimedOut => R::Transient,
        PushOutcome::Wns(Outcome::Misconfigured(_) | Outcome::OurBug(_))
        | PushOutcome::NoWns
        | PushOutcome::Internal(_) => R::Misconfigured,
        PushOutcome::UnknownNode => R::UnknownNode,
        PushOutcome::BadSecret | PushOutcome::ForeignDomain => R::BadSecret,
    });
    match outcome {
        PushOutcome::Wns(Outcome::Delivered) | PushOutcome::Coalesced => {
            log::info!("push: from {from} {outcome:?}")
        }
        other => log::info!("push: from {from} not delivered: {other:?}"),
    }
}
