//! The stream around the session: events during a login, and how a stream that broke
//! is explained (and, where we broke
//! off for a rule, told to the server with a stream error).
//!
//! Threads: `xmpp-io`. No locks.

use std::io;

use super::reader::{ReadError, StanzaReader, StreamEvent};
use super::{XmppError, reply};
use crate::net::Socket;

/// Why a stream that sent something other than a stanza is over.
pub(super) fn stream_ended(event: StreamEvent) -> String {
    match event {
        StreamEvent::Close => "the server closed the stream".into(),
        _ => "unexpected second stream header".into(),
    }
}

/// The streams namespace (RFC 6120), of `<stream:error>`.
const NS_STREAMS: &str = "http://etherx.jabber.org/streams";

/// Whether a top-level element is a `<stream:error>`.
pub(super) fn is_stream_error(e: &minidom::Element) -> bool {
    e.name() == "error" && e.ns() == NS_STREAMS
}

/// Why a read failed, after telling the server when it broke a rule.
pub(super) fn read_failed<S: Socket>(reader: &mut StanzaReader<S>, e: ReadError) -> String {
    let (condition, why) = match e {
        ReadError::Eof => return "the server closed the connection".into(),
        ReadError::Io(e) => return e.to_string(),
        ReadError::Idle => return "idle".into(),
        ReadError::Policy(why) => ("policy-violation", format!("policy violation: {why}")),
        ReadError::Xml(e) => ("not-well-formed", format!("XML error: {e}")),
    };
    let _ = reader
        .get_mut()
        .write_all(reply::stream_error(condition).as_bytes());
    why
}

/// The next event while logging in, where a timeout or the end is a failure.
pub(super) fn login_event<S: io::Read>(
    reader: &mut StanzaReader<S>,
) -> Result<StreamEvent, XmppError> {
    reader.next_event().map_err(|e| match e {
        ReadError::Idle => XmppError::Protocol("the server did not answer in time".into()),
        ReadError::Eof => XmppError::Protocol("the server closed the connection".into()),
        ReadError::Io(e) => XmppError::Io(e),
        ReadError::Policy(p) => XmppError::Protocol(p.into()),
        ReadError::Xml(x) => XmppError::Protocol(x),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_error_conditions_are_read_past_the_text() {
        let parse = |xml: &str| -> minidom::Element {
            format!("<error xmlns='{NS_STREAMS}'>{xml}</error>")
                .parse()
                .unwrap()
        };
        let prosody = parse(
            "<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>Component already connected</text><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>",
        );
        assert!(is_stream_error(&prosody));
        assert_eq!(reply::error_condition(&prosody), "conflict");
        assert_eq!(
            reply::error_condition(&parse(
                "<not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
            )),
            "not-authorized"
        );
        assert_eq!(reply::error_condition(&parse("")), "undefined-condition");
        // As the reader hands it over on a live component stream.
        let wire: &[u8] = b"<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' id='s1'><stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/><text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>Replaced by a new connection</text></stream:error>";
        let mut reader = StanzaReader::new(wire);
        assert!(matches!(reader.next_event(), Ok(StreamEvent::Open(_))));
        let Ok(StreamEvent::Stanza(e)) = reader.next_event() else {
            panic!("no stanza")
        };
        assert!(is_stream_error(&e));
        assert_eq!(reply::error_condition(&e), "conflict");
        let iq_error: minidom::Element = "<error xmlns='jabber:component:accept' type='cancel'/>"
            .parse()
            .unwrap();
        assert!(!is_stream_error(&iq_error));
    }
}
