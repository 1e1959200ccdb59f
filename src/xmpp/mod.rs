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

pub mod component;
pub mod publish;
pub mod reader;
pub mod reply;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::config::ComponentConfig;
use crate::push::{Completed, Decision, Dispatcher, PushOutcome};
use crate::shutdown::Shutdown;
use crate::wns::Outcome;
use publish::{Inbound, IqHeader};
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

/// What the link needs besides the dispatcher.
#[derive(Debug, Clone)]
pub struct LinkSettings {
    /// The component's address and credentials.
    pub component: ComponentConfig,
    /// How often to ping the server.
    pub ping_interval: Duration,
    /// Longest wait for WNS before answering `wait`.
    pub deadline: Duration,
}

/// The running XMPP link.
pub struct XmppLink {
    thread: JoinHandle<()>,
    status: Arc<LinkStatus>,
}

impl XmppLink {
    /// Starts the `xmpp-io` thread.
    pub fn start(
        settings: LinkSettings,
        dispatcher: Dispatcher,
        outcomes: Receiver<Completed>,
        shutdown: Shutdown,
    ) -> io::Result<Self> {
        let status = Arc::new(LinkStatus::default());
        let st = status.clone();
        let thread = thread::Builder::new()
            .name("xmpp-io".into())
            .spawn(move || run(&settings, dispatcher, &outcomes, &shutdown, &st))?;
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

fn run(
    s: &LinkSettings,
    mut dispatcher: Dispatcher,
    outcomes: &Receiver<Completed>,
    shutdown: &Shutdown,
    status: &LinkStatus,
) {
    let mut backoff = Duration::from_secs(1);
    let mut first = true;
    while !shutdown.is_triggered() {
        let c = &s.component;
        log::info!(
            "xmpp: connecting to {}:{} as component {}",
            c.host,
            c.port,
            c.jid
        );
        match connect(c) {
            Ok(mut reader) => {
                status.connected.store(true, Ordering::Release);
                if !first {
                    status.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                first = false;
                backoff = Duration::from_secs(1);
                log::info!("xmpp: connected as {}", c.jid);
                let end = session(s, &mut reader, &mut dispatcher, outcomes, shutdown);
                status.connected.store(false, Ordering::Release);
                match end {
                    End::Shutdown => {
                        log::info!("xmpp: stream closed for shutdown");
                        return;
                    }
                    End::Lost(why) => log::warn!("xmpp: connection lost: {why}"),
                }
            }
            Err(XmppError::Auth(e)) => log::error!("xmpp: {e}"),
            Err(e) => log::warn!("xmpp: cannot connect: {e}"),
        }
        let wait = jitter(backoff);
        log::info!("xmpp: reconnecting in {:.1} s", wait.as_secs_f64());
        let until = Instant::now() + wait;
        while Instant::now() < until && !shutdown.is_triggered() {
            thread::sleep(Duration::from_millis(50));
        }
        backoff = (backoff * 2).min(Duration::from_secs(60));
    }
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

fn connect(c: &ComponentConfig) -> Result<StanzaReader<TcpStream>, XmppError> {
    let addr = (c.host.as_str(), c.port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| XmppError::Protocol(format!("{} does not resolve", c.host)))?;
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = StanzaReader::new(tcp);
    component::authenticate(&mut reader, &c.jid, c.secret.expose())?;
    Ok(reader)
}

/// A publish waiting for its WNS outcome.
struct Pending {
    header: IqHeader,
}

/// The authenticated stream: read, dispatch, reply, ping, until it ends.
fn session(
    s: &LinkSettings,
    reader: &mut StanzaReader<TcpStream>,
    dispatcher: &mut Dispatcher,
    outcomes: &Receiver<Completed>,
    shutdown: &Shutdown,
) -> End {
    let ns = component::NS_COMPONENT;
    let jid = s.component.jid.as_str();
    let server = jid.split_once('.').map_or(jid, |(_, d)| d).to_owned();
    let ping_timeout = s.ping_interval.min(Duration::from_secs(30));
    let mut pending: HashMap<u64, Pending> = HashMap::new();
    // Deadlines in arrival order (all publishes get the same budget), so expiry is a
    // look at the front, not a scan; entries of answered IQs are skipped.
    let mut deadlines: VecDeque<(Instant, u64)> = VecDeque::new();
    let mut next_timers = Instant::now();
    let mut out = String::new();
    let mut next_ping = Instant::now() + s.ping_interval;
    let mut ping_sent: Option<(String, Instant)> = None;
    let mut ping_seq = 0u64;
    let mut current_wait = Duration::ZERO;
    loop {
        let now = Instant::now();
        let mut wait = Duration::from_millis(200);
        if !pending.is_empty() {
            wait = Duration::from_millis(1);
        }
        if let Some(due) = dispatcher.next_due() {
            wait = wait.min(
                due.saturating_duration_since(now)
                    .max(Duration::from_millis(1)),
            );
        }
        if wait != current_wait {
            if reader.get_ref().set_read_timeout(Some(wait)).is_err() {
                return End::Lost("cannot set the read timeout".into());
            }
            current_wait = wait;
        }
        match reader.next_event() {
            Ok(StreamEvent::Stanza(stanza)) => {
                log::trace!("xmpp: <- {}", redact_secret(&String::from(&stanza)));
                match publish::classify(&stanza, ns) {
                    Inbound::Publish(h, p) => match dispatcher.publish(&h.from, &p, Instant::now())
                    {
                        Decision::Now(outcome) => {
                            log_outcome(&h, &outcome);
                            out.push_str(&reply::iq_reply(&h, reply::for_outcome(&outcome)));
                        }
                        Decision::Later(token) => {
                            let deadline = Instant::now() + s.deadline;
                            pending.insert(token, Pending { header: h });
                            deadlines.push_back((deadline, token));
                        }
                    },
                    Inbound::BadPublish(h, why) => {
                        log::info!("xmpp: malformed publish from {}: {why}", h.from);
                        out.push_str(&reply::bad_request(&h));
                    }
                    Inbound::DiscoInfo(h) => out.push_str(&reply::disco_info(&h)),
                    Inbound::DiscoItems(h) => out.push_str(&reply::disco_items(&h)),
                    Inbound::Ping(h) => out.push_str(&reply::iq_result(&h, "")),
                    Inbound::Unsupported(h) => out.push_str(&reply::unsupported(&h)),
                    Inbound::Response { id, .. } => {
                        if ping_sent.as_ref().is_some_and(|(p, _)| *p == id) {
                            ping_sent = None;
                        }
                    }
                    Inbound::Ignored => {}
                }
            }
            Ok(StreamEvent::Open(_)) => return End::Lost("unexpected second stream header".into()),
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

        while let Ok(done) = outcomes.try_recv() {
            if let Some(p) = pending.remove(&done.token) {
                let outcome = PushOutcome::Wns(done.outcome);
                log_outcome(&p.header, &outcome);
                out.push_str(&reply::iq_reply(&p.header, reply::for_outcome(&outcome)));
            }
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
                    log_outcome(&p.header, &PushOutcome::TimedOut);
                    out.push_str(&reply::iq_reply(
                        &p.header,
                        reply::for_outcome(&PushOutcome::TimedOut),
                    ));
                }
            }
            if pending.is_empty() {
                deadlines.clear();
            }
            dispatcher.tick(now);
            if let Some((_, sent)) = &ping_sent
                && now.duration_since(*sent) > ping_timeout
            {
                return End::Lost("no answer to our ping".into());
            }
            if now >= next_ping && ping_sent.is_none() {
                ping_seq += 1;
                let id = format!("uwpx-ping-{ping_seq}");
                out.push_str(&reply::ping(&id, jid, &server));
                ping_sent = Some((id, now));
                next_ping = now + s.ping_interval;
            }
        }
        if shutdown.is_triggered() {
            for (_, p) in pending.drain() {
                let shutting = PushOutcome::Wns(Outcome::Transient("shutting down".into()));
                out.push_str(&reply::iq_reply(&p.header, reply::for_outcome(&shutting)));
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

/// Masks the value of a `secret` form field, for trace logs of whole stanzas.
fn redact_secret(xml: &str) -> String {
    let mut out = String::with_capacity(xml.len());
    let mut rest = xml;
    while let Some(i) = rest
        .find("var='secret'")
        .or_else(|| rest.find("var=\"secret\""))
    {
        let (head, tail) = rest.split_at(i);
        out.push_str(head);
        match (tail.find("<value>"), tail.find("</value>")) {
            (Some(a), Some(b)) if a < b => {
                out.push_str(&tail[..a + 7]);
                out.push_str("********");
                rest = &tail[b..];
            }
            _ => {
                out.push_str(tail);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// One info line per push outcome; no secrets, no user JIDs (the `from` is a domain).
fn log_outcome(h: &IqHeader, outcome: &PushOutcome) {
    match outcome {
        PushOutcome::Wns(Outcome::Delivered) | PushOutcome::Coalesced => {
            log::info!("push: from {} {:?}", h.from, outcome)
        }
        other => log::info!("push: from {} not delivered: {other:?}", h.from),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_are_masked_in_trace_logs() {
        let xml = "<x><field var='secret'><value>s3cret</value></field><field var=\"secret\"><value>two</value></field><value>keep</value></x>";
        let red = super::redact_secret(xml);
        assert!(!red.contains("s3cret") && !red.contains("two"), "{red}");
        assert!(red.contains("<value>keep</value>"));
    }
}
