//! The HTTP/1.x response parser of the WNS notify client ([`super`]): bytes in as
//! they arrive, a status, the WNS diagnostic headers and the first bytes of the body out.
//!
//! It is a push parser so the client can feed it whatever each TLS read returns and so
//! the fuzzer can feed it any split of any bytes (`fuzz/fuzz_targets/wns_response.rs`).
//! Nothing it is fed can make it panic or grow without bound: the head is capped at
//! [`HEAD_LIMIT`] and [`MAX_HEADERS`], the body kept at [`BODY_LIMIT`], a chunk-size line
//! and the trailers are capped too.
//!
//! Framing, after RFC 9112 §6.3 as a client needs it: 1xx interim answers are skipped;
//! 204 and 304 have no body; `Transfer-Encoding` ending in `chunked` wins over
//! `Content-Length`; otherwise `Content-Length`; otherwise the body runs to EOF. Only a
//! response that ended where its framing said, on a connection the server keeps open,
//! lets the connection carry another request ([`Response::reusable`]).
//!
//! Threads: any (one parser per connection, no shared state).

/// The diagnostic headers WNS sends; logged on failure (Microsoft support needs them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics {
    /// `X-WNS-Msg-ID`.
    pub msg_id: Option<String>,
    /// `X-WNS-Debug-Trace`.
    pub debug_trace: Option<String>,
    /// `X-WNS-Error-Description`.
    pub error_description: Option<String>,
    /// `MS-CV`.
    pub ms_cv: Option<String>,
    /// `X-WNS-NotificationStatus`, or `X-WNS-Status` where that is what came.
    pub notification_status: Option<String>,
    /// `X-WNS-DeviceConnectionStatus`.
    pub device_status: Option<String>,
    /// `Retry-After` in seconds.
    pub retry_after: Option<u64>,
}

impl std::fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let items = [
            ("msg-id", &self.msg_id),
            ("debug-trace", &self.debug_trace),
            ("error", &self.error_description),
            ("ms-cv", &self.ms_cv),
            ("notification-status", &self.notification_status),
            ("device-status", &self.device_status),
        ];
        let mut first = true;
        for (name, value) in items {
            if let Some(v) = value {
                write!(f, "{}{name}={v:?}", if first { "" } else { " " })?;
                first = false;
            }
        }
        Ok(())
    }
}

/// The raw answer to a POST: the HTTP status and headers, or a transport failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// An HTTP response.
    Http {
        /// Status code.
        status: u16,
        /// Headers that matter.
        diagnostics: Diagnostics,
        /// The first bytes of the body, for "Domain Blocked" and logs.
        body: String,
    },
    /// No HTTP response: connect, TLS, timeout, reset.
    Transport(String),
}

/// Longest response head (status line and headers).
pub const HEAD_LIMIT: usize = 16 * 1024;
/// Most headers in a head.
pub const MAX_HEADERS: usize = 100;
/// Most body bytes kept: WNS bodies are tiny, a larger one is cut (and its connection
/// dropped) rather than read into memory.
pub const BODY_LIMIT: usize = 16 * 1024;
/// Longest chunk-size line, extensions included.
const CHUNK_LINE_LIMIT: usize = 1024;
/// Most 1xx answers skipped before the final one.
const MAX_INTERIM: u32 = 8;
/// Longest diagnostic header value kept (characters).
const VALUE_LIMIT: usize = 256;

/// Why a response could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn bad<T>(why: impl Into<String>) -> Result<T, Malformed> {
    Err(Malformed(why.into()))
}

/// A response as far as it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The final status (never 1xx).
    pub status: u16,
    /// The WNS headers.
    pub diagnostics: Diagnostics,
    /// The body, at most [`BODY_LIMIT`] bytes.
    pub body: Vec<u8>,
    /// The body is complete, its end was known from the framing, nothing was cut and the
    /// server keeps the connection open.
    pub reusable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    /// `Content-Length` bytes still to come.
    Length(u64),
    ChunkSize,
    /// Bytes of the current chunk still to come.
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    Trailers,
    UntilEof,
    Done,
}

/// The push parser. [`reset`](Self::reset) it before each response; its buffers keep
/// their capacity, so a kept-alive connection parses without allocating for them.
#[derive(Debug)]
pub struct ResponseParser {
    state: State,
    /// Head bytes so far; later the current chunk-size or trailer line.
    buf: Vec<u8>,
    trailer_bytes: usize,
    interim: u32,
    status: u16,
    diagnostics: Diagnostics,
    keep_alive: bool,
    body: Vec<u8>,
    cut: bool,
}

impl Default for ResponseParser {
    fn default() -> Self {
        Self::new()
    }
}

impl ResponseParser {
    /// A parser waiting for a status line.
    pub fn new() -> Self {
        Self {
            state: State::Head,
            buf: Vec::new(),
            trailer_bytes: 0,
            interim: 0,
            status: 0,
            diagnostics: Diagnostics::default(),
            keep_alive: false,
            body: Vec::new(),
            cut: false,
        }
    }

    /// Ready for the next response.
    pub fn reset(&mut self) {
        self.state = State::Head;
        self.buf.clear();
        self.trailer_bytes = 0;
        self.interim = 0;
        self.status = 0;
        self.diagnostics = Diagnostics::default();
        self.keep_alive = false;
        self.body = Vec::new();
        self.cut = false;
    }

    /// The final response's head has been read.
    pub fn head_done(&self) -> bool {
        self.state != State::Head
    }

    /// The response is complete (or cut at [`BODY_LIMIT`]): read no more.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Takes in bytes that arrived; returns how many belong to this response (all of
    /// them unless it ended inside `input`). After an error the parser is unusable.
    pub fn feed(&mut self, input: &[u8]) -> Result<usize, Malformed> {
        let mut used = 0;
        while used < input.len() && self.state != State::Done {
            let rest = &input[used..];
            used += match self.state {
                State::Head => self.head(rest)?,
                State::Length(left) => {
                    let n = self.body_bytes(rest, left);
                    self.state = match left - n as u64 {
                        0 => State::Done,
                        left if !self.cut => State::Length(left),
                        _ => State::Done,
                    };
                    n
                }
                State::ChunkSize => self.chunk_size(rest)?,
                State::ChunkData(left) => {
                    let n = self.body_bytes(rest, left);
                    self.state = match left - n as u64 {
                        _ if self.cut => State::Done,
                        0 => State::ChunkEnd,
                        left => State::ChunkData(left),
                    };
                    n
                }
                State::ChunkEnd => self.chunk_end(rest)?,
                State::Trailers => self.trailers(rest)?,
                State::UntilEof => {
                    let n = self.body_bytes(rest, u64::MAX);
                    if self.cut {
                        self.state = State::Done;
                    }
                    n
                }
                State::Done => 0,
            };
        }
        Ok(used)
    }

    /// The server closed the connection: fine for a body that runs to EOF, an error
    /// anywhere else before the end.
    pub fn eof(&mut self) -> Result<(), Malformed> {
        match self.state {
            State::Done => Ok(()),
            State::UntilEof => {
                self.state = State::Done;
                Ok(())
            }
            State::Head if self.buf.is_empty() && self.interim == 0 => {
                bad("the connection closed before any response")
            }
            State::Head => bad("the connection closed inside the response head"),
            State::Length(left) => bad(format!(
                "the connection closed with {left} body bytes still to come"
            )),
            _ => bad("the connection closed inside the chunked body"),
        }
    }

    /// The response read so far, once its head is complete. `reusable` is only ever
    /// true for a response that is [`done`](Self::done).
    pub fn take(&mut self) -> Option<Response> {
        if !self.head_done() {
            return None;
        }
        Some(Response {
            status: self.status,
            diagnostics: std::mem::take(&mut self.diagnostics),
            body: std::mem::take(&mut self.body),
            reusable: self.done() && self.keep_alive && !self.cut,
        })
    }

    /// Keeps up to `left` bytes of `input` as body (past [`BODY_LIMIT`] it sets `cut`
    /// and stops); returns how many it consumed.
    fn body_bytes(&mut self, input: &[u8], left: u64) -> usize {
        let n = input.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let room = BODY_LIMIT - self.body.len();
        if n > room {
            self.body.extend_from_slice(&input[..room]);
            self.cut = true;
            return room;
        }
        self.body.extend_from_slice(&input[..n]);
        n
    }

    /// Collects the head until its empty line, then parses it.
    fn head(&mut self, input: &[u8]) -> Result<usize, Malformed> {
        let old = self.buf.len();
        let room = HEAD_LIMIT - old;
        self.buf.extend_from_slice(&input[..input.len().min(room)]);
        // The empty line ends in "\n\n" or "\n\r\n"; it may straddle two inputs.
        let from = old.saturating_sub(2);
        let end = self.buf[from..]
            .windows(2)
            .position(|w| w == b"\n\n")
            .map(|i| from + i + 2);
        let end_crlf = self.buf[from..]
            .windows(3)
            .position(|w| w == b"\n\r\n")
            .map(|i| from + i + 3);
        let Some(end) = [end, end_crlf].into_iter().flatten().min() else {
            if self.buf.len() >= HEAD_LIMIT {
                return bad(format!("the response head is over {HEAD_LIMIT} bytes"));
            }
            return Ok(input.len());
        };
        self.buf.truncate(end);
        self.parse_head()?;
        self.buf.clear();
        Ok(end - old)
    }

    /// Reads the status and the headers that matter, and picks the body's framing.
    fn parse_head(&mut self) -> Result<(), Malformed> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&self.buf) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => return bad("the response head is incomplete"),
            Err(httparse::Error::TooManyHeaders) => {
                return bad(format!("the response has over {MAX_HEADERS} headers"));
            }
            Err(e) => return bad(format!("malformed response head ({e})")),
        }
        let status = resp.code.unwrap_or(0);
        match status {
            101 => return bad("101 Switching Protocols, which was not asked for"),
            100..=199 => {
                self.interim += 1;
                if self.interim > MAX_INTERIM {
                    return bad(format!("over {MAX_INTERIM} interim (1xx) responses"));
                }
                return Ok(()); // stays in State::Head for the final response
            }
            200..=999 => {}
            _ => return bad(format!("status {status} is out of range")),
        }
        let headers = &*resp.headers;
        let (framing, definite) = framing(status, headers)?;
        let close = has_token(headers, "connection", "close");
        self.keep_alive = definite
            && !close
            && (resp.version == Some(1) || has_token(headers, "connection", "keep-alive"));
        self.status = status;
        self.diagnostics = diagnostics(headers);
        self.state = framing;
        Ok(())
    }

    /// One chunk-size line: hex size, optional extensions (ignored), CRLF.
    fn chunk_size(&mut self, input: &[u8]) -> Result<usize, Malformed> {
        let Some(n) = self.line(input, CHUNK_LINE_LIMIT, "a chunk-size line")? else {
            return Ok(input.len());
        };
        let line = trim_cr(&self.buf);
        let digits = line.split(|&b| b == b';').next().unwrap_or(b"");
        let digits = digits.trim_ascii();
        if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
            return bad("malformed chunk size");
        }
        let size = digits.iter().fold(0u64, |acc, &d| {
            acc * 16 + u64::from(char::from(d).to_digit(16).unwrap_or(0))
        });
        self.buf.clear();
        self.state = if size == 0 {
            State::Trailers
        } else {
            State::ChunkData(size)
        };
        Ok(n)
    }

    /// The CRLF (or bare LF) after a chunk's data.
    fn chunk_end(&mut self, input: &[u8]) -> Result<usize, Malformed> {
        for (i, &b) in input.iter().enumerate() {
            match (self.buf.is_empty(), b) {
                (true, b'\r') => self.buf.push(b),
                (_, b'\n') => {
                    self.buf.clear();
                    self.state = State::ChunkSize;
                    return Ok(i + 1);
                }
                _ => return bad("chunk data is longer than its size"),
            }
        }
        Ok(input.len())
    }

    /// Trailer lines after the last chunk, up to an empty line; their content is ignored.
    fn trailers(&mut self, input: &[u8]) -> Result<usize, Malformed> {
        let room = HEAD_LIMIT.saturating_sub(self.trailer_bytes).max(2);
        let Some(n) = self.line(input, room, "the trailers")? else {
            return Ok(input.len());
        };
        self.trailer_bytes += self.buf.len();
        if trim_cr(&self.buf).is_empty() {
            self.state = State::Done;
        }
        self.buf.clear();
        Ok(n)
    }

    /// Adds `input` to the line in `buf` up to its LF. `Some(used)` once the line is
    /// complete (LF included in `buf`), `None` if it goes on in the next input.
    fn line(&mut self, input: &[u8], limit: usize, what: &str) -> Result<Option<usize>, Malformed> {
        let (take, complete) = match input.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (input.len(), false),
        };
        if self.buf.len() + take > limit {
            return bad(format!("{what} is over {limit} bytes"));
        }
        self.buf.extend_from_slice(&input[..take]);
        Ok(complete.then_some(take))
    }
}

/// The body's framing for a final response, and whether its end is known without EOF.
fn framing(status: u16, headers: &[httparse::Header<'_>]) -> Result<(State, bool), Malformed> {
    if status == 204 || status == 304 {
        return Ok((State::Done, true));
    }
    let mut te = false;
    let mut chunked = false;
    let mut length: Option<u64> = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te = true;
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or(b"");
            chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
        } else if h.name.eq_ignore_ascii_case("content-length") {
            for v in h.value.split(|&b| b == b',') {
                let v = v.trim_ascii();
                let n = (!v.is_empty() && v.len() <= 18 && v.iter().all(u8::is_ascii_digit))
                    .then(|| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
                    .flatten();
                match (n, length) {
                    (None, _) => return bad("malformed Content-Length"),
                    (Some(n), Some(l)) if n != l => return bad("conflicting Content-Length"),
                    (Some(n), _) => length = Some(n),
                }
            }
        }
    }
    Ok(match (te, chunked, length) {
        // Both framings at once is a smuggling pattern: read it, then close.
        (true, true, l) => (State::ChunkSize, l.is_none()),
        (true, false, _) => (State::UntilEof, false),
        (false, _, Some(0)) => (State::Done, true),
        (false, _, Some(n)) => (State::Length(n), true),
        (false, _, None) => (State::UntilEof, false),
    })
}

/// `name`'s comma-separated values include `token` (case-insensitive).
fn has_token(headers: &[httparse::Header<'_>], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .any(|v| v.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// The WNS headers (the first of each), as ureq gave them: visible ASCII only, cut at
/// [`VALUE_LIMIT`] characters.
fn diagnostics(headers: &[httparse::Header<'_>]) -> Diagnostics {
    let get = |name: &str| {
        let h = headers.iter().find(|h| h.name.eq_ignore_ascii_case(name))?;
        let visible = h
            .value
            .iter()
            .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b));
        let v = std::str::from_utf8(h.value).ok().filter(|_| visible)?;
        Some(v.trim().chars().take(VALUE_LIMIT).collect::<String>())
    };
    Diagnostics {
        msg_id: get("X-WNS-Msg-ID"),
        debug_trace: get("X-WNS-Debug-Trace"),
        error_description: get("X-WNS-Error-Description"),
        ms_cv: get("MS-CV"),
        notification_status: get("X-WNS-NotificationStatus").or_else(|| get("X-WNS-Status")),
        device_status: get("X-WNS-DeviceConnectionStatus"),
        retry_after: get("Retry-After").and_then(|v| v.trim().parse().ok()),
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Parses `bytes` as one complete exchange, delivered `chunk` bytes per read and then
/// EOF: the fuzz target's and the tests' entry point. Returns the response read so far
/// (once its head was complete) and whether reading it ended well.
pub fn parse_all(bytes: &[u8], chunk: usize) -> (Option<Response>, Result<(), Malformed>) {
    let mut p = ResponseParser::new();
    let mut rest = bytes;
    while !p.done() {
        if rest.is_empty() {
            if let Err(e) = p.eof() {
                return (p.take(), Err(e));
            }
            break;
        }
        let n = rest.len().min(chunk.max(1));
        match p.feed(&rest[..n]) {
            Ok(used) => rest = &rest[used..],
            Err(e) => return (p.take(), Err(e)),
        }
    }
    let mut r = p.take();
    // Bytes after the response are not ours to read: the connection is not reused.
    if let Some(r) = &mut r {
        r.reusable &= rest.is_empty();
    }
    match r {
        Some(r) => (Some(r), Ok(())),
        None => (None, Err(Malformed("no response".into()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `bytes` whole, then in every split from 1 to 16 bytes per read, and
    /// checks that the split makes no difference.
    fn parse(bytes: &[u8]) -> (Option<Response>, Result<(), Malformed>) {
        let whole = parse_all(bytes, usize::MAX);
        for chunk in 1..=16 {
            assert_eq!(
                parse_all(bytes, chunk),
                whole,
                "split into {chunk}-byte reads"
            );
        }
        whole
    }

    fn ok(bytes: &[u8]) -> Response {
        match parse(bytes) {
            (Some(r), Ok(())) => r,
            other => panic!("{other:?} for {:?}", String::from_utf8_lossy(bytes)),
        }
    }

    fn malformed(bytes: &[u8]) -> (String, Option<Response>) {
        match parse(bytes) {
            (r, Err(e)) => (e.0, r),
            (r, Ok(())) => panic!("accepted: {r:?}"),
        }
    }

    #[test]
    fn statuses_and_wns_headers() {
        let r = ok(
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nx-wns-notificationstatus: received\r\n\
            X-WNS-DeviceConnectionStatus: connected\r\nX-WNS-Msg-ID: 1A2B\r\nMS-CV: abc.1\r\n\
            X-WNS-Msg-ID: second\r\n\r\n",
        );
        assert_eq!(r.status, 200);
        assert!(r.reusable);
        assert_eq!(
            r.diagnostics.notification_status.as_deref(),
            Some("received")
        );
        assert_eq!(r.diagnostics.device_status.as_deref(), Some("connected"));
        assert_eq!(
            r.diagnostics.msg_id.as_deref(),
            Some("1A2B"),
            "the first one"
        );
        assert_eq!(r.diagnostics.ms_cv.as_deref(), Some("abc.1"));
        let r = ok(
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nX-WNS-Status: dropped\r\n\
            Content-Length: 0\r\n\r\n",
        );
        assert_eq!((r.status, r.diagnostics.retry_after), (503, Some(7)));
        assert_eq!(
            r.diagnostics.notification_status.as_deref(),
            Some("dropped")
        );
        let r = ok(b"HTTP/1.1 410\r\nX-WNS-Error-Description: Domain Blocked\r\nContent-Length: 4\r\n\r\ngone");
        assert_eq!((r.status, r.body.as_slice()), (410, &b"gone"[..]));
        assert_eq!(
            r.diagnostics.error_description.as_deref(),
            Some("Domain Blocked")
        );
        let r =
            ok(b"HTTP/1.1 302 Found\r\nLocation: https://elsewhere/\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(r.status, 302, "a redirect is just a status");
        let r = ok(b"HTTP/1.1 204 No Content\r\n\r\n");
        assert!(r.reusable && r.body.is_empty(), "204 has no body");
        // Not visible ASCII: dropped, as ureq's to_str() did; long values are cut.
        let long = "x".repeat(300);
        let raw = format!(
            "HTTP/1.1 200 OK\r\nX-WNS-Msg-ID: caf\u{e9}\r\nMS-CV: {long}\r\nContent-Length: 0\r\n\r\n"
        );
        let r = ok(raw.as_bytes());
        assert_eq!(r.diagnostics.msg_id, None);
        assert_eq!(r.diagnostics.ms_cv.map(|v| v.len()), Some(256));
        let r =
            ok(b"HTTP/1.1 406 Not Acceptable\r\nRetry-After: soon\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(r.diagnostics.retry_after, None);
    }

    #[test]
    fn content_length_bodies_and_what_may_follow() {
        let r = ok(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 5\r\n\r\nhello");
        assert_eq!((r.body.as_slice(), r.reusable), (&b"hello"[..], true));
        let r = ok(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello");
        assert_eq!(r.body, b"hello");
        let r = ok(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n");
        assert_eq!(r.body, b"ok");
        assert!(
            !r.reusable,
            "bytes after the answer: the connection is not reused"
        );
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1e3\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
        ] {
            let (e, head) = malformed(bad);
            assert!(e.contains("Content-Length"), "{e}");
            assert!(head.is_none());
        }
        // The head came; the body broke off: the status still counts.
        let (e, r) = malformed(b"HTTP/1.1 410 Gone\r\nContent-Length: 10\r\n\r\ngon");
        assert!(e.contains("7 body bytes"), "{e}");
        let r = r.unwrap();
        assert_eq!(
            (r.status, r.body.as_slice(), r.reusable),
            (410, &b"gon"[..], false)
        );
    }

    #[test]
    fn chunked_bodies_with_extensions_and_trailers() {
        let r = ok(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
            5;name=value\r\nhello\r\n6 ; x\r\n world\r\nA\r\n, chunked!\r\n0;last\r\n\
            X-Trailer: 1\r\nY-Trailer: 2\r\n\r\n");
        assert_eq!(r.body, b"hello world, chunked!");
        assert!(r.reusable);
        let r = ok(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, Chunked\r\n\r\n0\r\n\r\n");
        assert!(r.body.is_empty() && r.reusable);
        let r = ok(b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n2\nok\n0\n\n");
        assert_eq!(r.body, b"ok", "bare LF line ends");
        // Both framings: chunked wins, and the connection is closed after it.
        let r = ok(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n");
        assert_eq!((r.body.as_slice(), r.reusable), (&b"ok"[..], false));
        for (bad, why) in [
            (&b"2\r\nokX\r\n0\r\n\r\n"[..], "longer than its size"),
            (b"zz\r\nok\r\n0\r\n\r\n", "chunk size"),
            (b"\r\nok\r\n0\r\n\r\n", "chunk size"),
            (b"10000000000000000\r\n", "chunk size"),
            (b"2\r\nok\r\n", "inside the chunked body"),
            (b"2\r\nok\r\n0\r\nTrailer: x\r\n", "inside the chunked body"),
        ] {
            let mut raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            raw.extend_from_slice(bad);
            let (e, head) = malformed(&raw);
            assert!(
                e.contains(why),
                "{e} for {:?}",
                String::from_utf8_lossy(bad)
            );
            assert_eq!(head.map(|r| (r.status, r.reusable)), Some((200, false)));
        }
        let mut long_ext = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;".to_vec();
        long_ext.extend_from_slice(&[b'x'; 2000]);
        assert!(malformed(&long_ext).0.contains("chunk-size line"));
        let mut long_trailers =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n".to_vec();
        for _ in 0..1000 {
            long_trailers.extend_from_slice(b"X-Trailer: 0123456789abcdef\r\n");
        }
        assert!(malformed(&long_trailers).0.contains("trailers"));
    }

    #[test]
    fn without_length_the_body_runs_to_eof_and_the_connection_closes() {
        let r = ok(b"HTTP/1.1 200 OK\r\n\r\nall of this");
        assert_eq!(
            (r.body.as_slice(), r.reusable),
            (&b"all of this"[..], false)
        );
        let r = ok(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxyz");
        assert_eq!((r.body.as_slice(), r.reusable), (&b"xyz"[..], false));
        let r = ok(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert!(!r.reusable, "HTTP/1.0 closes unless it says keep-alive");
        let r = ok(b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n");
        assert!(r.reusable);
        let r =
            ok(b"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 0\r\n\r\n");
        assert!(!r.reusable, "Connection: close");
    }

    #[test]
    fn heads_and_bodies_over_the_limits() {
        let mut big_head = b"HTTP/1.1 200 OK\r\n".to_vec();
        while big_head.len() <= HEAD_LIMIT {
            big_head.extend_from_slice(b"X-Filler: 0123456789012345678901234567890123456789\r\n");
        }
        big_head.extend_from_slice(b"\r\n");
        assert!(malformed(&big_head).0.contains("over 16384 bytes"));
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(malformed(&many).0.contains("over 100 headers"));
        let body = vec![b'b'; BODY_LIMIT + 100];
        let mut with_length =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        with_length.extend_from_slice(&body);
        let mut chunked = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
            body.len()
        )
        .into_bytes();
        chunked.extend_from_slice(&body);
        chunked.extend_from_slice(b"\r\n0\r\n\r\n");
        let mut to_eof = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        to_eof.extend_from_slice(&body);
        for raw in [with_length, chunked, to_eof] {
            let r = ok(&raw);
            assert_eq!(r.body.len(), BODY_LIMIT, "the first bytes are kept");
            assert!(
                !r.reusable,
                "the rest is not read: the connection is dropped"
            );
        }
    }

    #[test]
    fn interim_answers_are_skipped() {
        let r = ok(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n\
            HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
        );
        assert_eq!(
            (r.status, r.body.as_slice(), r.reusable),
            (201, &b"ok"[..], true)
        );
        assert!(
            malformed(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n")
                .0
                .contains("101")
        );
        let many = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(20);
        assert!(malformed(&many).0.contains("interim"));
        let (e, head) = malformed(b"HTTP/1.1 100 Continue\r\n\r\n");
        assert!(
            e.contains("inside the response head") || e.contains("before any"),
            "{e}"
        );
        assert!(head.is_none());
    }

    #[test]
    fn garbage_is_malformed_with_a_reason() {
        for (bad, why) in [
            (&b""[..], "before any response"),
            (b"HTTP/1.1 200 OK\r\nContent-Le", "inside the response head"),
            (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "malformed response head"),
            (b"HTTP/2 200\r\n\r\n", "malformed response head"),
            (b"HTTP/1.1 20 OK\r\n\r\n", "malformed response head"),
            (b"HTTP/1.1 099 Low\r\n\r\n", "out of range"),
            (
                b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
                "malformed response head",
            ),
            (
                b"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n",
                "malformed response head",
            ),
            (
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\n\n",
                "malformed response head",
            ),
        ] {
            let (e, head) = malformed(bad);
            assert!(
                e.contains(why),
                "{e} for {:?}",
                String::from_utf8_lossy(bad)
            );
            assert!(head.is_none());
        }
    }

    #[test]
    fn a_reset_parser_reads_the_next_response() {
        let mut p = ResponseParser::new();
        for body in [&b"one"[..], b"second"] {
            p.reset();
            let raw = [
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
                body,
            ]
            .concat();
            assert_eq!(p.feed(&raw), Ok(raw.len()));
            assert!(p.done());
            assert_eq!(p.take().unwrap().body, body);
        }
    }
}
