//! XEP-0114: dial the server, open a `jabber:component:accept` stream and authenticate
//! with the handshake (lowercase hex SHA-1 of stream id + shared secret).
//!
//! Threads: `xmpp-io`. No locks.

use std::io::Write;
use std::net::TcpStream;

use sha1::{Digest, Sha1};

use super::reader::{StanzaReader, StreamEvent};
use super::reply::{self, error_condition, esc};
use super::stream::login_event;
use super::{XmppError, srv};
use crate::config::ComponentConfig;

/// Dials the component port and authenticates; on a cap breach the server is told why.
pub(super) fn connect_component(c: &ComponentConfig) -> Result<StanzaReader<TcpStream>, XmppError> {
    let mut reader = StanzaReader::new(srv::dial(&c.host, c.port)?);
    if let Err(e) = authenticate(&mut reader, c.jid.as_str(), c.secret.expose()) {
        if reader.violated() {
            let stream_error = reply::stream_error("policy-violation");
            let _ = Write::write_all(reader.get_mut(), stream_error.as_bytes());
        }
        return Err(e);
    }
    Ok(reader)
}

/// The component stream's namespace.
pub const NS_COMPONENT: &str = "jabber:component:accept";

/// The handshake value for a stream id and secret.
pub fn handshake(stream_id: &str, secret: &str) -> String {
    let mut h = Sha1::new();
    h.update(stream_id.as_bytes());
    h.update(secret.as_bytes());
    hex::encode(h.finalize())
}

/// Opens the stream and authenticates. On success the stream is ready for stanzas.
pub fn authenticate(
    reader: &mut StanzaReader<TcpStream>,
    jid: &str,
    secret: &str,
) -> Result<(), XmppError> {
    let header = format!(
        "<?xml version='1.0'?><stream:stream xmlns='{NS_COMPONENT}' xmlns:stream='http://etherx.jabber.org/streams' to='{}'>",
        esc(jid)
    );
    reader.get_mut().write_all(header.as_bytes())?;
    let id = match login_event(reader)? {
        StreamEvent::Open(open) => open
            .attr("id")
            .map(str::to_owned)
            .ok_or_else(|| XmppError::Protocol("the server's stream header has no id".into()))?,
        other => {
            return Err(XmppError::Protocol(format!(
                "expected a stream header, got {other:?}"
            )));
        }
    };
    let hs = format!("<handshake>{}</handshake>", handshake(&id, secret));
    reader.get_mut().write_all(hs.as_bytes())?;
    match login_event(reader)? {
        StreamEvent::Stanza(e) if e.name() == "handshake" => Ok(()),
        StreamEvent::Stanza(e) if e.name() == "error" => {
            let condition = error_condition(&e);
            if condition == "conflict" {
                // Prosody's default `component_conflict_resolve = "kick_new"`: another
                // instance holds the component.
                return Err(XmppError::Conflict);
            }
            Err(XmppError::Auth(format!(
                "the server refused the component handshake ({condition}): check xmpp.component.jid and secret"
            )))
        }
        other => Err(XmppError::Protocol(format!(
            "unexpected answer to the handshake: {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_matches_the_known_value() {
        // rust-crates.md §3: "3BF96D32" + "secret".
        assert!(handshake("3BF96D32", "secret").starts_with("b09ea9b3"));
    }
}
