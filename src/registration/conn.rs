//! One client connection: TLS handshake, the frame loop, timeouts, and a clean close.
//!
//! The loop reads with a short socket timeout so that it can notice shutdown and the
//! per-request deadline between reads. Each complete frame is decoded, handled and
//! answered with a single write before the next frame is looked at, so pipelined
//! requests are answered in order. A request that is too large or too slow gets its
//! error answer, then the connection is half-closed and drained briefly, so the answer
//! is not lost to a TCP reset.
//!
//! Threads: each `reg-conn` thread runs [`serve`] for its own socket; `reg-reject`
//! threads run [`reject`]. Locks: only the store's, inside the handler.

use std::io::{self, Read, Write};
use std::net::{Shutdown as NetShutdown, TcpStream};
use std::time::{Duration, Instant};

use native_tls::{HandshakeError, TlsAcceptor, TlsStream};

use super::codec::{Action, Frame, Framer, Rules, decode};
use super::handler::Handler;
use super::wire::{RegError, encode};
use crate::logging::Throttle;
use crate::net::Socket;
use crate::ops::metrics::{METRICS, RegAction, RegResult};
use crate::shutdown::Shutdown;
use crate::types::ProtocolVersion;

/// How often a blocked read wakes up to check shutdown and the deadline.
const POLL: Duration = Duration::from_millis(250);

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
/// shutdown with no request in flight.
pub fn serve(tcp: TcpStream, ctx: &ConnContext) {
    let _ = tcp.set_nodelay(true);
    let _ = tcp.set_write_timeout(Some(ctx.read_timeout));
    match &ctx.tls {
        None => frame_loop(tcp, ctx),
        Some(acceptor) => {
            if let Some(tls) = handshake(acceptor, tcp, ctx.read_timeout, &ctx.shutdown) {
                frame_loop(tls, ctx);
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

fn frame_loop<S: Socket>(mut stream: S, ctx: &ConnContext) {
    let mut framer = Framer::new(ctx.max_request_bytes);
    let mut buf = [0u8; 8192];
    let mut deadline = Instant::now() + ctx.read_timeout;
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
            Ok(n) => framer.push(&buf[..n]),
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
