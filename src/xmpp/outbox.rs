//! The stream's outbox: the publishes waiting for their WNS outcome, and the stream's
//! write side, shared by `xmpp-io` and the WNS workers.
//!
//! A finished push normally travels to `xmpp-io` over a channel, and an eventfd wakes
//! the thread to answer the IQ. When that thread sleeps, the wake-up costs more than
//! the answer: a context switch in and out, an epoll round, and an inter-processor
//! interrupt, which on a VM is an exit to the hypervisor (README, Performance, the
//! 5,000/s row). So in component mode a worker that finds `xmpp-io` parked answers
//! the IQ itself: it takes the publish out of the waiting list and writes the result
//! on the component socket, both under one lock, and wakes nobody. While `xmpp-io` is
//! awake it gathers many answers into one write, so then the channel is cheaper, and
//! is used. Client mode's publishes are PEP events with no IQ to answer, and its TLS
//! stream cannot be written from two threads: there, outcomes always take the channel.
//!
//! Rules:
//! - Every write to the stream happens under the lock, so stanzas never interleave.
//! - A worker writes only what the socket takes without blocking; the rest waits in
//!   `unsent`, which `xmpp-io` writes before anything else.
//! - Each waiting IQ is answered once, by whoever removes it from the list: a worker
//!   with its outcome, or `xmpp-io` with an outcome from the channel, at the deadline,
//!   or at shutdown, which removes them all before it writes the stream's end.
//!
//! Threads: `xmpp-io` and `wns-worker-*`. Locks: one mutex. Workers only `try_lock`
//! it, so a slow server that holds `xmpp-io` in a write never holds up a worker.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use super::publish::IqHeader;
use super::reply;
use super::session::log_outcome;
use crate::metrics::METRICS;
use crate::net::{self, Socket};
use crate::push::{Completed, OutcomeSink, PushOutcome, Return, Ticket};

/// A publish waiting for its WNS outcome; client mode's have no IQ to answer.
#[derive(Debug)]
pub(super) struct Waiting {
    pub header: Option<IqHeader>,
    pub since: Instant,
}

impl Waiting {
    /// Who sent it, for the log: the user's server, or `pep`.
    pub fn from(&self) -> &str {
        self.header.as_ref().map_or("pep", |h| h.from.as_str())
    }
}

/// See the module docs.
pub struct Outbox {
    inner: Mutex<Inner>,
    /// Whether `unsent` holds bytes: read by `xmpp-io` before it sleeps.
    has_unsent: AtomicBool,
    /// The way through `xmpp-io`: its outcome channel and its wake.
    io: Return,
}

#[derive(Default)]
struct Inner {
    waiting: HashMap<Ticket, Waiting>,
    /// The component socket while a session is up in component mode.
    stream: Option<TcpStream>,
    unsent: Vec<u8>,
}

impl Outbox {
    /// An outbox whose fallback is `io` (the channel `xmpp-io` drains, and its wake).
    pub fn new(io: Return) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            has_unsent: AtomicBool::new(false),
            io,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A session starts: nothing waits yet. `stream`: a handle on the component
    /// socket (non-blocking already), for workers to answer on; `None` in client mode.
    pub(super) fn attach(&self, stream: Option<TcpStream>) {
        let mut inner = self.lock();
        inner.waiting.clear();
        inner.unsent.clear();
        inner.stream = stream;
        self.has_unsent.store(false, Ordering::SeqCst);
    }

    /// The session ended: its waiting IQs went with the stream, and no worker may
    /// write any more.
    pub(super) fn detach(&self) {
        self.attach(None);
    }

    /// Puts a publish on the waiting list.
    pub(super) fn wait_for(&self, ticket: Ticket, w: Waiting) {
        self.lock().waiting.insert(ticket, w);
    }

    /// Takes a publish off the list to answer it, unless it was answered already.
    pub(super) fn take(&self, ticket: Ticket) -> Option<Waiting> {
        self.lock().waiting.remove(&ticket)
    }

    /// Takes every waiting publish (shutdown).
    pub(super) fn take_all(&self) -> Vec<Waiting> {
        self.lock().waiting.drain().map(|(_, w)| w).collect()
    }

    /// How many publishes wait.
    pub(super) fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }

    /// Drops from the front of `deadlines` the publishes answered already, so the
    /// front is the next deadline that matters.
    pub(super) fn prune(&self, deadlines: &mut VecDeque<(Instant, Ticket)>) {
        let inner = self.lock();
        if inner.waiting.is_empty() {
            deadlines.clear();
        }
        while deadlines
            .front()
            .is_some_and(|(_, t)| !inner.waiting.contains_key(t))
        {
            deadlines.pop_front();
        }
    }

    /// Whether a worker left bytes for `xmpp-io` to write.
    pub(super) fn has_unsent(&self) -> bool {
        self.has_unsent.load(Ordering::SeqCst)
    }

    /// Writes what workers left unsent, then `out`, on `s` (the session's stream),
    /// blocking for at most `timeout` when the server does not take the bytes.
    pub(super) fn write<S: Socket>(
        &self,
        s: &mut S,
        out: &[u8],
        timeout: Duration,
    ) -> io::Result<()> {
        let mut inner = self.lock();
        if !inner.unsent.is_empty() {
            let unsent = std::mem::take(&mut inner.unsent);
            self.has_unsent.store(false, Ordering::SeqCst);
            net::write_all(s, &unsent, timeout)?;
        }
        net::write_all(s, out, timeout)
    }

    /// Answers on the calling worker thread if `xmpp-io` sleeps (see the module docs).
    /// Gives the outcome back when it must take the channel instead.
    fn answer_here(&self, done: Completed) -> Option<Completed> {
        if !self.io.wake.is_parked() {
            return Some(done);
        }
        let mut inner = match self.inner.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return Some(done),
        };
        if inner.stream.is_none() || !inner.unsent.is_empty() {
            return Some(done);
        }
        // Not waiting any more: answered at its deadline; nothing to do.
        let w = inner.waiting.remove(&done.ticket)?;
        METRICS.publish_latency.observe(w.since.elapsed());
        let outcome = PushOutcome::Wns(done.outcome);
        log_outcome(w.from(), &outcome);
        let Some(h) = &w.header else { return None };
        let answer = reply::iq_reply(h, reply::for_outcome(&outcome));
        log::trace!("xmpp: -> {answer}");
        let mut bytes = answer.as_bytes();
        while !bytes.is_empty() {
            let written = match inner.stream.as_ref() {
                Some(mut s) => s.write(bytes),
                None => Ok(0),
            };
            match written {
                Ok(n) if n > 0 => bytes = &bytes[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Full window, or a broken stream (which `xmpp-io` will find): the
                // rest goes out from `xmpp-io`, woken for it.
                _ => {
                    inner.unsent.extend_from_slice(bytes);
                    self.has_unsent.store(true, Ordering::SeqCst);
                    drop(inner);
                    self.io.wake.wake();
                    return None;
                }
            }
        }
        None
    }
}

impl OutcomeSink for Outbox {
    fn completed(&self, done: Completed) {
        if let Some(done) = self.answer_here(done) {
            self.io.completed(done);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::TcpListener;
    use std::sync::Arc;

    use crossbeam_channel::{Receiver, unbounded};

    use super::*;
    use crate::net::Wake;
    use crate::wns::Outcome;

    /// An outbox lent one end of a socket pair (non-blocking, as `xmpp-io` leaves it);
    /// the other end plays the XMPP server.
    struct Rig {
        outbox: Outbox,
        channel: Receiver<Completed>,
        ours: TcpStream,
        server: TcpStream,
    }

    fn rig(wake: Arc<Wake>) -> Rig {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        server
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let (tx, channel) = unbounded();
        let outbox = Outbox::new(Return { tx, wake });
        outbox.attach(Some(ours.try_clone().unwrap()));
        Rig {
            outbox,
            channel,
            ours,
            server,
        }
    }

    fn waiting(outbox: &Outbox, n: u64) -> Ticket {
        let t = Ticket::for_tests(n);
        let header = IqHeader {
            id: format!("p{n}"),
            from: "localhost".into(),
            to: "push.localhost".into(),
        };
        outbox.wait_for(
            t,
            Waiting {
                header: Some(header),
                since: Instant::now(),
            },
        );
        t
    }

    fn done(ticket: Ticket, outcome: Outcome) -> Completed {
        Completed { ticket, outcome }
    }

    /// What the server got, up to the read timeout.
    fn received(server: &mut TcpStream) -> String {
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        while let Ok(n) = server.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(got).unwrap()
    }

    #[test]
    fn with_the_io_thread_asleep_a_worker_answers_on_the_stream_itself() {
        let mut r = rig(Wake::parked_for_tests());
        let t = waiting(&r.outbox, 1);
        let gone = waiting(&r.outbox, 2);
        r.outbox.completed(done(t, Outcome::Delivered));
        r.outbox.completed(done(gone, Outcome::ChannelGone));
        let got = received(&mut r.server);
        assert_eq!(got.matches("<iq ").count(), 2, "{got}");
        assert!(
            got.contains("id='p1'") && got.contains("type='result'"),
            "{got}"
        );
        assert!(
            got.contains("id='p2'") && got.contains("type='error'"),
            "{got}"
        );
        // Answered: off the list, and nothing for the I/O thread.
        assert_eq!(r.outbox.waiting(), 0);
        assert!(r.channel.is_empty());
        assert!(!r.outbox.has_unsent());
    }

    #[test]
    fn with_the_io_thread_awake_the_outcome_takes_the_channel() {
        let mut r = rig(Wake::none());
        let t = waiting(&r.outbox, 1);
        r.outbox.completed(done(t, Outcome::Delivered));
        assert_eq!(r.channel.try_recv().unwrap().ticket, t);
        // Still waiting: the I/O thread answers it.
        assert_eq!(r.outbox.waiting(), 1);
        assert_eq!(received(&mut r.server), "");
    }

    #[test]
    fn without_a_lent_stream_the_outcome_takes_the_channel() {
        let r = rig(Wake::parked_for_tests());
        r.outbox.attach(None);
        let t = waiting(&r.outbox, 1);
        r.outbox.completed(done(t, Outcome::Delivered));
        assert_eq!(r.channel.try_recv().unwrap().ticket, t);
        assert_eq!(r.outbox.waiting(), 1);
    }

    #[test]
    fn an_iq_answered_at_its_deadline_is_not_answered_again() {
        let mut r = rig(Wake::parked_for_tests());
        let t = waiting(&r.outbox, 1);
        // The I/O thread took it (deadline) before WNS answered.
        assert!(r.outbox.take(t).is_some());
        r.outbox.completed(done(t, Outcome::Delivered));
        assert_eq!(received(&mut r.server), "");
        assert!(r.channel.is_empty());
    }

    #[test]
    fn after_the_session_ended_no_worker_writes() {
        let mut r = rig(Wake::parked_for_tests());
        let t = waiting(&r.outbox, 1);
        r.outbox.detach();
        assert_eq!(r.outbox.waiting(), 0);
        r.outbox.completed(done(t, Outcome::Delivered));
        assert_eq!(received(&mut r.server), "");
    }

    #[test]
    fn what_a_full_socket_did_not_take_goes_out_first_and_whole() {
        let mut r = rig(Wake::parked_for_tests());
        // Fill the socket until it takes no more (the server does not read).
        let filler = vec![b' '; 1 << 16];
        let mut sent = 0usize;
        loop {
            match (&r.ours).write(&filler) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        let t = waiting(&r.outbox, 1);
        r.outbox.completed(done(t, Outcome::Delivered));
        assert!(r.outbox.has_unsent());
        assert!(r.channel.is_empty());
        // While bytes are unsent, later outcomes go through the I/O thread.
        let later = waiting(&r.outbox, 2);
        r.outbox.completed(done(later, Outcome::Delivered));
        assert_eq!(r.channel.try_recv().unwrap().ticket, later);
        // The I/O thread's next write puts the unsent answer before its own bytes.
        let server = std::thread::spawn(move || {
            r.server
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            received(&mut r.server)
        });
        let mut ours = r.ours.try_clone().unwrap();
        r.outbox
            .write(&mut ours, b"<iq id='own'/>", Duration::from_secs(5))
            .unwrap();
        assert!(!r.outbox.has_unsent());
        drop(ours);
        drop(r.ours);
        r.outbox.detach();
        let got = server.join().unwrap();
        let tail = got[sent..].to_owned();
        assert!(got[..sent].bytes().all(|b| b == b' '));
        let first = tail.find("id='p1'").unwrap();
        let own = tail.find("id='own'").unwrap();
        assert!(first < own, "{tail}");
        assert_eq!(tail.matches("<iq ").count(), 2, "{tail}");
    }
}
