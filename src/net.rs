//! A byte stream over TCP, plain or TLS, that still gives access to its socket for
//! timeouts and half-close. Shared by the registration connections and the XMPP link.
//! And the XMPP I/O thread's sleep: [`Waiter`] (epoll on its socket and an eventfd)
//! with the [`Wake`] that WNS workers and registration threads call.
//!
//! Threads: any; a [`Waiter`] belongs to one thread. No locks.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use native_tls::TlsStream;

/// A stream whose underlying TCP socket can be reached.
pub trait Socket: Read + Write {
    /// The TCP socket under the stream.
    fn tcp(&self) -> &TcpStream;
}

impl Socket for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Socket for TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref()
    }
}

/// Wakes the XMPP I/O thread out of [`Waiter::wait`] when there is work that did not
/// come through its socket: replies a worker left for it to write, a PEP request.
/// Cheap when the thread is busy: only a thread that is parked costs a syscall (an
/// eventfd write) to wake, so under load the workers hand over replies without one.
#[derive(Debug)]
pub struct Wake {
    waker: Option<mio::Waker>,
    parked: AtomicBool,
}

impl Wake {
    /// A wake that wakes nothing: for a dispatcher without an I/O thread (tests,
    /// tools).
    pub fn none() -> Arc<Self> {
        Arc::new(Self {
            waker: None,
            parked: AtomicBool::new(false),
        })
    }

    /// Whether no I/O thread is awake to pick work up: it sleeps in [`Waiter::wait`]
    /// (or is about to, and then sees work sent before this call), or there is none.
    /// A WNS worker writes a reply itself only then; an awake I/O thread writes it
    /// together with the others of its batch.
    pub fn is_idle(&self) -> bool {
        fence(Ordering::SeqCst);
        self.waker.is_none() || self.parked.load(Ordering::SeqCst)
    }

    /// Call after sending the work (the send must come first: see [`Waiter::wait`]).
    pub fn wake(&self) {
        fence(Ordering::SeqCst);
        if self.parked.swap(false, Ordering::SeqCst)
            && let Some(w) = &self.waker
            && let Err(e) = w.wake()
        {
            log::warn!("xmpp: cannot wake the I/O thread: {e}");
        }
    }
}

const SOCKET: Token = Token(0);
const WAKE: Token = Token(1);

/// The I/O thread's wait for "its socket is readable, or [`Wake::wake`] was called, or
/// a timer is due": epoll with an eventfd, so a reply goes out as soon as WNS has
/// answered, with no polling interval in between.
pub struct Waiter {
    poll: Poll,
    events: Events,
    wake: Arc<Wake>,
}

impl Waiter {
    /// A waiter and the wake other threads get.
    pub fn new() -> io::Result<Self> {
        let poll = Poll::new()?;
        let waker = mio::Waker::new(poll.registry(), WAKE)?;
        Ok(Self {
            poll,
            events: Events::with_capacity(4),
            wake: Arc::new(Wake {
                waker: Some(waker),
                parked: AtomicBool::new(false),
            }),
        })
    }

    /// The handle other threads wake this one with.
    pub fn wake(&self) -> Arc<Wake> {
        self.wake.clone()
    }

    /// Watches `tcp` for input (edge-triggered: read until it would block before the
    /// next wait) and makes it non-blocking.
    pub fn watch(&mut self, tcp: &TcpStream) -> io::Result<()> {
        tcp.set_nonblocking(true)?;
        self.poll
            .registry()
            .register(&mut SourceFd(&tcp.as_raw_fd()), SOCKET, Interest::READABLE)
    }

    /// Stops watching `tcp` (before it is closed or handed on) and makes it blocking.
    pub fn unwatch(&mut self, tcp: &TcpStream) {
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&tcp.as_raw_fd()));
        let _ = tcp.set_nonblocking(false);
    }

    /// Sleeps until the watched socket has input, [`Wake::wake`] is called, or
    /// `timeout` passes. `pending` is asked after the thread is marked parked: work
    /// sent before that is seen there, work sent after it wakes the poll, so none is
    /// slept through. True when the socket has new input: otherwise a read would only
    /// say "would block", and is skipped.
    pub fn wait(&mut self, timeout: Duration, pending: impl Fn() -> bool) -> io::Result<bool> {
        self.wake.parked.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if pending() {
            self.wake.parked.store(false, Ordering::SeqCst);
            return Ok(false);
        }
        let result = self.poll.poll(&mut self.events, Some(timeout));
        self.wake.parked.store(false, Ordering::SeqCst);
        match result {
            Ok(()) => Ok(self.events.iter().any(|e| e.token() == SOCKET)),
            // A signal: look at the socket to be sure.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(e),
        }
    }
}

/// Writes all of `buf` to a socket that may be non-blocking (watched by a [`Waiter`]):
/// when the peer's window is full, the socket blocks for the rest of this write, for
/// at most `timeout`, and is made non-blocking again.
pub fn write_all<S: Socket>(s: &mut S, mut buf: &[u8], timeout: Duration) -> io::Result<()> {
    let mut blocked = false;
    let result = loop {
        if buf.is_empty() {
            break Ok(());
        }
        match s.write(buf) {
            Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && !blocked => {
                blocked = true;
                if let Err(e) = s
                    .tcp()
                    .set_nonblocking(false)
                    .and_then(|()| s.tcp().set_write_timeout(Some(timeout)))
                {
                    break Err(e);
                }
            }
            Err(e) => break Err(e),
        }
    };
    if blocked {
        s.tcp().set_nonblocking(true)?;
    }
    result.and_then(|()| s.flush())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::atomic::AtomicBool;
    use std::time::Instant;

    const LONG: Duration = Duration::from_secs(20);

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    #[test]
    fn a_wake_from_another_thread_ends_the_wait_long_before_its_timeout() {
        let mut w = Waiter::new().unwrap();
        let wake = w.wake();
        let work = Arc::new(AtomicBool::new(false));
        let sender = {
            let work = work.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                work.store(true, Ordering::SeqCst);
                wake.wake();
            })
        };
        let t = Instant::now();
        let readable = w.wait(LONG, || work.load(Ordering::SeqCst)).unwrap();
        // Woken (or the work seen), not timed out; and not the socket.
        assert!(t.elapsed() < LONG / 2, "{:?}", t.elapsed());
        assert!(!readable);
        assert!(work.load(Ordering::SeqCst));
        sender.join().unwrap();
    }

    #[test]
    fn work_sent_before_the_wait_is_seen_without_sleeping() {
        let mut w = Waiter::new().unwrap();
        let t = Instant::now();
        assert!(!w.wait(LONG, || true).unwrap());
        assert!(t.elapsed() < LONG / 2);
        // A wake with nobody parked costs nothing and is not remembered as a wake-up
        // that ends a later wait at once: this one times out.
        w.wake().wake();
        let t = Instant::now();
        assert!(!w.wait(Duration::from_millis(30), || false).unwrap());
        assert!(
            t.elapsed() >= Duration::from_millis(29),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn input_on_the_watched_socket_ends_the_wait_and_says_so() {
        let mut w = Waiter::new().unwrap();
        let (mut ours, mut theirs) = pair();
        w.watch(&ours).unwrap();
        // Non-blocking now: nothing to read yet.
        let mut buf = [0u8; 8];
        let err = ours.read(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            theirs.write_all(b"<iq/>").unwrap();
            theirs
        });
        let t = Instant::now();
        assert!(w.wait(LONG, || false).unwrap());
        assert!(t.elapsed() < LONG / 2);
        assert_eq!(ours.read(&mut buf).unwrap(), 5);
        let _theirs = writer.join().unwrap();
        w.unwatch(&ours);
        ours.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        // Blocking again: a read waits (and times out) instead of failing at once.
        let err = ours.read(&mut buf).unwrap_err();
        assert!(matches!(
            err.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ));
    }

    #[test]
    fn a_large_write_to_a_slow_reader_on_a_non_blocking_socket_arrives_whole() {
        let mut w = Waiter::new().unwrap();
        let (mut ours, mut theirs) = pair();
        w.watch(&ours).unwrap();
        // Far more than the socket buffers hold: the write must block part of the way.
        let data: Vec<u8> = (0..32 << 20).map(|i| (i % 251) as u8).collect();
        let expected = data.clone();
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let mut got = Vec::new();
            theirs.read_to_end(&mut got).unwrap();
            got
        });
        write_all(&mut ours, &data, LONG).unwrap();
        // Non-blocking again afterwards.
        let mut buf = [0u8; 1];
        assert_eq!(
            ours.read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        ours.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(reader.join().unwrap() == expected);
    }
}
