//! Incremental reader for an endless `<stream:stream>`: rxml's push parser feeds
//! minidom's tree builder, and each complete top-level element comes out as a stanza.
//!
//! Bytes are parsed as they arrive, never buffered as a whole stream. Each stanza is
//! capped in size ([`MAX_STANZA`], every byte from its `<` on, so the attributes and
//! namespace declarations of its own start tag count too: the tree builder holds them
//! until the tag closes) and nesting depth ([`MAX_DEPTH`]); the stream header, with
//! the XML declaration before it, is capped at [`MAX_HEADER`]. Breaking a cap is a
//! [`ReadError::Policy`], which the caller answers with a policy-violation stream
//! error. A read timeout on the socket surfaces as [`ReadError::Idle`] with the parser
//! state intact, so the I/O thread can write in between.
//!
//! Threads: `xmpp-io` only. No locks.

use std::io::{self, Read};

use minidom::Element;
use minidom::rxml::error::EndOrError;
use minidom::rxml::{Parse, RawEvent, RawParser};
use minidom::tree_builder::TreeBuilder;

use super::publish::IqHeader;
use crate::push::Publish;

/// Largest stanza accepted, in bytes of XML.
pub const MAX_STANZA: usize = 64 * 1024;
/// Largest stream header accepted, XML declaration included. Real ones are about
/// 250 bytes.
pub const MAX_HEADER: usize = 4 * 1024;
/// Deepest nesting accepted inside a stanza (a publish is about 8 deep).
pub const MAX_DEPTH: usize = 32;

/// What the stream produced.
#[derive(Debug)]
pub enum StreamEvent {
    /// The peer's `<stream:stream>` header (attributes: id, from, version).
    Open(Element),
    /// One complete top-level element.
    Stanza(Element),
    /// `</stream:stream>`.
    Close,
}

/// What [`StanzaReader::next_inbound`] read.
#[derive(Debug)]
pub enum Next {
    /// An event, as [`StanzaReader::next_event`] gives it.
    Event(StreamEvent),
    /// A publish IQ, read into its fields without a tree.
    Publish(IqHeader, Publish),
}

/// Why no event came.
#[derive(Debug)]
pub enum ReadError {
    /// The read timed out with nothing complete: come back later.
    Idle,
    /// The peer closed the connection.
    Eof,
    /// A stanza broke the size or depth cap.
    Policy(&'static str),
    /// The XML is not well-formed.
    Xml(String),
    /// The socket failed.
    Io(io::Error),
}

/// The reader over any byte stream.
pub struct StanzaReader<S> {
    inner: S,
    parser: RawParser,
    tree: TreeBuilder,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes consumed since the last complete event at stream level: the stanza (or
    /// header) being read, from its `<` on.
    stanza_bytes: usize,
    /// Whether the peer's stream header has been read (which cap applies).
    opened: bool,
    /// Whether the last error was a cap, so the caller can still send the stream
    /// error after a login step turned it into a generic failure.
    violated: bool,
    /// The stream's default namespace, once its header is read: what the quick path
    /// ([`super::quick`]) gives a stanza that declares none.
    default_ns: Option<String>,
    /// Whether rxml stands between two stanzas with nothing of the next one read, so
    /// the quick path may take the next stanza's bytes in its place.
    boundary: bool,
    /// The quick path is on (off only to compare it with rxml in tests).
    quick: bool,
}

impl<S: Read> StanzaReader<S> {
    /// Wraps a connected stream.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            parser: RawParser::new(),
            tree: TreeBuilder::new(),
            buf: vec![0; 16 * 1024],
            start: 0,
            end: 0,
            stanza_bytes: 0,
            opened: false,
            violated: false,
            default_ns: None,
            boundary: false,
            quick: true,
        }
    }

    /// Reads every stanza with rxml (tests and the fuzz target compare the two paths).
    pub fn disable_quick_path(&mut self) {
        self.quick = false;
    }

    /// The stream, for writing (on the same thread).
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The stream, for socket options.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Gives the stream back (for the STARTTLS upgrade). Fails if bytes after the
    /// `<proceed/>` were already read: they would belong to the TLS handshake.
    pub fn into_inner(self) -> Result<S, &'static str> {
        if self.start != self.end {
            return Err("data buffered before the TLS upgrade");
        }
        Ok(self.inner)
    }

    /// Forgets the parse state for a new stream on the same connection (after
    /// STARTTLS or SASL success in client mode).
    pub fn restart(&mut self) {
        self.parser = RawParser::new();
        self.tree = TreeBuilder::new();
        self.stanza_bytes = 0;
        self.opened = false;
        self.default_ns = None;
        self.boundary = false;
    }

    /// Whether reading stopped at a size or depth cap: the peer is owed a
    /// policy-violation stream error.
    pub fn violated(&self) -> bool {
        self.violated
    }

    /// The next event. Blocks in `read()` at most for the socket's read timeout.
    pub fn next_event(&mut self) -> Result<StreamEvent, ReadError> {
        let quick = |buf: &[u8], ns: &str| {
            super::quick::stanza(buf, ns, MAX_DEPTH).map(|(e, used)| (StreamEvent::Stanza(e), used))
        };
        self.read(quick, |event| event)
    }

    /// Like [`Self::next_event`], but a publish IQ of a stream whose namespace is
    /// `stream_ns`, in the shape the quick path reads, comes out as its fields, the
    /// same as [`super::publish::classify`] would read from its tree, with no tree
    /// built (the XMPP thread's loop: see `quick::publish`).
    pub fn next_inbound(&mut self, stream_ns: &str) -> Result<Next, ReadError> {
        let quick = |buf: &[u8], ns: &str| {
            if let Some((header, publish, used)) =
                super::quick::publish(buf, ns, stream_ns, MAX_DEPTH)
            {
                return Some((Next::Publish(header, publish), used));
            }
            super::quick::stanza(buf, ns, MAX_DEPTH)
                .map(|(e, used)| (Next::Event(StreamEvent::Stanza(e)), used))
        };
        self.read(quick, Next::Event)
    }

    /// The reading loop, with `quick` tried at each stanza boundary and `event`
    /// wrapping what rxml produced.
    fn read<T>(
        &mut self,
        quick: impl Fn(&[u8], &str) -> Option<(T, usize)>,
        event: impl Fn(StreamEvent) -> T,
    ) -> Result<T, ReadError> {
        let result = self.read_inner(quick).map(|r| r.unwrap_or_else(&event));
        if let Err(ReadError::Policy(_)) = result {
            self.violated = true;
        }
        result
    }

    /// What the quick path read (`Ok`), or what rxml did (`Err`).
    fn read_inner<T>(
        &mut self,
        quick: impl Fn(&[u8], &str) -> Option<(T, usize)>,
    ) -> Result<Result<T, StreamEvent>, ReadError> {
        loop {
            if self.boundary
                && self.quick
                && let Some(ns) = &self.default_ns
                && let Some((read, used)) = quick(&self.buf[self.start..self.end], ns)
            {
                self.start += used;
                return Ok(Ok(read));
            }
            let mut slice = &self.buf[self.start..self.end];
            let before = slice.len();
            let result = self.parser.parse(&mut slice, false);
            let used = before - slice.len();
            self.start += used;
            if used > 0 {
                self.boundary = false;
            }
            // Counted at every depth: a top-level start tag's attributes arrive while
            // the tree is still at stream level, and are held until the tag closes.
            self.stanza_bytes += used;
            if !self.opened && self.stanza_bytes > MAX_HEADER {
                return Err(ReadError::Policy("stream header larger than 4 KiB"));
            }
            if self.stanza_bytes > MAX_STANZA {
                return Err(ReadError::Policy("stanza larger than 64 KiB"));
            }
            match result {
                Ok(Some(event)) => {
                    if self.tree.depth() == 1 && matches!(event, RawEvent::Text(..)) {
                        // Whitespace keep-alives between stanzas: the next stanza
                        // starts after them.
                        self.stanza_bytes = 0;
                        continue;
                    }
                    let head = matches!(event, RawEvent::ElementHeadClose(_));
                    let foot = matches!(event, RawEvent::ElementFoot(_));
                    self.tree
                        .process_event(event)
                        .map_err(|e| ReadError::Xml(e.to_string()))?;
                    let depth = self.tree.depth();
                    if depth > MAX_DEPTH {
                        return Err(ReadError::Policy("stanza nested too deep"));
                    }
                    match (head, foot, depth) {
                        (true, _, 1) => {
                            self.opened = true;
                            self.stanza_bytes = 0;
                            let open = self.tree.top().cloned().ok_or(ReadError::Eof)?;
                            self.default_ns = open.prefixes.get(&None).cloned();
                            // Not a boundary yet: a self-closing header's end is
                            // still queued in rxml. The first stanza goes through it.
                            return Ok(Err(StreamEvent::Open(open)));
                        }
                        (_, true, 1) => {
                            self.stanza_bytes = 0;
                            if let Some(stanza) = self.tree.unshift_child() {
                                // An element's end is the last event of its token:
                                // rxml has nothing of the next stanza.
                                self.boundary = true;
                                return Ok(Err(StreamEvent::Stanza(stanza)));
                            }
                        }
                        (_, true, 0) => {
                            self.tree.root = None;
                            return Ok(Err(StreamEvent::Close));
                        }
                        _ => {}
                    }
                }
                Ok(None) => return Err(ReadError::Eof),
                Err(EndOrError::NeedMoreData) => {
                    let n = match self.inner.read(&mut self.buf) {
                        Ok(0) => return Err(ReadError::Eof),
                        Ok(n) => n,
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::WouldBlock
                                    | io::ErrorKind::TimedOut
                                    | io::ErrorKind::Interrupted
                            ) =>
                        {
                            return Err(ReadError::Idle);
                        }
                        Err(e) => return Err(ReadError::Io(e)),
                    };
                    self.start = 0;
                    self.end = n;
                }
                Err(EndOrError::Error(e)) => return Err(ReadError::Xml(e.to_string())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gives out a few bytes per read, then "would block" once, like a slow socket.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        chunk: usize,
        block_next: bool,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.block_next {
                self.block_next = false;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.block_next = true;
            let n = self.chunk.min(buf.len()).min(self.data.len() - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    fn events(xml: &str, chunk: usize) -> Vec<String> {
        let mut r = StanzaReader::new(Trickle {
            data: xml.as_bytes().to_vec(),
            pos: 0,
            chunk,
            block_next: false,
        });
        let mut out = Vec::new();
        loop {
            match r.next_event() {
                Ok(StreamEvent::Open(e)) => {
                    out.push(format!("open id={}", e.attr("id").unwrap_or("")))
                }
                Ok(StreamEvent::Stanza(e)) => out.push(format!("{}:{}", e.name(), e.ns())),
                Ok(StreamEvent::Close) => out.push("close".into()),
                Err(ReadError::Idle) => continue,
                Err(ReadError::Eof) => return out,
                Err(e) => {
                    out.push(format!("error {e:?}"));
                    return out;
                }
            }
        }
    }

    #[test]
    fn a_self_closing_stream_header_ends_the_stream_before_what_follows() {
        // Found by the fuzz target comparing the quick path with rxml: the header's end
        // is still queued in rxml when the header is handed out, so the quick path must
        // not take the next bytes as a stanza.
        let xml = "<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' id='s'/><iq id='1'/>";
        for chunk in [1, 7, 4096] {
            let got = events(xml, chunk);
            assert_eq!(got[..2], ["open id=s", "close"], "chunk {chunk}");
        }
    }

    #[test]
    fn stanzas_after_the_first_take_the_quick_path_and_read_the_same() {
        let stream = STREAM.replace(
            "</stream:stream>",
            "<iq type='set' id='2'><pubsub xmlns='http://jabber.org/protocol/pubsub'/></iq></stream:stream>",
        );
        for chunk in [1, 3, 64, 16 * 1024] {
            assert_eq!(
                events(&stream, chunk),
                [
                    "open id=s1",
                    "handshake:jabber:component:accept",
                    "iq:jabber:component:accept",
                    "message:jabber:component:accept",
                    "iq:jabber:component:accept",
                    "close"
                ],
                "chunk {chunk}"
            );
        }
    }

    const STREAM: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' id='s1' from='push.localhost'><handshake/> \n<iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq><message><body>x</body></message></stream:stream>";

    #[test]
    fn stanzas_come_out_whole_however_the_bytes_are_cut() {
        let expected = vec![
            "open id=s1",
            "handshake:jabber:component:accept",
            "iq:jabber:component:accept",
            "message:jabber:component:accept",
            "close",
        ];
        for chunk in [1, 3, 5, 13, 4096] {
            assert_eq!(events(STREAM, chunk), expected, "chunk {chunk}");
        }
    }

    #[test]
    fn oversize_and_deep_stanzas_are_policy_violations() {
        let big = format!(
            "<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams'><message><body>{}</body></message>",
            "a".repeat(70_000)
        );
        assert!(events(&big, 8192).last().unwrap().contains("Policy"));
        let deep = format!(
            "<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams'><iq>{}",
            "<a>".repeat(100)
        );
        assert!(events(&deep, 8192).last().unwrap().contains("Policy"));
        let bad = "<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams'><iq></message>";
        assert!(events(bad, 8192).last().unwrap().contains("Xml"));
    }

    /// Reads `xml` in 8 KiB chunks; returns the events and how many bytes were read.
    fn events_and_bytes_read(xml: &[u8]) -> (Vec<String>, usize) {
        let mut r = StanzaReader::new(Trickle {
            data: xml.to_vec(),
            pos: 0,
            chunk: 8192,
            block_next: false,
        });
        let mut out = Vec::new();
        loop {
            match r.next_event() {
                Ok(StreamEvent::Open(_)) => out.push("open".to_owned()),
                Ok(StreamEvent::Stanza(e)) => out.push(e.name().to_owned()),
                Ok(StreamEvent::Close) => out.push("close".into()),
                Err(ReadError::Idle) => continue,
                Err(ReadError::Eof) => break,
                Err(e) => {
                    assert_eq!(r.violated(), matches!(e, ReadError::Policy(_)));
                    out.push(format!("error {e:?}"));
                    break;
                }
            }
        }
        (out, r.inner.pos)
    }

    fn many_attributes(n: usize) -> String {
        (0..n).map(|i| format!(" a{i}='v'")).collect()
    }

    #[test]
    fn a_top_level_start_tag_counts_towards_the_stanza_cap() {
        let header = "<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams'>";
        let xml = format!("{header}<iq type='get'{}>", many_attributes(200_000));
        let (out, read) = events_and_bytes_read(xml.as_bytes());
        assert_eq!(out[0], "open");
        assert!(out[1].contains("Policy"), "{out:?}");
        assert!(
            read < MAX_STANZA + 64 * 1024,
            "read {read} bytes before stopping"
        );
        // Namespace declarations are attributes too.
        let ns: String = (0..20_000)
            .map(|i| format!(" xmlns:p{i}='urn:x:{i}'"))
            .collect();
        let (out, _) = events_and_bytes_read(format!("{header}<message{ns}/>").as_bytes());
        assert!(out[1].contains("Policy"), "{out:?}");
    }

    #[test]
    fn the_stream_header_is_capped() {
        let xml = format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams'{}>",
            many_attributes(100_000)
        );
        let (out, read) = events_and_bytes_read(xml.as_bytes());
        assert_eq!(out.len(), 1);
        assert!(out[0].contains("stream header"), "{out:?}");
        assert!(read < 64 * 1024, "read {read} bytes before stopping");
    }

    #[test]
    fn keepalives_between_stanzas_do_not_add_up_and_large_stanzas_still_pass() {
        let mut xml = String::from(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' id='x'>",
        );
        for _ in 0..40 {
            xml.push_str(&" ".repeat(4000));
            xml.push_str("<iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>");
        }
        // Just under the cap, counting its start tag.
        xml.push_str(&format!(
            "<message a='b'><body>{}</body></message>",
            "x".repeat(MAX_STANZA - 100)
        ));
        xml.push_str("</stream:stream>");
        let (out, _) = events_and_bytes_read(xml.as_bytes());
        assert_eq!(out.len(), 43, "{:?}", &out[out.len().saturating_sub(3)..]);
        assert_eq!(out[41], "message");
        assert_eq!(out[42], "close");
    }
}
