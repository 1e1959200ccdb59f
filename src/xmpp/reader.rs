//! Incremental reader for an endless `<stream:stream>`: rxml's push parser feeds
//! minidom's tree builder, and each complete top-level element comes out as a stanza.
//!
//! Bytes are parsed as they arrive, never buffered as a whole stream. Each stanza is
//! capped in size ([`MAX_STANZA`]) and nesting depth ([`MAX_DEPTH`]); breaking either is
//! a [`ReadError::Policy`], which the caller answers with a policy-violation stream
//! error. A read timeout on the socket surfaces as [`ReadError::Idle`] with the parser
//! state intact, so the I/O thread can write in between.
//!
//! Threads: `xmpp-io` only. No locks.

use std::io::{self, Read};

use minidom::Element;
use minidom::rxml::error::EndOrError;
use minidom::rxml::{Parse, RawEvent, RawParser};
use minidom::tree_builder::TreeBuilder;

/// Largest stanza accepted, in bytes of XML.
pub const MAX_STANZA: usize = 64 * 1024;
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
    stanza_bytes: usize,
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
        }
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
    }

    /// The next event. Blocks in `read()` at most for the socket's read timeout.
    pub fn next_event(&mut self) -> Result<StreamEvent, ReadError> {
        loop {
            let mut slice = &self.buf[self.start..self.end];
            let before = slice.len();
            let result = self.parser.parse(&mut slice, false);
            let used = before - slice.len();
            self.start += used;
            if self.tree.depth() >= 2 {
                self.stanza_bytes += used;
                if self.stanza_bytes > MAX_STANZA {
                    return Err(ReadError::Policy("stanza larger than 64 KiB"));
                }
            }
            match result {
                Ok(Some(event)) => {
                    if self.tree.depth() == 1 && matches!(event, RawEvent::Text(..)) {
                        continue; // whitespace keep-alives between stanzas
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
                            let open = self.tree.top().cloned().ok_or(ReadError::Eof)?;
                            return Ok(StreamEvent::Open(open));
                        }
                        (_, true, 1) => {
                            self.stanza_bytes = 0;
                            if let Some(stanza) = self.tree.unshift_child() {
                                return Ok(StreamEvent::Stanza(stanza));
                            }
                        }
                        (_, true, 0) => {
                            self.tree.root = None;
                            return Ok(StreamEvent::Close);
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
}
