//! A stand-in for an XMPP server's component port (XEP-0114), to drive the server's
//! XMPP side from tests without Prosody: it accepts the server's connection, checks the
//! handshake, then sends stanzas and reads replies with the project's own reader.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use minidom::Element;
use uwpx_push_server::xmpp::component::handshake;
use uwpx_push_server::xmpp::reader::{ReadError, StanzaReader, StreamEvent};

pub const COMPONENT_JID: &str = "push.localhost";
pub const COMPONENT_SECRET: &str = "component-secret";

pub struct FakeXmpp {
    listener: TcpListener,
    pub port: u16,
    stream_ids: std::cell::Cell<u32>,
}

pub struct XmppConn {
    reader: StanzaReader<TcpStream>,
}

impl FakeXmpp {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        Self {
            listener,
            port,
            stream_ids: std::cell::Cell::new(0),
        }
    }

    /// Waits for the server to connect and authenticate; panics after `timeout`.
    pub fn accept(&self, timeout: Duration) -> XmppConn {
        let end = Instant::now() + timeout;
        let tcp = loop {
            match self.listener.accept() {
                Ok((tcp, _)) => break tcp,
                Err(_) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("the server did not connect: {e}"),
            }
        };
        tcp.set_nonblocking(false).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut reader = StanzaReader::new(tcp);
        let Ok(StreamEvent::Open(open)) = reader.next_event() else {
            panic!("no stream header")
        };
        assert_eq!(open.attr("to"), Some(COMPONENT_JID));
        assert_eq!(
            (open.name(), open.ns().as_str()),
            ("stream", "http://etherx.jabber.org/streams")
        );
        self.stream_ids.set(self.stream_ids.get() + 1);
        let id = format!("stream{}", self.stream_ids.get());
        write!(
            reader.get_mut(),
            "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' id='{id}' from='{COMPONENT_JID}'>"
        )
        .unwrap();
        let Ok(StreamEvent::Stanza(hs)) = reader.next_event() else {
            panic!("no handshake")
        };
        assert_eq!(hs.name(), "handshake");
        if hs.text() == handshake(&id, COMPONENT_SECRET) {
            reader.get_mut().write_all(b"<handshake/>").unwrap();
        } else {
            reader
                .get_mut()
                .write_all(b"<stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>")
                .unwrap();
        }
        XmppConn { reader }
    }
}

impl XmppConn {
    pub fn send(&mut self, xml: &str) {
        self.reader.get_mut().write_all(xml.as_bytes()).unwrap();
    }

    /// The next stanza from the server, or None on timeout/close.
    pub fn next(&mut self, timeout: Duration) -> Option<Element> {
        self.reader
            .get_ref()
            .set_read_timeout(Some(timeout))
            .unwrap();
        match self.reader.next_event() {
            Ok(StreamEvent::Stanza(e)) => Some(e),
            Ok(_) | Err(ReadError::Idle) | Err(ReadError::Eof) => None,
            Err(e) => panic!("bad XML from the server: {e:?}"),
        }
    }

    /// The reply to the IQ with `id`, skipping (and answering) pings.
    pub fn reply_to(&mut self, id: &str) -> Element {
        let end = Instant::now() + Duration::from_secs(15);
        while Instant::now() < end {
            let Some(e) = self.next(Duration::from_millis(500)) else {
                continue;
            };
            if e.name() == "iq" && e.attr("id") == Some(id) {
                return e;
            }
        }
        panic!("no reply to {id}");
    }

    /// Whether the server closed the stream (reads until EOF or timeout).
    pub fn closed_with_stream_error(&mut self) -> Option<String> {
        loop {
            self.reader
                .get_ref()
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            match self.reader.next_event() {
                Ok(StreamEvent::Stanza(e)) if e.name() == "error" => {
                    return e.children().next().map(|c| c.name().to_owned());
                }
                Ok(StreamEvent::Stanza(_)) => continue,
                _ => return None,
            }
        }
    }
}

/// A publish as Prosody 0.12 sends it (xep0357-wns.md part C), with our node/secret.
pub fn prosody_publish(
    id: &str,
    from: &str,
    node: &str,
    secret: Option<&str>,
    count: u32,
) -> String {
    let options = secret.map_or(String::new(), |s| {
        format!("<publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field><field var='secret'><value>{s}</value></field></x></publish-options>")
    });
    format!(
        "<iq id='{id}' to='{COMPONENT_JID}' from='{from}' type='set'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='{node}'><item><notification xmlns='urn:xmpp:push:0'><x xmlns='jabber:x:data' type='form'><field var='FORM_TYPE' type='hidden'><value>urn:xmpp:push:summary</value></field><field var='message-count' type='text-single'><value>{count}</value></field><field var='pending-subscription-count' type='text-single'/><field var='last-message-sender' type='jid-single'/><field var='last-message-body' type='text-single'><value>New Message!</value></field></x></notification></item></publish>{options}</pubsub></iq>"
    )
}

/// `"result"` or `"<type>/<condition>"` for an IQ reply.
pub fn verdict(reply: &Element) -> String {
    match reply.attr("type") {
        Some("result") => "result".into(),
        Some("error") => {
            let err = reply
                .children()
                .find(|c| c.name() == "error")
                .expect("<error>");
            assert_eq!(
                err.ns(),
                "jabber:component:accept",
                "<error> must be in the stream namespace"
            );
            let cond = err
                .children()
                .next()
                .map(|c| c.name().to_owned())
                .unwrap_or_default();
            format!("{}/{cond}", err.attr("type").unwrap_or("?"))
        }
        other => panic!("not a reply: {other:?}"),
    }
}
