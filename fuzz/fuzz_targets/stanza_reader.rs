//! Fuzz target: the XMPP stanza reader and publish classification, bytes → events.
//!
//! Input layout: the first byte picks the stream namespace (bit 0: component or client
//! mode) and how the bytes arrive (bits 1–7: 1 to 63 bytes per read, or up to 16 KiB),
//! with a "would block" between reads so the reader's resume-after-idle path runs too.
//! The rest is what the XMPP server sends. Each event goes where `xmpp/mod.rs` sends it:
//! a stanza is serialised and redacted (the trace log line), classified, and an IQ gets
//! the reply the session would write.
//!
//! Besides "no panic" and "no hang", it checks that every reply we would send for an
//! attacker-chosen IQ header reads back through our own reader as one `<iq>` with the
//! same id and the addresses swapped: escaping holds, whatever the id or JIDs hold. And
//! that the reader's quick path (`xmpp/quick.rs`) changes nothing: the same bytes, read
//! the same way with the quick path off (rxml and minidom alone), give the same events,
//! tree for tree, and end the same way. And that publishes read straight into their
//! fields (`StanzaReader::next_inbound`, the XMPP thread's way) are what `classify`
//! reads from the same stanzas' trees.
#![no_main]

use std::io::{self, Read};

use libfuzzer_sys::fuzz_target;
use minidom::Element;
use uwpx_push_server::types::jid_domain;
use uwpx_push_server::xmpp::publish::{self, Inbound, IqHeader, RecentItems};
use uwpx_push_server::xmpp::reader::{Next, ReadError, StanzaReader, StreamEvent};
use uwpx_push_server::xmpp::reply;

const NS_COMPONENT: &str = "jabber:component:accept";
const NS_CLIENT: &str = "jabber:client";

/// Gives out at most `chunk` bytes per read and "would block" between reads, like a
/// socket with a read timeout.
struct Trickle<'a> {
    data: &'a [u8],
    chunk: usize,
    block_next: bool,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.block_next {
            self.block_next = false;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.block_next = true;
        let n = self.chunk.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, stream)) = data.split_first() else {
        return;
    };
    let ns = if mode & 1 == 0 {
        NS_COMPONENT
    } else {
        NS_CLIENT
    };
    let chunk = match mode >> 1 {
        0 => 16 * 1024,
        n => usize::from(n % 63) + 1,
    };
    let quick = events(stream, chunk, true);
    let full = events(stream, chunk, false);
    assert_eq!(quick, full, "the quick path read differently");
    assert_eq!(
        inbound(stream, chunk, ns),
        classified(full, ns),
        "publishes read into fields differ from what classify reads in their trees"
    );
    let mut seen = RecentItems::new(8);
    for event in &quick {
        if let Event::Stanza(stanza) = event {
            handle(stanza, ns, &mut seen);
        }
    }
});

/// One event of a whole read, comparable.
#[derive(Debug, PartialEq)]
enum Event {
    Open(Element),
    Stanza(Element),
    Close,
    /// How the read ended otherwise.
    End(String),
}

/// Every event the reader gives for `stream` arriving `chunk` bytes at a time.
fn events(stream: &[u8], chunk: usize, quick: bool) -> Vec<Event> {
    read_all(
        stream,
        chunk,
        quick,
        |r| r.next_event().map(event),
        |e| matches!(e, Event::Close),
        Event::End,
    )
}

/// What the XMPP thread's loop reads: publishes in the quick shape straight into their
/// fields (`StanzaReader::next_inbound`), anything else as trees, classified.
fn inbound(stream: &[u8], chunk: usize, ns: &str) -> Vec<Seen> {
    read_all(
        stream,
        chunk,
        true,
        |r| {
            r.next_inbound(ns).map(|next| match next {
                Next::Publish(h, p) => Seen::Stanza(Inbound::Publish(h, p)),
                Next::Event(e) => seen(event(e), ns),
            })
        },
        |s| matches!(s, Seen::Close),
        Seen::End,
    )
}

/// Reads `stream`, arriving `chunk` bytes at a time, with `next` until an item is
/// `closed` or the reader fails (that failure, written by `ended`, is the last item).
fn read_all<T>(
    stream: &[u8],
    chunk: usize,
    quick: bool,
    mut next: impl FnMut(&mut StanzaReader<Trickle<'_>>) -> Result<T, ReadError>,
    closed: impl Fn(&T) -> bool,
    ended: impl Fn(String) -> T,
) -> Vec<T> {
    let mut reader = StanzaReader::new(Trickle {
        data: stream,
        chunk,
        block_next: false,
    });
    if !quick {
        reader.disable_quick_path();
    }
    let mut out = Vec::new();
    loop {
        match next(&mut reader) {
            Ok(item) => {
                let last = closed(&item);
                out.push(item);
                if last {
                    return out;
                }
            }
            Err(ReadError::Idle) => continue,
            Err(e) => {
                out.push(ended(format!("{e:?}")));
                return out;
            }
        }
    }
}

fn event(e: StreamEvent) -> Event {
    match e {
        StreamEvent::Open(header) => Event::Open(header),
        StreamEvent::Stanza(stanza) => Event::Stanza(stanza),
        StreamEvent::Close => Event::Close,
    }
}

/// An event with its stanza classified, as the session sees it.
#[derive(Debug, PartialEq)]
enum Seen {
    Open(Element),
    Stanza(Inbound),
    Close,
    End(String),
}

fn seen(e: Event, ns: &str) -> Seen {
    match e {
        Event::Open(h) => Seen::Open(h),
        Event::Stanza(s) => Seen::Stanza(publish::classify(&s, ns)),
        Event::Close => Seen::Close,
        Event::End(why) => Seen::End(why),
    }
}

/// The events of a read with the stanzas classified.
fn classified(events: Vec<Event>, ns: &str) -> Vec<Seen> {
    events.into_iter().map(|e| seen(e, ns)).collect()
}

/// What the session loop does with one stanza, minus the dispatcher and the socket.
fn handle(stanza: &Element, ns: &str, seen: &mut RecentItems) {
    let _ = reply::loggable(stanza);
    match publish::classify(stanza, ns) {
        Inbound::Publish(h, p) => {
            assert!(
                !p.node.as_str().is_empty(),
                "a publish without a node was accepted"
            );
            let _ = jid_domain(&h.from);
            check_reply(&reply::iq_result(&h, ""), &h, ns);
            check_reply(&reply::unsupported(&h), &h, ns);
        }
        Inbound::BadPublish(h, _) => check_reply(&reply::bad_request(&h), &h, ns),
        Inbound::ForeignNode(h) => check_reply(&reply::unsupported(&h), &h, ns),
        Inbound::DiscoInfo(h) => check_reply(&reply::disco_info(&h), &h, ns),
        Inbound::DiscoItems(h) => check_reply(&reply::disco_items(&h), &h, ns),
        Inbound::Ping(h) => check_reply(&reply::iq_result(&h, ""), &h, ns),
        Inbound::Unsupported(h) => check_reply(&reply::unsupported(&h), &h, ns),
        Inbound::Event { node, item_id, .. } => {
            assert!(
                !node.as_str().is_empty(),
                "an event without a node was accepted"
            );
            if let Some(item) = item_id {
                let first = seen.insert(node.as_str(), &item);
                assert!(first || !seen.insert(node.as_str(), &item));
            }
        }
        Inbound::Response { id, .. } => assert!(!id.is_empty()),
        Inbound::Ignored => {}
    }
}

/// Our reply, read back by our own reader inside a stream of namespace `ns`, is one
/// `<iq>` with the request's id and the addresses swapped.
fn check_reply(xml: &str, h: &IqHeader, ns: &str) {
    let wire = format!(
        "<stream:stream xmlns='{ns}' xmlns:stream='http://etherx.jabber.org/streams'>{xml}</stream:stream>"
    );
    let mut reader = StanzaReader::new(wire.as_bytes());
    let mut stanzas = Vec::new();
    loop {
        match reader.next_event() {
            Ok(StreamEvent::Open(_)) => {}
            Ok(StreamEvent::Stanza(s)) => stanzas.push(s),
            Ok(StreamEvent::Close) => break,
            Err(e) => panic!("our reply {xml:?} does not read back: {e:?}"),
        }
    }
    assert_eq!(stanzas.len(), 1, "our reply {xml:?} is not one stanza");
    let iq = &stanzas[0];
    assert!(iq.is("iq", ns), "our reply {xml:?} is not an iq");
    assert_eq!(iq.attr("id"), Some(h.id.as_str()), "id changed in {xml:?}");
    if !h.from.is_empty() {
        assert_eq!(
            iq.attr("to"),
            Some(h.from.as_str()),
            "to changed in {xml:?}"
        );
    }
    if !h.to.is_empty() {
        assert_eq!(
            iq.attr("from"),
            Some(h.to.as_str()),
            "from changed in {xml:?}"
        );
    }
}
