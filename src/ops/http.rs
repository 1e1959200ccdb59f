//! The optional health and metrics endpoint (`metrics.listen`): plain HTTP/1.1 on std,
//! one short request per connection.
//!
//! - `GET /health`: 200 "ok" when the database answers, the XMPP connection (if one
//!   is configured) is up and the WNS token endpoint has not refused our credentials;
//!   otherwise 503 with a one-line reason.
//! - `GET /metrics`: the Prometheus text format.
//!
//! Threads: `ops-http` accepts and answers inline (requests are tiny; a 2 s timeout
//! bounds a slow client). Locks: the store's read connection for the counts.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::clock::Clock;
use crate::metrics::{METRICS, gauge};
use crate::shutdown::Shutdown;
use crate::store::Store;
use crate::wns::WnsPool;
use crate::xmpp::LinkStatus;

/// What the endpoint reports on.
pub struct Sources {
    /// The database.
    pub store: Arc<Store>,
    /// The WNS pool, if WNS is configured.
    pub wns: Option<Arc<WnsPool>>,
    /// The XMPP link, if one is configured.
    pub xmpp: Option<Arc<LinkStatus>>,
}

/// The bound endpoint.
pub struct OpsHttp {
    /// Its address.
    pub addr: SocketAddr,
    thread: JoinHandle<()>,
}

impl OpsHttp {
    /// Binds and starts the `ops-http` thread.
    pub fn start(addr: SocketAddr, sources: Sources, shutdown: Shutdown) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        log::info!("ops: health and metrics on http://{addr}/health and /metrics");
        let thread = thread::Builder::new()
            .name("ops-http".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if shutdown.is_triggered() {
                        break;
                    }
                    if let Ok(stream) = stream {
                        serve(stream, &sources);
                    }
                }
            })?;
        Ok(Self { addr, thread })
    }

    /// Wakes the accept loop and waits for the thread (after shutdown was triggered).
    pub fn stop(self) {
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        let _ = self.thread.join();
    }
}

fn serve(mut stream: TcpStream, sources: &Sources) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 2048];
    let mut len = 0;
    while len < buf.len() && !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf[len..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => len += n,
        }
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, body, kind) = match (method, path) {
        ("GET", "/health") => match health(sources) {
            Ok(()) => ("200 OK", "ok\n".to_owned(), "text/plain"),
            Err(why) => ("503 Service Unavailable", format!("{why}\n"), "text/plain"),
        },
        ("GET", "/metrics") => ("200 OK", metrics(sources), "text/plain; version=0.0.4"),
        ("GET", _) => ("404 Not Found", "not found\n".into(), "text/plain"),
        _ => ("405 Method Not Allowed", "GET only\n".into(), "text/plain"),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
}

fn health(s: &Sources) -> Result<(), String> {
    s.store.ping().map_err(|e| format!("database: {e}"))?;
    if let Some(x) = &s.xmpp
        && !x.is_connected()
    {
        return Err("xmpp: not connected".into());
    }
    // Issue 10 item 16: refused WNS credentials are a configuration error, not a blip.
    if let Some(why) = s.wns.as_ref().and_then(|w| w.credentials_rejected()) {
        return Err(format!(
            "wns: WNS credentials rejected by the token endpoint ({why}): check wns.packet_id and wns.client_secret"
        ));
    }
    Ok(())
}

fn metrics(s: &Sources) -> String {
    let mut out = String::with_capacity(8192);
    METRICS.render(&mut out);
    if let Some(pool) = &s.wns {
        gauge(
            &mut out,
            "uwpx_wns_queue_depth",
            "Push jobs waiting for a worker.",
            pool.queue_len(),
        );
        gauge(
            &mut out,
            "uwpx_wns_workers_busy",
            "WNS workers in the middle of a job.",
            pool.busy(),
        );
        if let Some(at) = pool.token_expires_at() {
            gauge(
                &mut out,
                "uwpx_wns_token_expiry_seconds",
                "Seconds until the WNS access token expires.",
                at - Clock::system().unix_now(),
            );
        }
    }
    if let Some(x) = &s.xmpp {
        gauge(
            &mut out,
            "uwpx_xmpp_connected",
            "1 while the XMPP stream is up.",
            u8::from(x.is_connected()),
        );
        let _ = writeln!(
            out,
            "# HELP uwpx_xmpp_reconnects_total Reconnections after the first connection.\n# TYPE uwpx_xmpp_reconnects_total counter\nuwpx_xmpp_reconnects_total {}",
            x.reconnects()
        );
    }
    if let Ok(c) = s.store.counts() {
        gauge(&mut out, "uwpx_devices", "Devices stored.", c.devices);
        gauge(
            &mut out,
            "uwpx_accounts",
            "Push accounts stored.",
            c.accounts,
        );
    }
    out
}
