//! One client connection: TLS handshake, the frame loop, timeouts, and a clean close.
//!
//! The loop reads with a short socket timeout so that it can notice shutdown and the
//! per-request deadline between reads. Each complete frame is decoded, handled and
//! answered with a single write before the next frame is looked at, so pipelined
//! requests are answered in order. A request that is too large or too slow gets its
//! error answer, then the connection is half-closed and drained briefly, so the answer
//! is not lost to a TCP reset.
//!
//! Memory is bounded across connections, not only per request: each connection may
//! buffer [`FREE_PER_CONNECTION`] bytes of a request on its own (a real request is a
//! few KiB), and bytes beyond that come from one [`Budget`] shared by all connections.
//! A connection that cannot get budget is answered busy and closed, with nothing
//! stored. So the request bytes buffered at once are at most
//! `tcp.max_connections` × [`FREE_PER_CONNECTION`] + [`Budget::limit`].
//!
//! Threads: each `reg-conn` thread runs [`serve`] for its own socket; `reg-reject`
//! threads run [`reject`]. Locks: the store's, inside the handler; the budget is an
//! atomic counter, with a mutex only around the time of its last warning.

use std::io::{self, Read, Write};
use std::net::{Shutdown as NetShutdown, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use native_tls::{HandshakeError, TlsAcceptor, TlsStream};

use super::codec::{Action, Frame, Framer, Rules, decode};
use super::handler::Handler;
use super::wire::{Answer, RegError, encode};
use crate::logging::Throttle;
use crate::metrics::{METRICS, RegAction, RegResult};
use crate::net::Socket;
use crate::shutdown::Shutdown;
use crate::types::ProtocolVersion;

/// How often a blocked read wakes up to check shutdown and the deadline.
const POLL: Duration = Duration::from_millis(250);

/// Bytes of a request a connection may buffer without drawing on the shared
/// [`Budget`]: 32 accounts with long JIDs fit several times over.
pub const FREE_PER_CONNECTION: usize = 16 * 1024;

/// The shared budget when `limits.max_request_bytes` is below it.
pub const SHARED_BUDGET: usize = 32 * 1024 * 1024;

/// Request bytes buffered beyond [`FREE_PER_CONNECTION`], summed over all connections.
pub struct Budget {
    used: AtomicUsize,
    limit: usize,
    last_warning: Mutex<Option<Instant>>,
}

impl Budget {
    /// A budget of [`SHARED_BUDGET`], or of one whole request if that is larger, so a
    /// request of the largest allowed size can still be served.
    pub fn new(max_request_bytes: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            limit: SHARED_BUDGET.max(max_request_bytes),
            last_warning: Mutex::new(None),
        }
    }

    /// The most it hands out.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes handed out now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    fn try_take(&self, n: usize) -> bool {
        let taken = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|&t| t <= self.limit)
            })
            .is_ok();
        if !taken {
            let mut last = self
                .last_warning
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if last.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                log::warn!(
                    "registration: large requests in flight hold the whole shared buffer ({} KiB); answering busy",
                    self.limit / 1024
                );
                *last = Some(Instant::now());
            }
        }
        taken
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// One connection's draw on the [`Budget`]; given back when dropped.
struct Held<'a> {
    budget: &'a Budget,
    charged: usize,
}

impl<'a> Held<'a> {
    fn new(budget: &'a Budget) -> Self {
        Self { budget, charged: 0 }
    }

    /// Adjusts the draw to `buffered` bytes of request; false if the budget is spent
    /// (the draw is then unchanged).
    fn hold(&mut self, buffered: usize) -> bool {
        let want = buffered.saturating_sub(FREE_PER_CONNECTION);
        if want > self.charged {
            if !self.budget.try_take(want - self.charged) {
                return false;
            }
        } else {
            self.budget.give(self.charged - want);
        }
        self.charged = want;
        true
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.budget.give(self.charged);
    }
}

/// Everything a connection thread needs, shared by all of them.
pub struct ConnContext {
    /// Request handling.
    pub handler: Handler,
    /// Decoding rules.
    pub rules: Rules,
    /// TLS, if configured.
    pub tls: Option<TlsAcceptor>,
    /// `tcp.read_timeout_ms`: the longest a whole request (or handshake) may take.
    pub read_timeout: Duration,
    /// `limits.max_request_bytes`.
    pub max_request_bytes: usize,
    /// Set on Ctrl+C/SIGTERM.
    pub shutdown: Shutdown,
}

/// Serves one accepted connection until the client closes, an error, a timeout, or
/// shutdown with no request in flight. Request bytes beyond [`FREE_PER_CONNECTION`]
/// are drawn from `budget`.
pub fn serve(tcp: TcpStream, ctx: &ConnContext, budget: &Budget) {
    let _ = tcp.set_nodelay(true);
    let _ = tcp.set_write_timeout(Some(ctx.read_timeout));
    match &ctx.tls {
        None => frame_loop(tcp, ctx, budget),
        Some(acceptor) => {
            if let Some(tls) = handshake(acceptor, tcp, ctx.read_timeout, &ctx.shutdown) {
                frame_loop(tls, ctx, budget);
            }
        }
    }
}

/// Runs the TLS handshake within `timeout` in total, however slowly the client sends.
fn handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    timeout: Duration,
    shutdown: &Shutdown,
) -> Option<TlsStream<TcpStream>> {
    let deadline = Instant::now() + timeout;
    if tcp.set_read_timeout(Some(POLL)).is_err() {
        return None;
    }
    let mut attempt = acceptor.accept(tcp);
    loop {
        match attempt {
            Ok(tls) => return Some(tls),
            Err(HandshakeError::WouldBlock(mid)) => {
                if Instant::now() >= deadline || shutdown.is_triggered() {
                    log::debug!("registration: TLS handshake timed out");
                    return None;
                }
                attempt = mid.handshake();
            }
            Err(HandshakeError::Failure(e)) => {
                // At info so that an operator sees it (a certificate clients reject, a
                // client without TLS), but at most one line per 10 s.
                static FAILURES: Throttle = Throttle::new(Duration::from_secs(10));
                match FAILURES.hit(Instant::now()) {
                    Some(n) => log::info!(
                        "registration: {n} TLS handshake(s) failed since the last such line; latest: {e}"
                    ),
                    None => log::debug!("registration: TLS handshake failed: {e}"),
                }
                return None;
            }
        }
    }
}

fn frame_loop<S: Socket>(mut stream: S, ctx: &ConnContext, budget: &Budget) {
    let mut framer = Framer::new(ctx.max_request_bytes);
    let mut buf = [0u8; 8192];
    let mut deadline = Instant::now() + ctx.read_timeout;
    let mut held = Held::new(budget);
    // Bytes after the last NUL: what the framer holds once its frames are taken.
    let mut buffered = 0;
    // The framer's buffer grew past the free allowance and its request has ended.
    let mut shrink = false;
    loop {
        while let Some(frame) = framer.next_frame() {
            match frame {
                Frame::Request(bytes) => {
                    if answer(&mut stream, &bytes, ctx).is_err() {
                        return;
                    }
                    deadline = Instant::now() + ctx.read_timeout;
                }
                Frame::TooLarge => {
                    let err = RegError::TooLarge {
                        limit: ctx.max_request_bytes,
                    };
                    log::info!("registration: rejected: {err}");
                    let _ = stream.write_all(&encode(ProtocolVersion::V2, &Err(err)));
                    close_gracefully(stream.tcp());
                    return;
                }
            }
        }
        if shrink {
            // A large request keeps its allocation in the framer: start a small one
            // with what follows it.
            let rest = framer.take_rest();
            framer = Framer::new(ctx.max_request_bytes);
            if let Some(rest) = rest {
                framer.push(&rest);
            }
            shrink = false;
        }
        let partial = framer.has_partial();
        if !partial && ctx.shutdown.is_triggered() {
            return;
        }
        let now = Instant::now();
        if now >= deadline {
            if partial {
                let err = RegError::Timeout {
                    ms: ctx.read_timeout.as_millis(),
                };
                log::info!("registration: rejected: {err}");
                let _ = stream.write_all(&encode(ProtocolVersion::V2, &Err(err)));
                close_gracefully(stream.tcp());
            }
            return;
        }
        if stream
            .tcp()
            .set_read_timeout(Some(POLL.min(deadline - now)))
            .is_err()
        {
            return;
        }
        match stream.read(&mut buf) {
            Ok(0) => {
                if let Some(rest) = framer.take_rest() {
                    let _ = answer(&mut stream, &rest, ctx);
                }
                return;
            }
            Ok(n) => {
                let data = &buf[..n];
                let after = match data.iter().rposition(|&b| b == 0) {
                    Some(nul) => n - nul - 1,
                    None => buffered + n,
                };
                if !held.hold(after) {
                    let err = RegError::Busy;
                    log::info!("registration: rejected: {err} (shared request buffer spent)");
                    let _ = stream.write_all(&encode(ProtocolVersion::V2, &Err(err)));
                    close_gracefully(stream.tcp());
                    return;
                }
                shrink |= after < buffered && buffered > FREE_PER_CONNECTION;
                buffered = after;
                framer.push(data);
            }
            Err(e) if is_retryable(&e) => {}
            Err(e) => {
                log::debug!("registration: read failed: {e}");
                return;
            }
        }
    }
}

/// Decodes, handles and answers one frame with a single write.
fn answer<S: Write>(stream: &mut S, frame: &[u8], ctx: &ConnContext) -> io::Result<()> {
    let (version, result, what, action) = match decode(frame, &ctx.rules) {
        Ok(req) => {
            let version = req.version;
            let what = format!("{} device={}", req.action.name(), req.device_id.short());
            let action = match req.action {
                Action::SetChannelUri(_) => RegAction::SetChannelUri,
                Action::SetPushAccounts(_) => RegAction::SetPushAccounts,
                Action::RequestTestPush => RegAction::RequestTestPush,
            };
            (version, ctx.handler.handle(req), what, action)
        }
        Err(rejected) => (
            rejected.version,
            Err(rejected.error),
            "request".to_owned(),
            RegAction::Invalid,
        ),
    };
    let kind = match &result {
        // Client mode: accounts whose PEP node could not be created are stored but
        // answered `success: false`; the request as a whole did not do its job.
        Ok(Answer::Accounts { accounts, .. }) if accounts.iter().any(|a| !a.success) => {
            let failed = accounts.iter().filter(|a| !a.success).count();
            log::warn!(
                "registration: {what}: {failed} of {} accounts failed (success: false: no PEP node)",
                accounts.len()
            );
            RegResult::Failed
        }
        Ok(_) => {
            log::info!("registration: {what} ok");
            RegResult::Ok
        }
        Err(e @ (RegError::Store(_) | RegError::TestPushFailed(_))) => {
            log::warn!("registration: {what} failed: {e}");
            RegResult::Failed
        }
        Err(e) => {
            log::info!("registration: {what} rejected: {e}");
            RegResult::Rejected
        }
    };
    METRICS.registration(action, kind);
    stream.write_all(&encode(version, &result))?;
    stream.flush()
}

/// Answers a connection over the cap with a busy error and closes it. Runs on a
/// short-lived `reg-reject` thread with tight timeouts, so a flood cannot hold it.
pub fn reject(tcp: TcpStream, tls: Option<&TlsAcceptor>, shutdown: &Shutdown) {
    const QUICK: Duration = Duration::from_secs(2);
    let _ = tcp.set_nodelay(true);
    let _ = tcp.set_write_timeout(Some(QUICK));
    let answer = encode(ProtocolVersion::V2, &Err(RegError::Busy));
    match tls {
        None => {
            let mut tcp = tcp;
            let _ = tcp.write_all(&answer);
            close_gracefully(&tcp);
        }
        Some(acceptor) => {
            if let Some(mut tls) = handshake(acceptor, tcp, QUICK, shutdown) {
                let _ = tls.write_all(&answer);
                close_gracefully(tls.get_ref());
            }
        }
    }
}

/// Half-closes and reads what the client still sends for a moment, so that closing
/// with unread data does not reset the connection and destroy our answer in flight.
fn close_gracefully(tcp: &TcpStream) {
    let _ = tcp.shutdown(NetShutdown::Write);
    let _ = tcp.set_read_timeout(Some(Duration::from_millis(200)));
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut sink = [0u8; 4096];
    let mut reader = tcp;
    while Instant::now() < deadline {
        match reader.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if is_retryable(&e) => {}
            Err(_) => return,
        }
    }
}

fn is_retryable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_budget_bounds_what_connections_buffer_beyond_their_allowance() {
        let budget = Budget::new(64 * 1024);
        assert_eq!(budget.limit(), SHARED_BUDGET);
        let mut a = Held::new(&budget);
        let mut b = Held::new(&budget);
        // Within the free allowance: no draw at all.
        assert!(a.hold(FREE_PER_CONNECTION));
        assert_eq!(budget.used(), 0);
        assert!(a.hold(FREE_PER_CONNECTION + SHARED_BUDGET - 10));
        assert!(!b.hold(FREE_PER_CONNECTION + 11));
        assert!(b.hold(FREE_PER_CONNECTION + 10));
        assert_eq!(budget.used(), SHARED_BUDGET);
        // A request that ended gives its share back.
        assert!(a.hold(3));
        assert_eq!(budget.used(), 10);
        drop(b);
        assert_eq!(budget.used(), 0);
        // One request of the largest allowed size always fits.
        assert_eq!(Budget::new(64 * 1024 * 1024).limit(), 64 * 1024 * 1024);
    }
}
