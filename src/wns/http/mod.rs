//! The notify POST's own HTTP/1.1-over-TLS client: one request shape, sent as cheaply
//! as a blocking client can. ureq did the same job at about 47 µs of CPU per push:
//! headers and body in two TLS records, socket timeouts set on every request, two
//! ioctls and a read to probe each pooled connection, and an `http::HeaderMap` per
//! request. Here, per push:
//! - the request line, headers and body are formatted into the connection's own buffer
//!   and go out in one `write_all`, so in one TLS record (bodies are < 5 KB);
//! - the only syscalls are that write and one read of the answer (reads are buffered
//!   under TLS: `Buffered`); TCP_NODELAY and the socket timeouts are set at connect
//!   (`wns.timeout_ms`), and changed only for a request whose own time left is shorter
//!   (and back for the next one that has more);
//! - a pooled connection is not probed: one idle longer than [`IDLE_LIMIT`] is closed
//!   unused, and a request that meets a connection the server closed meanwhile (EOF or
//!   reset before any answer byte, or the 408 a server sends as it closes an idle
//!   connection) is sent once more on a new connection. Never after other answer bytes
//!   came: WNS may have acted on it.
//!
//! No redirect is followed (a 3xx is just a status): the bearer token must only go to
//! an allowed host. A connection whose answer said `Connection: close`, ran to EOF,
//! was cut at the body limit, or that had any error is closed, not pooled.
//!
//! Parts: [`pool`] keeps idle connections (LIFO, capped per host and in total as
//! ureq's pool was); [`response`] parses answers (fuzzed); [`CachingResolver`], shared
//! with the ureq agent of the token request, looks a host up at most once per
//! [`super::client::RESOLVE_TTL`].
//!
//! Threads: used by `wns-worker-*` (and by whoever calls [`Https::preconnect`]); DNS
//! cache misses run on a short-lived `wns-resolve` thread ([`resolve`]). Locks: the
//! pool's and the DNS cache's, each held for a map operation, never across I/O.

pub mod pool;
pub mod resolve;
pub mod response;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use native_tls::{HandshakeError, TlsConnector, TlsStream};

use crate::types::ChannelUri;
use pool::Pool;
pub use pool::{IDLE_LIMIT, PoolLimits};
pub use resolve::CachingResolver;
pub use response::Answer;
use response::{Response, ResponseParser};

/// The shortest socket timeout set; zero would mean "no timeout" to the kernel.
const MIN_TIMEOUT: Duration = Duration::from_millis(1);

/// Longest answer body kept in an [`Answer`] (characters), as before.
const BODY_TEXT_LIMIT: usize = 512;

const USER_AGENT: &str = concat!("uwpx-push-server/", env!("CARGO_PKG_VERSION"));

/// The HTTPS client of the notify POST (see the module docs).
pub struct Https {
    tls: TlsConnector,
    resolver: Arc<CachingResolver>,
    pool: Pool<Conn>,
    /// `wns.timeout_ms`: the socket timeouts set at connect, and the longest a request
    /// may take.
    timeout: Duration,
    /// The optional WNS headers, formatted once (each ends in CRLF).
    extra_headers: String,
    opened: AtomicU64,
}

/// Why an exchange failed without an answer.
enum Failed {
    /// Nothing of an answer arrived because the connection was closed or reset: on a
    /// pooled connection, the server closed it while it was idle.
    NoAnswer(String),
    /// Anything else, timeouts included.
    Other(String),
}

impl Https {
    /// A client with an empty pool. `extra_headers` are header lines sent with every
    /// request, each ending in CRLF.
    pub fn new(
        tls: TlsConnector,
        resolver: Arc<CachingResolver>,
        timeout: Duration,
        extra_headers: String,
        limits: PoolLimits,
    ) -> Self {
        Self {
            tls,
            resolver,
            pool: Pool::new(limits),
            timeout: timeout.max(MIN_TIMEOUT),
            extra_headers,
            opened: AtomicU64::new(0),
        }
    }

    /// POSTs `payload` to the channel with the WNS headers and `bearer`. `timeout` caps
    /// this request (roughly: it bounds each socket operation and is checked between
    /// reads); `wns.timeout_ms` caps it too.
    pub fn post(
        &self,
        uri: &ChannelUri,
        payload: &[u8],
        bearer: &str,
        timeout: Duration,
    ) -> Answer {
        let t = match Target::parse(uri.as_str()) {
            Ok(t) => t,
            Err(e) => return Answer::Transport(e),
        };
        if !bearer.bytes().all(header_byte) {
            return Answer::Transport("the access token has bytes a header cannot carry".into());
        }
        let req = Request {
            target: &t,
            payload,
            bearer,
        };
        let limit = timeout.min(self.timeout).max(MIN_TIMEOUT);
        let deadline = Instant::now() + limit;
        let result = match self.pool.take(t.authority) {
            Some(conn) => {
                let why = match self.round_trip(conn, &req, limit, deadline) {
                    Err(Failed::NoAnswer(why)) => why,
                    // A 408 the server sent when it gave up on the idle connection,
                    // read as if it answered our request (no probe saw it first).
                    Ok(r) if r.status == 408 && !r.reusable => "408 for the idle connection".into(),
                    other => return answer(other),
                };
                log::debug!(
                    "wns: a kept-alive connection to {} was closed ({why}); sending again on a new one",
                    t.host
                );
                let left = deadline.saturating_duration_since(Instant::now());
                self.fresh(&req, left.max(MIN_TIMEOUT), deadline)
            }
            None => self.fresh(&req, limit, deadline),
        };
        answer(result)
    }

    /// Opens up to `connections` TLS connections to the channel's host and leaves them
    /// idle in the pool (no more than the per-host cap holds), so the first pushes after
    /// a start do not each pay a handshake. Stops at the first failure, which is logged
    /// at debug. Returns how many it opened. No request is sent, so no token either.
    pub fn preconnect(&self, uri: &ChannelUri, connections: usize) -> usize {
        let t = match Target::parse(uri.as_str()) {
            Ok(t) => t,
            Err(e) => {
                log::debug!("wns: not preconnecting: {e}");
                return 0;
            }
        };
        let room = self
            .pool
            .limits()
            .per_host
            .saturating_sub(self.pool.idle_for(t.authority));
        let mut opened = 0;
        for _ in 0..connections.min(room) {
            match self.connect(&t, self.timeout) {
                Ok(conn) => {
                    self.pool.put(t.authority, conn);
                    opened += 1;
                }
                Err(e) => {
                    log::debug!("wns: preconnecting to {}: {e}", t.host);
                    break;
                }
            }
        }
        opened
    }

    /// Idle connections in the pool.
    pub fn idle(&self) -> usize {
        self.pool.idle()
    }

    /// TLS connections opened so far (tests, metrics).
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// One exchange on a new connection.
    fn fresh(
        &self,
        req: &Request<'_>,
        limit: Duration,
        deadline: Instant,
    ) -> Result<Response, Failed> {
        let conn = self.connect(req.target, limit).map_err(Failed::Other)?;
        self.round_trip(conn, req, limit, deadline)
    }

    /// Sends the request in one write, reads the answer, and returns the connection to
    /// the pool if it may carry another request.
    fn round_trip(
        &self,
        mut conn: Conn,
        req: &Request<'_>,
        limit: Duration,
        deadline: Instant,
    ) -> Result<Response, Failed> {
        let host = req.target.host;
        conn.set_timeout(limit)
            .map_err(|e| Failed::Other(format!("setting the socket timeout: {e}")))?;
        req.format(&mut conn.request, &self.extra_headers);
        if let Err(e) = conn.tls.write_all(&conn.request) {
            let why = format!("sending to {host}: {e}");
            return Err(if is_timeout(&e) {
                Failed::Other(why)
            } else {
                Failed::NoAnswer(why)
            });
        }
        let response = conn.read_response(host, deadline)?;
        if response.reusable {
            self.pool.put(req.target.authority, conn);
        }
        Ok(response)
    }

    /// Resolves, connects (each address in turn) and shakes hands, within `limit`.
    fn connect(&self, t: &Target<'_>, limit: Duration) -> Result<Conn, String> {
        let start = Instant::now();
        let addrs = self
            .resolver
            .resolve(t.host, t.port, limit)
            .map_err(|e| format!("looking up {}: {e}", t.host))?;
        let mut tcp = None;
        let mut last = String::from("no address");
        for addr in addrs.iter() {
            let left = limit.saturating_sub(start.elapsed());
            if left < MIN_TIMEOUT {
                last = "timed out".into();
                break;
            }
            match TcpStream::connect_timeout(addr, left) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        let tcp = tcp.ok_or_else(|| format!("connecting to {}: {last}", t.authority))?;
        tcp.set_nodelay(true)
            .and_then(|()| tcp.set_read_timeout(Some(limit)))
            .and_then(|()| tcp.set_write_timeout(Some(limit)))
            .map_err(|e| format!("setting up the socket to {}: {e}", t.authority))?;
        let tls = self
            .tls
            .connect(t.host, Buffered::new(tcp))
            .map_err(|e| match e {
                HandshakeError::Failure(e) => format!("TLS with {}: {e}", t.authority),
                HandshakeError::WouldBlock(_) => {
                    format!("the TLS handshake with {} timed out", t.authority)
                }
            })?;
        self.opened.fetch_add(1, Ordering::Relaxed);
        Ok(Conn {
            tls,
            timeout: limit,
            request: Vec::with_capacity(2048),
            input: vec![0; 8192].into_boxed_slice(),
            parser: ResponseParser::new(),
        })
    }
}

/// The parts of a channel URI a request needs, borrowed from it.
struct Target<'a> {
    /// `host[:port]` as written: the pool key and the `Host` header.
    authority: &'a str,
    host: &'a str,
    port: u16,
    /// Path and query exactly as written (may be empty or start with `?`).
    path: &'a str,
}

impl<'a> Target<'a> {
    /// Splits an `https://` URI. [`ChannelUri`] checked it when it was registered; a URI
    /// read back from storage is checked again here, so nothing odd reaches the wire.
    fn parse(uri: &'a str) -> Result<Self, String> {
        let rest = match uri.get(..8) {
            Some(s) if s.eq_ignore_ascii_case("https://") => uri.get(8..).unwrap_or(""),
            _ => return Err("the channel URI is not https".into()),
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        let path = path.split('#').next().unwrap_or("");
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().ok().filter(|&p| p > 0)),
            None => (authority, Some(443)),
        };
        let ok = |s: &str| s.bytes().all(|b| b.is_ascii_graphic());
        match port {
            Some(port)
                if !host.is_empty() && !authority.contains('@') && ok(authority) && ok(path) =>
            {
                Ok(Self {
                    authority,
                    host,
                    port,
                    path,
                })
            }
            _ => Err("the channel URI is malformed".into()),
        }
    }
}

/// One notify request.
struct Request<'a> {
    target: &'a Target<'a>,
    payload: &'a [u8],
    bearer: &'a str,
}

impl Request<'_> {
    /// Request line, headers and body, into `out` (cleared first).
    fn format(&self, out: &mut Vec<u8>, extra_headers: &str) {
        out.clear();
        out.extend_from_slice(b"POST ");
        if !self.target.path.starts_with('/') {
            out.push(b'/');
        }
        for part in [
            self.target.path,
            " HTTP/1.1\r\nHost: ",
            self.target.authority,
            "\r\nUser-Agent: ",
            USER_AGENT,
            "\r\nX-WNS-Type: wns/raw\r\nAuthorization: ",
            self.bearer,
            "\r\nX-WNS-RequestForStatus: true\r\nContent-Type: application/octet-stream\r\n",
            extra_headers,
        ] {
            out.extend_from_slice(part.as_bytes());
        }
        // Writing to a Vec cannot fail.
        let _ = write!(out, "Content-Length: {}\r\n\r\n", self.payload.len());
        out.extend_from_slice(self.payload);
    }
}

/// The [`Answer`] for an exchange's result.
fn answer(result: Result<Response, Failed>) -> Answer {
    match result {
        Ok(r) => Answer::Http {
            status: r.status,
            diagnostics: r.diagnostics,
            body: body_text(&r.body),
        },
        Err(Failed::NoAnswer(e) | Failed::Other(e)) => Answer::Transport(e),
    }
}

/// A byte a header value may hold: visible ASCII, space and tab.
fn header_byte(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b)
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// The body as text for an [`Answer`]: the part that is UTF-8, cut to
/// [`BODY_TEXT_LIMIT`] characters.
fn body_text(body: &[u8]) -> String {
    let valid = match std::str::from_utf8(body) {
        Ok(s) => s,
        Err(e) => std::str::from_utf8(&body[..e.valid_up_to()]).unwrap_or(""),
    };
    valid.chars().take(BODY_TEXT_LIMIT).collect()
}

/// The socket under TLS, its reads buffered. OpenSSL reads a record's 5-byte header,
/// then its body: two `recvfrom` per answer on the bare socket. Here the first read
/// takes whatever has arrived (a whole WNS answer is one small record) and the second
/// is a copy. Writes go straight through: a request is one `write_all` already.
struct Buffered<S = TcpStream> {
    inner: S,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl<S> Buffered<S> {
    /// Room for a few answers; a larger read goes to the socket directly.
    const SIZE: usize = 4096;

    fn new(inner: S) -> Self {
        Self {
            inner,
            buf: vec![0; Self::SIZE].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }
}

impl<S: Read> Read for Buffered<S> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.start == self.end {
            if out.len() >= self.buf.len() {
                return self.inner.read(out);
            }
            self.end = self.inner.read(&mut self.buf)?;
            self.start = 0;
        }
        let n = out.len().min(self.end - self.start);
        out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        Ok(n)
    }
}

impl<S: Write> Write for Buffered<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A TLS connection with its buffers, kept across requests.
struct Conn {
    tls: TlsStream<Buffered>,
    /// The socket's read and write timeout as set now.
    timeout: Duration,
    /// The request being sent.
    request: Vec<u8>,
    /// What one read returns.
    input: Box<[u8]>,
    parser: ResponseParser,
}

impl Conn {
    /// Sets the socket timeouts to `t` unless they are already: two syscalls only for a
    /// request whose time left differs from the last one's.
    fn set_timeout(&mut self, t: Duration) -> io::Result<()> {
        if t != self.timeout {
            let tcp = &self.tls.get_ref().inner;
            tcp.set_read_timeout(Some(t))?;
            tcp.set_write_timeout(Some(t))?;
            self.timeout = t;
        }
        Ok(())
    }

    /// Reads one answer. Skips 1xx answers; past `deadline` it stops at the next read.
    fn read_response(&mut self, host: &str, deadline: Instant) -> Result<Response, Failed> {
        self.parser.reset();
        let mut got_bytes = false;
        loop {
            let n = match self.tls.read(&mut self.input) {
                Ok(0) => match self.parser.eof() {
                    Ok(()) => break,
                    Err(e) => return self.failed(host, got_bytes, e.0),
                },
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_timeout(&e) => {
                    return self.failed(host, true, format!("no answer from {host} in time"));
                }
                // A peer's FIN without close_notify is an SSL error in OpenSSL 3, not an
                // EOF, so any error before the first byte counts as "closed".
                Err(e) => return self.failed(host, got_bytes, format!("reading from {host}: {e}")),
            };
            got_bytes = true;
            match self.parser.feed(&self.input[..n]) {
                Ok(used) if self.parser.done() => {
                    let mut r = self
                        .parser
                        .take()
                        .ok_or_else(|| Failed::Other("no response".into()))?;
                    // Bytes after the answer were never asked for: do not reuse.
                    r.reusable &= used == n;
                    return Ok(r);
                }
                Ok(_) => {}
                Err(e) => return self.failed(host, true, e.0),
            }
            if Instant::now() >= deadline {
                return self.failed(
                    host,
                    true,
                    format!("no complete answer from {host} in time"),
                );
            }
        }
        self.parser
            .take()
            .ok_or_else(|| Failed::Other("no response".into()))
    }

    /// After a failure: the answer read so far if its head was complete (the status is
    /// what counts; ureq answered such a case with an empty body), else why it failed.
    fn failed(&mut self, host: &str, got_bytes: bool, why: String) -> Result<Response, Failed> {
        if let Some(mut r) = self.parser.take() {
            log::debug!("wns: the answer from {host} broke off after its head: {why}");
            r.reusable = false;
            return Ok(r);
        }
        Err(if got_bytes {
            Failed::Other(why)
        } else {
            Failed::NoAnswer(why)
        })
    }
}

#[cfg(test)]
#[path = "../../../tests/util/cert.rs"]
mod test_cert;

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    use super::*;
    use crate::types::ChannelHosts;

    /// What the test server does after it has answered.
    #[derive(Clone, Copy, Debug)]
    enum Then {
        KeepOpen,
        /// close_notify, then FIN.
        Shutdown,
        /// FIN without close_notify.
        Drop,
        /// A while later, the 408 some servers send as they close an idle connection.
        Late408,
    }

    #[derive(Clone)]
    struct Act {
        reply: Vec<u8>,
        delay: Duration,
        then: Then,
    }

    impl Act {
        fn ok() -> Self {
            Self::reply(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-WNS-NotificationStatus: received\r\n\r\n")
        }
        fn reply(bytes: &[u8]) -> Self {
            Self {
                reply: bytes.to_vec(),
                delay: Duration::ZERO,
                then: Then::KeepOpen,
            }
        }
        fn then(mut self, then: Then) -> Self {
            self.then = then;
            self
        }
        fn delay(mut self, d: Duration) -> Self {
            self.delay = d;
            self
        }
    }

    /// A request as the test server read it.
    #[derive(Debug, Clone)]
    struct Seen {
        conn: usize,
        head: String,
        body: Vec<u8>,
        /// TLS records the client sent since the previous request on this connection.
        records: usize,
    }

    /// Records what the client sends at the TCP level, to count its TLS records.
    struct Tap {
        tcp: TcpStream,
        log: Vec<u8>,
    }

    impl Read for Tap {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.tcp.read(buf)?;
            self.log.extend_from_slice(&buf[..n]);
            Ok(n)
        }
    }

    impl Write for Tap {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.tcp.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            self.tcp.flush()
        }
    }

    /// A reader that gives at most `chunk` bytes per call and counts the calls.
    struct Counted<'a> {
        data: &'a [u8],
        chunk: usize,
        reads: usize,
    }

    impl Read for Counted<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.reads += 1;
            let n = buf.len().min(self.chunk).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    /// OpenSSL's read pattern (a 5-byte record header, then the record) costs one read
    /// of the socket per answer, and whatever the read sizes, the bytes come through
    /// whole and in order, ending in EOF.
    #[test]
    fn buffered_reads_take_a_record_in_one_read_and_keep_every_byte() {
        let data: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut b = Buffered::new(Counted {
            data: &data,
            chunk: 300,
            reads: 0,
        });
        let (mut header, mut body) = ([0u8; 5], [0u8; 280]);
        b.read_exact(&mut header).unwrap();
        b.read_exact(&mut body).unwrap();
        assert_eq!(b.inner.reads, 1, "one read for a 285-byte record");
        assert_eq!([&header[..], &body[..]].concat(), data[..285]);
        for sizes in [&[1usize, 5, 280, 4096, 9000][..], &[3], &[5000, 2]] {
            let mut b = Buffered::new(Counted {
                data: &data,
                chunk: 1000,
                reads: 0,
            });
            let mut got = Vec::new();
            for &size in sizes.iter().cycle() {
                let mut buf = vec![0; size];
                match b.read(&mut buf).unwrap() {
                    0 => break,
                    n => got.extend_from_slice(&buf[..n]),
                }
            }
            assert_eq!(got, data, "read sizes {sizes:?}");
        }
    }

    /// Complete TLS records in `bytes` (5-byte header: type, version, length).
    fn records(bytes: &[u8]) -> usize {
        let (mut at, mut n) = (0, 0);
        while let Some(h) = bytes.get(at..at + 5) {
            at += 5 + usize::from(u16::from_be_bytes([h[3], h[4]]));
            if at > bytes.len() {
                break;
            }
            n += 1;
        }
        n
    }

    type Script = dyn Fn(usize, usize) -> Act + Send + Sync;

    /// A TLS server on 127.0.0.1 that answers each request as `script(connection,
    /// request on it)` says, both counted from 0.
    struct Server {
        port: u16,
        cert_pem: Vec<u8>,
        seen: Arc<Mutex<Vec<Seen>>>,
        connections: Arc<AtomicUsize>,
        stop: Arc<AtomicBool>,
    }

    impl Server {
        fn start(script: impl Fn(usize, usize) -> Act + Send + Sync + 'static) -> Self {
            let cert = test_cert::TestCert::new();
            let id = native_tls::Identity::from_pkcs8(&cert.cert_pem, &cert.key_pem).unwrap();
            let acceptor = Arc::new(native_tls::TlsAcceptor::new(id).unwrap());
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let server = Self {
                port: listener.local_addr().unwrap().port(),
                cert_pem: cert.cert_pem,
                seen: Arc::default(),
                connections: Arc::default(),
                stop: Arc::default(),
            };
            let script: Arc<Script> = Arc::new(script);
            let (seen, connections, stop) = (
                server.seen.clone(),
                server.connections.clone(),
                server.stop.clone(),
            );
            std::thread::spawn(move || {
                for tcp in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(tcp) = tcp else { continue };
                    let conn = connections.fetch_add(1, Ordering::SeqCst);
                    let (acceptor, seen, script) = (acceptor.clone(), seen.clone(), script.clone());
                    std::thread::spawn(move || {
                        let tap = Tap {
                            tcp,
                            log: Vec::new(),
                        };
                        if let Ok(tls) = acceptor.accept(tap) {
                            let _ = serve(BufReader::new(tls), conn, &seen, &*script);
                        }
                    });
                }
            });
            server
        }

        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }

        fn connections(&self) -> usize {
            self.connections.load(Ordering::SeqCst)
        }

        fn uri(&self, host: &str) -> ChannelUri {
            let hosts = ChannelHosts::new(vec!["localhost".into(), "127.0.0.1".into()]);
            let uri = format!("https://{host}:{}/ch/a?token=AwYAAAB%2bx%2fy%3d", self.port);
            ChannelUri::parse(&uri, &hosts).unwrap()
        }

        fn client(&self, timeout: Duration, limits: PoolLimits) -> Https {
            let mut tls = TlsConnector::builder();
            tls.add_root_certificate(native_tls::Certificate::from_pem(&self.cert_pem).unwrap());
            let resolver = Arc::new(CachingResolver::new(Duration::from_secs(30)));
            let extra = "X-WNS-TTL: 60\r\n".to_owned();
            Https::new(tls.build().unwrap(), resolver, timeout, extra, limits)
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            let _ = TcpStream::connect(("127.0.0.1", self.port));
        }
    }

    fn serve(
        mut r: BufReader<TlsStream<Tap>>,
        conn: usize,
        seen: &Mutex<Vec<Seen>>,
        script: &Script,
    ) -> io::Result<()> {
        let mut before = 0;
        for n in 0.. {
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if r.read_line(&mut line)? == 0 {
                    return Ok(());
                }
                head.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; len];
            r.read_exact(&mut body)?;
            let total = records(&r.get_ref().get_ref().log);
            seen.lock().unwrap().push(Seen {
                conn,
                head,
                body,
                records: total - before,
            });
            before = total;
            let act = script(conn, n);
            std::thread::sleep(act.delay);
            let tls = r.get_mut();
            tls.write_all(&act.reply)?;
            match act.then {
                Then::KeepOpen => {}
                Then::Shutdown => return tls.shutdown(),
                Then::Drop => return Ok(()),
                Then::Late408 => {
                    std::thread::sleep(Duration::from_millis(50));
                    return tls.write_all(
                        b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                    );
                }
            }
        }
        Ok(())
    }

    const LIMITS: PoolLimits = PoolLimits {
        per_host: 6,
        total: 12,
    };
    const LONG: Duration = Duration::from_secs(5);

    fn status(a: &Answer) -> Option<u16> {
        match a {
            Answer::Http { status, .. } => Some(*status),
            Answer::Transport(_) => None,
        }
    }

    #[test]
    fn one_record_per_request_and_one_connection_for_many() {
        let server = Server::start(|_, _| Act::ok());
        let c = server.client(LONG, LIMITS);
        let uri = server.uri("localhost");
        let long_bearer = format!("Bearer {}", "t".repeat(1500));
        let big = vec![b'p'; 5000];
        for i in 0..6 {
            let (payload, bearer) = match i {
                5 => (big.clone(), long_bearer.as_str()),
                _ => (format!("payload {i}").into_bytes(), "Bearer tok"),
            };
            let a = c.post(&uri, &payload, bearer, LONG);
            let Answer::Http {
                status,
                diagnostics,
                ..
            } = a
            else {
                panic!("{a:?}")
            };
            assert_eq!(status, 200);
            assert_eq!(diagnostics.notification_status.as_deref(), Some("received"));
        }
        let seen = server.seen();
        assert_eq!(seen.len(), 6);
        assert_eq!((server.connections(), c.opened(), c.idle()), (1, 1, 1));
        assert!(seen.iter().all(|s| s.conn == 0));
        for s in &seen[1..] {
            assert_eq!(s.records, 1, "head and body in one TLS record: {}", s.head);
        }
        assert_eq!(seen[5].body, big);
        let head = &seen[0].head;
        assert!(
            head.starts_with("POST /ch/a?token=AwYAAAB%2bx%2fy%3d HTTP/1.1\r\n"),
            "the target passes unchanged: {head}"
        );
        for line in [
            format!("Host: localhost:{}", server.port),
            "X-WNS-Type: wns/raw".into(),
            "Authorization: Bearer tok".into(),
            "X-WNS-RequestForStatus: true".into(),
            "Content-Type: application/octet-stream".into(),
            "Content-Length: 9".into(),
            "X-WNS-TTL: 60".into(),
            concat!("User-Agent: uwpx-push-server/", env!("CARGO_PKG_VERSION")).into(),
        ] {
            assert!(
                head.contains(&format!("\r\n{line}\r\n")),
                "{line} in {head}"
            );
        }
        assert_eq!(seen[0].body, b"payload 0");
    }

    #[test]
    fn a_kept_alive_connection_the_server_closed_is_replaced_once() {
        for then in [Then::Shutdown, Then::Drop, Then::Late408] {
            let server = Server::start(move |_, n| match n {
                0 => Act::ok().then(then),
                _ => Act::ok(),
            });
            let c = server.client(LONG, LIMITS);
            let uri = server.uri("localhost");
            assert_eq!(status(&c.post(&uri, b"1", "Bearer t", LONG)), Some(200));
            std::thread::sleep(Duration::from_millis(100));
            let a = c.post(&uri, b"2", "Bearer t", LONG);
            assert_eq!(status(&a), Some(200), "{then:?}: {a:?}");
            assert_eq!((server.connections(), c.opened()), (2, 2), "{then:?}");
            assert_eq!(server.seen().len(), 2, "{then:?}");
        }
    }

    #[test]
    fn nothing_is_sent_again_once_answer_bytes_came_or_on_a_new_connection() {
        let server = Server::start(|conn, n| match (conn, n) {
            (0, 0) => Act::ok(),
            (0, _) => Act::reply(b"HTTP/1.1 200 OK\r\nContent-Le").then(Then::Drop),
            _ => Act::reply(b"").then(Then::Drop),
        });
        let c = server.client(LONG, LIMITS);
        let uri = server.uri("localhost");
        assert_eq!(status(&c.post(&uri, b"1", "Bearer t", LONG)), Some(200));
        let a = c.post(&uri, b"2", "Bearer t", LONG);
        assert!(
            matches!(&a, Answer::Transport(e) if e.contains("inside the response head")),
            "{a:?}"
        );
        assert_eq!(server.connections(), 1, "not sent again");
        let a = c.post(&uri, b"3", "Bearer t", LONG);
        assert!(matches!(&a, Answer::Transport(_)), "{a:?}");
        assert_eq!(
            server.connections(),
            2,
            "a new connection that fails is not retried"
        );
        assert_eq!(server.seen().len(), 3);
    }

    #[test]
    fn a_connection_close_answer_is_not_pooled() {
        let server = Server::start(|_, _| {
            Act::reply(b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        });
        let c = server.client(LONG, LIMITS);
        let uri = server.uri("localhost");
        for _ in 0..2 {
            assert_eq!(status(&c.post(&uri, b"x", "Bearer t", LONG)), Some(404));
            assert_eq!(c.idle(), 0);
        }
        assert_eq!((server.connections(), c.opened()), (2, 2));
    }

    #[test]
    fn preconnected_connections_carry_the_next_posts() {
        let server = Server::start(|_, _| Act::ok());
        let c = server.client(LONG, LIMITS);
        let uri = server.uri("localhost");
        assert_eq!(c.preconnect(&uri, 1), 1);
        assert_eq!((c.idle(), server.connections()), (1, 1));
        for _ in 0..3 {
            assert_eq!(status(&c.post(&uri, b"x", "Bearer t", LONG)), Some(200));
        }
        assert_eq!((server.connections(), c.opened(), c.idle()), (1, 1, 1));
        assert_eq!(
            c.preconnect(&uri, 100),
            LIMITS.per_host - 1,
            "up to the per-host cap"
        );
        assert_eq!(c.idle(), LIMITS.per_host);
    }

    #[test]
    fn idle_connections_are_capped_per_host_and_in_total() {
        let server = Server::start(|_, _| Act::ok());
        let limits = PoolLimits {
            per_host: 2,
            total: 3,
        };
        let c = server.client(LONG, limits);
        let (by_name, by_ip) = (server.uri("localhost"), server.uri("127.0.0.1"));
        assert_eq!(c.preconnect(&by_name, 5), 2);
        assert_eq!(c.preconnect(&by_ip, 5), 2);
        assert_eq!((c.idle(), c.opened()), (3, 4), "the oldest went");
        assert_eq!(status(&c.post(&by_name, b"x", "Bearer t", LONG)), Some(200));
        assert_eq!((c.idle(), c.opened()), (3, 4), "the surviving one was used");
        let s = server.seen();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].conn, 1, "the newer of localhost's two");
    }

    #[test]
    fn a_connection_idle_too_long_is_closed_unused() {
        let server = Server::start(|_, _| Act::ok());
        let mut c = server.client(LONG, LIMITS);
        c.pool.idle_limit = Duration::from_millis(50);
        let uri = server.uri("localhost");
        assert_eq!(status(&c.post(&uri, b"1", "Bearer t", LONG)), Some(200));
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(status(&c.post(&uri, b"2", "Bearer t", LONG)), Some(200));
        let conns: Vec<usize> = server.seen().iter().map(|s| s.conn).collect();
        assert_eq!(conns, [0, 1]);
        assert_eq!((c.opened(), c.idle()), (2, 1));
    }

    #[test]
    fn a_short_request_timeout_is_a_cap_and_is_lifted_again() {
        let server = Server::start(|_, n| match n {
            0 => Act::ok(),
            _ => Act::ok().delay(Duration::from_millis(300)),
        });
        let c = server.client(LONG, LIMITS);
        let uri = server.uri("localhost");
        let short = Duration::from_millis(100);
        assert_eq!(status(&c.post(&uri, b"1", "Bearer t", short)), Some(200));
        let a = c.post(&uri, b"2", "Bearer t", LONG);
        assert_eq!(
            status(&a),
            Some(200),
            "the lowered timeout was restored: {a:?}"
        );
        let t = Instant::now();
        let a = c.post(&uri, b"3", "Bearer t", short);
        assert!(
            matches!(&a, Answer::Transport(e) if e.contains("in time")),
            "{a:?}"
        );
        assert!(
            t.elapsed() < Duration::from_millis(280),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(
            (c.opened(), c.idle()),
            (1, 0),
            "a timed-out connection is dropped"
        );
    }

    #[test]
    fn refused_inputs_never_reach_the_wire() {
        let server = Server::start(|_, _| Act::ok());
        let c = server.client(LONG, LIMITS);
        let a = c.post(
            &server.uri("localhost"),
            b"x",
            "Bearer a\r\nX-Evil: 1",
            LONG,
        );
        assert!(
            matches!(&a, Answer::Transport(e) if e.contains("access token")),
            "{a:?}"
        );
        let stored = ChannelUri::from_stored(format!("https://localhost:{}/a b", server.port));
        let a = c.post(&stored, b"x", "Bearer t", LONG);
        assert!(
            matches!(&a, Answer::Transport(e) if e.contains("malformed")),
            "{a:?}"
        );
        assert_eq!(server.connections(), 0);
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let hosts = ChannelHosts::new(vec!["localhost".into()]);
        let closed = ChannelUri::parse(&format!("https://localhost:{port}/"), &hosts).unwrap();
        let a = c.post(&closed, b"x", "Bearer t", LONG);
        assert!(
            matches!(&a, Answer::Transport(e) if e.contains("connecting to")),
            "{a:?}"
        );
    }
}
