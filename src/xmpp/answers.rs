//! The publishes waiting for WNS, and their answers, written by the WNS worker that got
//! the outcome.
//!
//! Why the worker writes: handing every outcome back to `xmpp-io` cost that thread a
//! wake-up per push (an eventfd write on the worker, a switch in and out on `xmpp-io`).
//! At 5,000 pushes/s the server used about 10 µs per push less without it (see the
//! README's performance section). So in component mode the worker writes the IQ reply
//! straight to the component socket (a `try_clone` of it, non-blocking), and `xmpp-io`
//! only sleeps until the next publish.
//!
//! Writes from several threads never interleave inside a stanza: every byte goes
//! through [`Answers`]'s queue, in order, and one thread at a time holds the writer's
//! role and writes from the front of the queue, outside the lock. A worker that finds
//! the role taken only appends its reply (under load one write carries many replies);
//! one that takes it writes without blocking, and what the socket does not take stays
//! at the front of the queue for `xmpp-io` (woken), which writes with blocking
//! semantics up to its write timeout. In client mode (TLS) there are no IQs to answer
//! for pushes; anything queued is written by `xmpp-io`.
//!
//! Threads: `wns-worker-*` call [`Answers::finished`] (through `push::Answer`);
//! `xmpp-io` registers publishes, expires their deadlines, drains them at shutdown and
//! flushes. Locks: `state`, briefly, never across a write; `xmpp-io` waits on `idle`
//! for a worker's non-blocking write to end.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::publish::IqHeader;
use super::reply;
use crate::metrics::{METRICS, PublishResult};
use crate::net::{self, Socket, Wake};
use crate::push::{Answer, PushOutcome, Ticket};
use crate::wns::Outcome;

/// With more publishes than this waiting for WNS, a worker leaves its reply to
/// `xmpp-io`, which writes the replies of many pushes at once: at 256 publishes in
/// flight, workers writing their own replies cost about 6 µs per push more (worker
/// CPU, and the load generator's reads) than one write per batch. At 5,000/s about one
/// publish waits at a time.
const BATCH_ABOVE: usize = 8;

/// A publish waiting for its WNS outcome; client mode's have no IQ to answer.
#[derive(Debug)]
pub(super) struct Pending {
    pub header: Option<IqHeader>,
    pub since: Instant,
}

/// Where one accepted publish stands.
#[derive(Debug)]
enum Slot {
    /// Its job is queued; the session has not registered the IQ yet.
    Dispatched,
    /// The session registered it; the outcome is still to come.
    Waiting(Pending),
    /// The outcome came before the session registered it (a job refused at once).
    Done(Outcome),
}

#[derive(Default)]
struct State {
    /// The current stream's accepted publishes.
    slots: HashMap<Ticket, Slot>,
    /// Where workers write: the component socket; `None` in client mode and between
    /// streams.
    socket: Option<Arc<TcpStream>>,
    /// Bytes not written yet, in order: whoever writes next starts with these.
    queued: Vec<u8>,
    /// A thread holds the writer's role (and writes outside the lock): queue only.
    writing: bool,
    /// A worker's write failed: the stream is broken.
    failed: Option<String>,
    /// Counts streams begun and ended: a worker that wrote outside the lock while the
    /// stream changed drops what it has left instead of queueing it for the next one.
    stream: u64,
}

/// The publishes of the current stream that wait for WNS, and the one way bytes reach
/// its socket (see the module docs).
pub struct Answers {
    state: Mutex<State>,
    /// Signalled when the writer's role is let go.
    idle: Condvar,
    /// Wakes `xmpp-io` when queued bytes need it.
    wake: Arc<Wake>,
    /// Push outcomes by [`PublishResult`] since the last summary line.
    tally: [AtomicU64; PublishResult::LABELS.len()],
}

impl Answers {
    /// Answers that wake `xmpp-io` through `wake` when it has bytes to write.
    pub fn new(wake: Arc<Wake>) -> Self {
        Self {
            state: Mutex::default(),
            idle: Condvar::new(),
            wake,
            tally: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A stream came up: workers write to `socket` (component mode) or nowhere.
    pub(super) fn begin(&self, socket: Option<TcpStream>) {
        let mut st = self.lock();
        st.slots.clear();
        st.socket = socket.map(Arc::new);
        st.queued.clear();
        st.failed = None;
        st.stream += 1;
    }

    /// The stream ended: what is still waiting can no longer be answered on it.
    pub(super) fn end(&self) {
        let mut st = self.lock();
        st.slots.clear();
        st.socket = None;
        st.queued.clear();
        st.stream += 1;
    }

    /// The session registers the IQ of an accepted publish; answered at once if its
    /// outcome came first.
    pub(super) fn register(&self, ticket: Ticket, pending: Pending) {
        let mut st = self.lock();
        match st.slots.remove(&ticket) {
            Some(Slot::Done(outcome)) => {
                self.answer(&mut st, pending, &PushOutcome::Wns(outcome));
                self.write_queued(st);
            }
            Some(Slot::Dispatched | Slot::Waiting(_)) | None => {
                st.slots.insert(ticket, Slot::Waiting(pending));
            }
        }
    }

    /// Takes the publish out if it still waits (for an answer by its caller).
    pub(super) fn take(&self, ticket: Ticket) -> Option<Pending> {
        let mut st = self.lock();
        match st.slots.remove(&ticket) {
            Some(Slot::Waiting(p)) => Some(p),
            Some(other) => {
                st.slots.insert(ticket, other);
                None
            }
            None => None,
        }
    }

    /// Takes every registered publish out (the shutdown drain's end; outcomes that
    /// come later find nothing to answer).
    pub(super) fn take_all(&self) -> Vec<Pending> {
        std::mem::take(&mut self.lock().slots)
            .into_values()
            .filter_map(|s| match s {
                Slot::Waiting(p) => Some(p),
                Slot::Dispatched | Slot::Done(_) => None,
            })
            .collect()
    }

    /// Publishes still waiting for WNS.
    pub(super) fn waiting(&self) -> usize {
        self.lock().slots.len()
    }

    /// Counts an outcome for the summary line and logs it; the IQ reply is the
    /// caller's. No secrets and no user JIDs: `from` is a server, or `pep`.
    pub(super) fn count(&self, from: &str, outcome: &PushOutcome) {
        let result = log_outcome(from, outcome);
        self.tally[result as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts since the last call, by [`PublishResult::LABELS`]; starts again.
    pub(super) fn take_tally(&self) -> [u64; PublishResult::LABELS.len()] {
        std::array::from_fn(|i| self.tally[i].swap(0, Ordering::Relaxed))
    }

    /// Whether `xmpp-io` has bytes to write that no worker will, or a broken stream to
    /// notice.
    pub(super) fn needs_io(&self) -> bool {
        let st = self.lock();
        st.failed.is_some() || (!st.writing && !st.queued.is_empty())
    }

    /// Writes `own` (after whatever is queued) and everything queued meanwhile to
    /// `stream`, blocking up to `timeout` on a server that does not read; on
    /// `xmpp-io` only. A worker's failed write on this stream is this call's error.
    pub(super) fn flush<S: Socket>(
        &self,
        own: &str,
        stream: &mut S,
        timeout: Duration,
    ) -> io::Result<()> {
        let mut st = self.lock();
        if let Some(why) = &st.failed {
            return Err(io::Error::other(why.clone()));
        }
        st.queued.extend_from_slice(own.as_bytes());
        loop {
            while st.writing {
                st = self.idle.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            if st.queued.is_empty() {
                return Ok(());
            }
            let bytes = std::mem::take(&mut st.queued);
            st.writing = true;
            drop(st);
            let written = net::write_all(stream, &bytes, timeout);
            st = self.lock();
            st.writing = false;
            self.idle.notify_all();
            written?;
        }
    }

    /// Logs, counts and queues the reply of a publish that got its outcome.
    fn answer(&self, st: &mut State, p: Pending, outcome: &PushOutcome) {
        let from = p.header.as_ref().map_or("pep", |h| h.from.as_str());
        self.count(from, outcome);
        METRICS.publish_latency.observe(p.since.elapsed());
        if let Some(h) = &p.header {
            let reply = reply::iq_reply(h, reply::for_outcome(outcome));
            log::trace!("xmpp: -> {reply}");
            st.queued.extend_from_slice(reply.as_bytes());
        }
    }

    /// Takes the writer's role if it is free and `xmpp-io` sleeps, and writes what is
    /// queued, outside the lock and without blocking, until the queue is empty or the
    /// socket takes no more; the rest is left at the front of the queue for `xmpp-io`
    /// (woken). An awake `xmpp-io` writes the queue itself before it sleeps: under load
    /// one write then carries the replies of many pushes, instead of one each.
    fn write_queued<'a>(&'a self, mut st: MutexGuard<'a, State>) {
        if st.writing || st.queued.is_empty() || !self.wake.is_idle() {
            return;
        }
        let Some(socket) = st.socket.clone() else {
            return self.wake.wake();
        };
        st.writing = true;
        let stream = st.stream;
        loop {
            let bytes = std::mem::take(&mut st.queued);
            drop(st);
            let (sent, error) = write_some(&socket, &bytes);
            st = self.lock();
            if st.stream != stream {
                // That stream is gone: its bytes and its errors with it.
                break;
            }
            if sent < bytes.len() {
                // A partial stanza goes back in front: the next writer finishes it first.
                let later = std::mem::replace(&mut st.queued, bytes[sent..].to_vec());
                st.queued.extend_from_slice(&later);
            }
            if let Some(e) = error {
                st.failed = Some(e);
            }
            if sent < bytes.len() || st.failed.is_some() || st.queued.is_empty() {
                break;
            }
        }
        st.writing = false;
        self.idle.notify_all();
        if !st.queued.is_empty() || st.failed.is_some() {
            self.wake.wake();
        }
    }

    /// The bytes queued and not written (tests without a socket).
    #[cfg(test)]
    pub(super) fn queued(&self) -> String {
        String::from_utf8_lossy(&self.lock().queued).into_owned()
    }
}

impl Answer for Answers {
    fn expect(&self, ticket: Ticket) {
        self.lock().slots.insert(ticket, Slot::Dispatched);
    }

    fn finished(&self, ticket: Ticket, outcome: Outcome) {
        let mut st = self.lock();
        match st.slots.remove(&ticket) {
            Some(Slot::Waiting(p)) => {
                self.answer(&mut st, p, &PushOutcome::Wns(outcome));
                if st.slots.len() > BATCH_ABOVE {
                    // More outcomes follow within microseconds: one write for them all.
                    drop(st);
                    return self.wake.wake();
                }
                self.write_queued(st);
            }
            Some(Slot::Dispatched) => {
                st.slots.insert(ticket, Slot::Done(outcome));
            }
            // Answered `wait` at its deadline already, or of a stream that ended.
            Some(Slot::Done(_)) | None => {}
        }
    }
}

/// Writes as much of `bytes` as the non-blocking `socket` takes now: how much, and the
/// error that stopped it, if any (a full socket is not an error).
fn write_some(mut socket: &TcpStream, bytes: &[u8]) -> (usize, Option<String>) {
    let mut sent = 0;
    while sent < bytes.len() {
        match socket.write(&bytes[sent..]) {
            Ok(0) => return (sent, Some("the socket took no bytes".into())),
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return (sent, Some(e.to_string())),
        }
    }
    (sent, None)
}

/// One line and one metric count per push outcome. Delivered and coalesced pushes are
/// debug lines (the info log sums them up every `SUMMARY_EVERY`); every other outcome
/// is an info line.
fn log_outcome(from: &str, outcome: &PushOutcome) -> PublishResult {
    use PublishResult as R;
    let result = match outcome {
        PushOutcome::Wns(Outcome::Delivered) => R::Delivered,
        PushOutcome::Coalesced => R::Coalesced,
        PushOutcome::Wns(Outcome::ChannelGone) => R::ChannelGone,
        PushOutcome::Wns(Outcome::Transient(_)) | PushOutcome::TimedOut => R::Transient,
        PushOutcome::Wns(Outcome::Misconfigured(_) | Outcome::OurBug(_))
        | PushOutcome::NoWns
        | PushOutcome::Internal(_) => R::Misconfigured,
        PushOutcome::UnknownNode => R::UnknownNode,
        PushOutcome::BadSecret | PushOutcome::ForeignDomain => R::BadSecret,
    };
    METRICS.publish(result);
    match outcome {
        PushOutcome::Wns(Outcome::Delivered) | PushOutcome::Coalesced => {
            log::debug!("push: from {from} {outcome:?}")
        }
        other => log::info!("push: from {from} not delivered: {other:?}"),
    }
    result
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::TcpListener;

    use super::*;

    /// A connected pair: (ours, as the I/O loop has it: non-blocking; the server's end).
    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (theirs, _) = l.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        (ours, theirs)
    }

    fn pending(id: &str) -> Pending {
        Pending {
            header: Some(IqHeader {
                id: id.into(),
                from: "localhost".into(),
                to: "push.localhost".into(),
            }),
            since: Instant::now(),
        }
    }

    /// Answers on a fresh stream, as component mode begins it: (answers, our end of
    /// the socket, the server's end).
    fn started() -> (Answers, TcpStream, TcpStream) {
        let (ours, theirs) = pair();
        let a = Answers::new(Wake::none());
        a.begin(Some(ours.try_clone().unwrap()));
        (a, ours, theirs)
    }

    /// Accepts publish `id` under ticket `n`, as the dispatcher and the session do.
    fn accept(a: &Answers, n: u64, id: &str) -> Ticket {
        let t = Ticket::for_tests(n);
        a.expect(t);
        a.register(t, pending(id));
        t
    }

    /// Reads what arrived until `want` has, or 5 s passed.
    fn read_until(s: &mut TcpStream, want: &str) -> String {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let (mut got, mut buf) = (Vec::new(), [0u8; 65536]);
        let until = Instant::now() + Duration::from_secs(5);
        while !String::from_utf8_lossy(&got).contains(want) && Instant::now() < until {
            if let Ok(n) = s.read(&mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
        }
        String::from_utf8(got).unwrap()
    }

    #[test]
    fn a_worker_writes_the_reply_straight_to_the_socket() {
        let (a, _ours, mut theirs) = started();
        let t = accept(&a, 1, "p1");
        assert_eq!(a.waiting(), 1);
        a.finished(t, Outcome::Delivered);
        let want = reply_to("p1", Outcome::Delivered);
        assert!(want.contains("type='result'"), "{want}");
        assert_eq!(read_until(&mut theirs, &want), want);
        assert_eq!(a.waiting(), 0);
        assert!(!a.needs_io() && a.queued().is_empty());
    }

    #[test]
    fn with_many_publishes_in_flight_replies_wait_for_one_write_by_the_io_thread() {
        let (a, ours, mut theirs) = started();
        let n = BATCH_ABOVE as u64 + 3;
        for t in 0..n {
            accept(&a, t, &format!("b{t}"));
        }
        a.finished(Ticket::for_tests(0), Outcome::Delivered);
        a.finished(Ticket::for_tests(1), Outcome::Delivered);
        assert!(a.needs_io(), "queued for the I/O thread");
        let both = reply_to("b0", Outcome::Delivered) + &reply_to("b1", Outcome::Delivered);
        assert_eq!(a.queued(), both);
        let mut io_side = ours;
        a.flush("", &mut io_side, Duration::from_secs(5)).unwrap();
        assert_eq!(read_until(&mut theirs, &both), both);
        // Few left in flight: the next reply goes out from the worker at once.
        for t in 2..n - 1 {
            a.finished(Ticket::for_tests(t), Outcome::Delivered);
        }
        a.flush("", &mut io_side, Duration::from_secs(5)).unwrap();
        let last = reply_to(&format!("b{}", n - 1), Outcome::Delivered);
        read_until(
            &mut theirs,
            &reply_to(&format!("b{}", n - 2), Outcome::Delivered),
        );
        a.finished(Ticket::for_tests(n - 1), Outcome::Delivered);
        assert!(!a.needs_io() && a.queued().is_empty());
        assert_eq!(read_until(&mut theirs, &last), last);
    }

    #[test]
    fn an_outcome_before_the_registration_is_answered_at_registration() {
        let (a, _ours, mut theirs) = started();
        let t = Ticket::for_tests(7);
        a.expect(t);
        // A job refused at once (queue full) finishes before the session registers it.
        a.finished(t, Outcome::ChannelGone);
        a.register(t, pending("early"));
        let want = reply_to("early", Outcome::ChannelGone);
        assert!(want.contains("item-not-found"), "{want}");
        assert_eq!(read_until(&mut theirs, &want), want);
        assert_eq!(a.waiting(), 0);
    }

    #[test]
    fn outcomes_after_the_deadline_or_of_an_ended_stream_write_nothing() {
        let (a, ours, mut theirs) = started();
        let (late, old) = (accept(&a, 1, "x"), accept(&a, 2, "x"));
        // The deadline answered `late` (its caller writes that answer).
        assert!(a.take(late).is_some());
        a.finished(late, Outcome::Delivered);
        // The stream ended, another came up: `old` belongs to the one before.
        a.end();
        let (ours2, _theirs2) = pair();
        a.begin(Some(ours2));
        a.finished(old, Outcome::Delivered);
        assert_eq!(a.waiting(), 0);
        assert!(a.queued().is_empty());
        drop(ours);
        theirs
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = [0u8; 64];
        assert!(matches!(theirs.read(&mut buf), Ok(0) | Err(_)), "no bytes");
    }

    #[test]
    fn what_a_full_socket_does_not_take_stays_queued_in_order_for_the_io_thread() {
        let (a, ours, mut theirs) = started();
        // The server does not read: fill its window with stanzas from the I/O thread's
        // point of view (queued, then written by a worker's attempt).
        let filler = format!("<message>{}</message>", "x".repeat(8192));
        let mut filled = 0;
        let t = accept(&a, 1, "behind");
        while filled < 64 << 20 && a.queued().is_empty() {
            let mut st = a.lock();
            st.queued.extend_from_slice(filler.as_bytes());
            filled += filler.len();
            a.write_queued(st);
        }
        assert!(a.needs_io(), "the rest is left to the I/O thread");
        a.finished(t, Outcome::Delivered);
        let reply = reply_to("behind", Outcome::Delivered);
        assert!(a.queued().ends_with(&reply), "the reply queues behind");
        // The server reads again; the I/O thread writes the rest, and its own bytes.
        let reader = std::thread::spawn(move || read_until(&mut theirs, "<r/>"));
        let mut io_side = ours;
        a.flush("<r/>", &mut io_side, Duration::from_secs(10))
            .unwrap();
        let got = reader.join().unwrap();
        assert_eq!(got.len(), filled + reply.len() + "<r/>".len());
        assert!(got.ends_with("<r/>"));
        let reply_at = got.find("id='behind'").unwrap();
        assert!(
            reply_at > filled - filler.len(),
            "the reply is not inside a stanza"
        );
        assert_eq!(got.matches("<message>").count(), filled / filler.len());
        assert!(!a.needs_io());
    }

    #[test]
    fn replies_from_many_workers_and_the_io_thread_arrive_whole_and_once() {
        let (a, ours, mut theirs) = started();
        let a = Arc::new(a);
        let (workers, each) = (4u64, 500u64);
        for t in 0..workers * each {
            accept(&a, t, &format!("w{t}"));
        }
        let reader = std::thread::spawn(move || read_until(&mut theirs, "<done/>"));
        let threads: Vec<_> = (0..workers)
            .map(|w| {
                let a = a.clone();
                std::thread::spawn(move || {
                    for i in 0..each {
                        a.finished(Ticket::for_tests(w * each + i), Outcome::Delivered);
                    }
                })
            })
            .collect();
        // Meanwhile the I/O thread writes stanzas of its own.
        let mut io_side = ours;
        for i in 0..200 {
            let own = format!("<iq id='own{i}'/>");
            a.flush(&own, &mut io_side, Duration::from_secs(10))
                .unwrap();
        }
        for t in threads {
            t.join().unwrap();
        }
        a.flush("<done/>", &mut io_side, Duration::from_secs(10))
            .unwrap();
        let mut rest = reader.join().unwrap();
        for t in 0..workers * each {
            let reply = reply_to(&format!("w{t}"), Outcome::Delivered);
            assert_eq!(rest.matches(&reply).count(), 1, "{reply}");
            rest = rest.replacen(&reply, "", 1);
        }
        for i in 0..200 {
            rest = rest.replacen(&format!("<iq id='own{i}'/>"), "", 1);
        }
        assert_eq!(rest, "<done/>", "nothing torn, nothing extra");
        assert_eq!(a.waiting(), 0);
    }

    /// The IQ reply to publish `id` with this outcome.
    fn reply_to(id: &str, outcome: Outcome) -> String {
        let p = pending(id);
        reply::iq_reply(
            p.header.as_ref().unwrap(),
            reply::for_outcome(&PushOutcome::Wns(outcome)),
        )
    }

    #[test]
    fn client_mode_queues_for_the_io_thread() {
        let a = Answers::new(Wake::none());
        a.begin(None);
        let t = accept(&a, 3, "q");
        a.finished(t, Outcome::Delivered);
        assert!(a.queued().contains("id='q'") && a.needs_io());
        let tally = a.take_tally();
        assert_eq!(tally[PublishResult::Delivered as usize], 1);
        assert_eq!(a.take_tally().iter().sum::<u64>(), 0);
    }
}
