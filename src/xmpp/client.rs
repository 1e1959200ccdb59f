//! Client mode's login: the seed's way of running, as an ordinary account
//! (`xmpp.bare_jid` / `xmpp.password`). STARTTLS is required and the certificate is
//! verified (never a password over plaintext); SASL picks SCRAM-SHA-256, then
//! SCRAM-SHA-1, then PLAIN; then a resource is bound and initial presence sent with a
//! positive priority (Prosody drops headline events for an account with no available
//! session).
//!
//! Threads: `xmpp-io`. No locks.

use std::io::Write;
use std::net::TcpStream;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use minidom::Element;
use native_tls::{TlsConnector, TlsStream};
use sasl::client::Mechanism;
use sasl::client::mechanisms::{Plain, Scram};
use sasl::common::scram::{Sha1, Sha256};
use sasl::common::{ChannelBinding, Credentials};

use super::reader::{StanzaReader, StreamEvent};
use super::reply::esc;
use super::{XmppError, dial, login_event};
use crate::config::ClientConfig;

/// The client stream's namespace.
pub const NS_CLIENT: &str = "jabber:client";
const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";

/// A logged-in client stream and the full JID the server bound.
pub struct Session {
    /// The stream, ready for stanzas.
    pub reader: StanzaReader<TlsStream<TcpStream>>,
    /// Our full JID.
    pub full_jid: String,
}

/// Connects, upgrades to TLS, authenticates, binds and sends presence.
pub fn login(c: &ClientConfig) -> Result<Session, XmppError> {
    let domain = c.bare_jid.domain();
    let username = c.bare_jid.local().to_owned();
    let tcp = dial(&c.host, c.port)?;

    // Plain phase: only STARTTLS.
    let mut plain = StanzaReader::new(tcp);
    let features = open_stream(&mut plain, &domain)?;
    if features.get_child("starttls", NS_TLS).is_none() {
        return Err(XmppError::Protocol(
            "the server does not offer STARTTLS; refusing to send the password in plaintext".into(),
        ));
    }
    plain
        .get_mut()
        .write_all(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")?;
    let answer = next_stanza(&mut plain)?;
    if answer.name() != "proceed" {
        return Err(XmppError::Protocol("the server refused STARTTLS".into()));
    }
    let tcp = plain
        .into_inner()
        .map_err(|e| XmppError::Protocol(e.into()))?;
    let mut builder = TlsConnector::builder();
    builder.min_protocol_version(Some(native_tls::Protocol::Tlsv12));
    if let Some(pem) = &c.ca_pem {
        let cert = native_tls::Certificate::from_pem(&pem.0)
            .map_err(|e| XmppError::Protocol(format!("xmpp.ca_file: {e}")))?;
        builder.add_root_certificate(cert);
    }
    let connector = builder
        .build()
        .map_err(|e| XmppError::Protocol(format!("TLS setup: {e}")))?;
    let tls = connector.connect(&domain, tcp).map_err(|e| {
        XmppError::Protocol(format!(
            "TLS with {domain} failed (certificate not trusted?): {e}"
        ))
    })?;

    // TLS phase: SASL.
    let mut reader = StanzaReader::new(tls);
    let features = open_stream(&mut reader, &domain)?;
    let offered: Vec<String> = features
        .get_child("mechanisms", NS_SASL)
        .map(|m| m.children().map(Element::text).collect())
        .unwrap_or_default();
    authenticate(&mut reader, &offered, &username, c.password.expose())?;

    // Authenticated stream: bind and presence.
    reader.restart();
    let features = open_stream(&mut reader, &domain)?;
    if features.get_child("bind", NS_BIND).is_none() {
        return Err(XmppError::Protocol(
            "the server offers no resource binding".into(),
        ));
    }
    write!(
        reader.get_mut(),
        "<iq type='set' id='bind-1'><bind xmlns='{NS_BIND}'><resource>{}</resource></bind></iq>",
        esc(&c.resource)
    )?;
    let bound = next_stanza(&mut reader)?;
    let full_jid = bound
        .get_child("bind", NS_BIND)
        .and_then(|b| b.get_child("jid", NS_BIND))
        .map(Element::text)
        .filter(|_| bound.attr("type") == Some("result"))
        .ok_or_else(|| XmppError::Protocol("resource binding failed".into()))?;
    reader
        .get_mut()
        .write_all(b"<presence><priority>1</priority></presence>")?;
    Ok(Session { reader, full_jid })
}

/// Writes a stream header and returns the server's `<stream:features/>`.
fn open_stream<S: std::io::Read + Write>(
    reader: &mut StanzaReader<S>,
    domain: &str,
) -> Result<Element, XmppError> {
    write!(
        reader.get_mut(),
        "<?xml version='1.0'?><stream:stream xmlns='{NS_CLIENT}' xmlns:stream='http://etherx.jabber.org/streams' to='{}' version='1.0'>",
        esc(domain)
    )?;
    match login_event(reader)? {
        StreamEvent::Open(_) => {}
        other => {
            return Err(XmppError::Protocol(format!(
                "expected a stream header, got {other:?}"
            )));
        }
    }
    let features = next_stanza(reader)?;
    if features.name() != "features" {
        return Err(XmppError::Protocol(format!(
            "expected stream features, got <{}>",
            features.name()
        )));
    }
    Ok(features)
}

/// Runs SASL with the strongest offered mechanism.
fn authenticate<S: std::io::Read + Write>(
    reader: &mut StanzaReader<S>,
    offered: &[String],
    username: &str,
    password: &str,
) -> Result<(), XmppError> {
    let creds = Credentials::default()
        .with_username(username)
        .with_password(password)
        .with_channel_binding(ChannelBinding::None);
    let has = |m: &str| offered.iter().any(|o| o == m);
    let bad = |e: sasl::client::MechanismError| XmppError::Auth(format!("SASL: {e}"));
    let mut mechanism: Box<dyn Mechanism> = if has("SCRAM-SHA-256") {
        Box::new(Scram::<Sha256>::from_credentials(creds).map_err(bad)?)
    } else if has("SCRAM-SHA-1") {
        Box::new(Scram::<Sha1>::from_credentials(creds).map_err(bad)?)
    } else if has("PLAIN") {
        Box::new(Plain::from_credentials(creds).map_err(bad)?)
    } else {
        return Err(XmppError::Auth(format!(
            "no supported SASL mechanism offered ({offered:?})"
        )));
    };
    let initial = B64.encode(mechanism.initial());
    write!(
        reader.get_mut(),
        "<auth xmlns='{NS_SASL}' mechanism='{}'>{initial}</auth>",
        mechanism.name()
    )?;
    loop {
        let e = next_stanza(reader)?;
        let data = B64.decode(e.text().trim()).unwrap_or_default();
        match e.name() {
            "challenge" => {
                let response = mechanism.response(&data).map_err(bad)?;
                write!(
                    reader.get_mut(),
                    "<response xmlns='{NS_SASL}'>{}</response>",
                    B64.encode(response)
                )?;
            }
            "success" => {
                mechanism.success(&data).map_err(bad)?;
                return Ok(());
            }
            "failure" => {
                let why = e
                    .children()
                    .next()
                    .map(|c| c.name().to_owned())
                    .unwrap_or_else(|| "unknown".into());
                return Err(XmppError::Auth(format!(
                    "the server refused the login ({why}): check xmpp.bare_jid and xmpp.password"
                )));
            }
            other => {
                return Err(XmppError::Protocol(format!(
                    "unexpected <{other}> during SASL"
                )));
            }
        }
    }
}

fn next_stanza<S: std::io::Read>(reader: &mut StanzaReader<S>) -> Result<Element, XmppError> {
    match login_event(reader)? {
        StreamEvent::Stanza(e) => {
            if e.name() == "error" {
                let condition = e
                    .children()
                    .next()
                    .map(|c| c.name().to_owned())
                    .unwrap_or_default();
                return Err(XmppError::Protocol(format!("stream error: {condition}")));
            }
            Ok(e)
        }
        other => Err(XmppError::Protocol(format!("unexpected {other:?}"))),
    }
}
