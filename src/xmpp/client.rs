//! Client mode's login: the seed's way of running, as an ordinary account
//! (`xmpp.bare_jid` / `xmpp.password`). Where to connect comes from `xmpp.host`, or
//! else from DNS SRV (srv.rs), every target and address in turn. TLS is required and the
//! certificate is verified against the JID's domain, whatever the target (never a
//! password over plaintext): STARTTLS, or TLS from the first byte for an
//! `_xmpps-client._tcp` target. SASL picks SCRAM-SHA-256, then SCRAM-SHA-1, then
//! PLAIN; then a resource is bound and initial presence sent with a positive priority
//! (Prosody drops headline events for an account with no available session).
//!
//! The stream is `jabber:client`, xmpp-parsers' default namespace, so the features,
//! STARTTLS and SASL nonzas and the bind IQ are read and written with its typed structs;
//! a server answer that does not parse is a protocol error naming what was expected.
//!
//! Threads: `xmpp-io`. No locks.

use std::io::Write;
use std::net::TcpStream;
use std::str::FromStr;

use minidom::Element;
use native_tls::{TlsConnector, TlsStream};
use sasl::client::Mechanism;
use sasl::client::mechanisms::{Plain, Scram};
use sasl::common::scram::{Sha1, Sha256};
use sasl::common::{ChannelBinding, Credentials};
use xmpp_parsers::bind::{BindQuery, BindResponse};
use xmpp_parsers::iq::Iq;
use xmpp_parsers::sasl as xsasl;
use xmpp_parsers::starttls;
use xmpp_parsers::stream_features::StreamFeatures;

use super::XmppError;
use super::reader::{StanzaReader, StreamEvent};
use super::reply::{error_condition, esc};
use super::srv::{self, Security, Target};
use super::stream::login_event;
use crate::config::ClientConfig;

/// The client stream's namespace.
pub const NS_CLIENT: &str = "jabber:client";

/// A logged-in client stream and the full JID the server bound.
pub struct Session {
    /// The stream, ready for stanzas.
    pub reader: StanzaReader<TlsStream<TcpStream>>,
    /// Our full JID.
    pub full_jid: String,
}

/// Connects, secures the stream with TLS, authenticates, binds and sends presence.
pub fn login(c: &ClientConfig) -> Result<Session, XmppError> {
    let domain = c.bare_jid.domain();
    let username = c.bare_jid.local().to_owned();
    let targets = match &c.host {
        Some(host) => vec![Target {
            host: host.clone(),
            port: c.port,
            security: Security::StartTls,
        }],
        None => srv::targets(&domain, c.port)?,
    };
    let (tcp, target) = srv::dial_any(&targets)?;
    log::info!(
        "xmpp: connected to {}:{} ({:?})",
        target.host,
        target.port,
        target.security
    );
    let tcp = match target.security {
        Security::DirectTls => tcp,
        Security::StartTls => starttls(tcp, &domain)?,
    };
    let tls = tls_connect(c, &domain, tcp)?;

    // TLS phase: SASL.
    let mut reader = StanzaReader::new(tls);
    let features = open_stream(&mut reader, &domain)?;
    authenticate(
        &mut reader,
        &features.sasl_mechanisms,
        &username,
        c.password.expose(),
    )?;

    // Authenticated stream: bind and presence.
    reader.restart();
    let features = open_stream(&mut reader, &domain)?;
    if !features.can_bind() {
        return Err(XmppError::Protocol(
            "the server offers no resource binding".into(),
        ));
    }
    let bind = Iq::from_set("bind-1", BindQuery::new(Some(c.resource.clone())));
    send(&mut reader, bind)?;
    let full_jid = match Iq::try_from(next_stanza(&mut reader)?) {
        Ok(Iq::Result {
            payload: Some(p), ..
        }) => BindResponse::try_from(p)
            .map(|b| b.jid.to_string())
            .map_err(|e| XmppError::Protocol(format!("unreadable bind answer: {e}")))?,
        Ok(Iq::Error { error, .. }) => {
            return Err(XmppError::Protocol(format!(
                "resource binding failed: {}",
                error_condition(&Element::from(error))
            )));
        }
        _ => return Err(XmppError::Protocol("resource binding failed".into())),
    };
    reader
        .get_mut()
        .write_all(b"<presence><priority>1</priority></presence>")?;
    Ok(Session { reader, full_jid })
}

/// The plain phase: only STARTTLS, which the server must offer.
fn starttls(tcp: TcpStream, domain: &str) -> Result<TcpStream, XmppError> {
    let mut plain = StanzaReader::new(tcp);
    let features = open_stream(&mut plain, domain)?;
    if !features.can_starttls() {
        return Err(XmppError::Protocol(
            "the server does not offer STARTTLS; refusing to send the password in plaintext".into(),
        ));
    }
    send(&mut plain, starttls::Request)?;
    match starttls::Nonza::try_from(next_stanza(&mut plain)?) {
        Ok(starttls::Nonza::Proceed(_)) => {}
        _ => return Err(XmppError::Protocol("the server refused STARTTLS".into())),
    }
    plain
        .into_inner()
        .map_err(|e| XmppError::Protocol(e.into()))
}

/// TLS verified against the JID's domain (with `xmpp.ca_file` as an extra root).
fn tls_connect(
    c: &ClientConfig,
    domain: &str,
    tcp: TcpStream,
) -> Result<TlsStream<TcpStream>, XmppError> {
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
    connector.connect(domain, tcp).map_err(|e| {
        XmppError::Protocol(format!(
            "TLS with {domain} failed (certificate not trusted?): {e}"
        ))
    })
}

/// Serialises a typed nonza or stanza onto the stream.
fn send<S: std::io::Read + Write>(
    reader: &mut StanzaReader<S>,
    what: impl Into<Element>,
) -> Result<(), XmppError> {
    let xml = String::from(&what.into());
    reader.get_mut().write_all(xml.as_bytes())?;
    Ok(())
}

/// Writes a stream header and returns the server's `<stream:features/>`.
fn open_stream<S: std::io::Read + Write>(
    reader: &mut StanzaReader<S>,
    domain: &str,
) -> Result<StreamFeatures, XmppError> {
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
    let name = features.name().to_owned();
    StreamFeatures::try_from(features)
        .map_err(|e| XmppError::Protocol(format!("expected stream features, got <{name}>: {e}")))
}

/// Runs SASL with the strongest offered mechanism.
fn authenticate<S: std::io::Read + Write>(
    reader: &mut StanzaReader<S>,
    offered: &std::collections::BTreeSet<String>,
    username: &str,
    password: &str,
) -> Result<(), XmppError> {
    let creds = Credentials::default()
        .with_username(username)
        .with_password(password)
        .with_channel_binding(ChannelBinding::None);
    let bad = |e: sasl::client::MechanismError| XmppError::Auth(format!("SASL: {e}"));
    let mut mechanism: Box<dyn Mechanism> = if offered.contains("SCRAM-SHA-256") {
        Box::new(Scram::<Sha256>::from_credentials(creds).map_err(bad)?)
    } else if offered.contains("SCRAM-SHA-1") {
        Box::new(Scram::<Sha1>::from_credentials(creds).map_err(bad)?)
    } else if offered.contains("PLAIN") {
        Box::new(Plain::from_credentials(creds).map_err(bad)?)
    } else {
        return Err(XmppError::Auth(format!(
            "no supported SASL mechanism offered ({offered:?})"
        )));
    };
    let auth = xsasl::Auth {
        mechanism: xsasl::Mechanism::from_str(mechanism.name())
            .map_err(|e| XmppError::Auth(format!("SASL: {e}")))?,
        data: mechanism.initial(),
    };
    send(reader, auth)?;
    loop {
        let e = next_stanza(reader)?;
        let name = e.name().to_owned();
        match xsasl::Nonza::try_from(e) {
            Ok(xsasl::Nonza::Challenge(c)) => {
                let data = mechanism.response(&c.data).map_err(bad)?;
                send(reader, xsasl::Response { data })?;
            }
            Ok(xsasl::Nonza::Success(s)) => {
                mechanism.success(&s.data).map_err(bad)?;
                return Ok(());
            }
            Ok(xsasl::Nonza::Failure(f)) => {
                let why = error_condition(&Element::from(f));
                return Err(XmppError::Auth(format!(
                    "the server refused the login ({why}): check xmpp.bare_jid and xmpp.password"
                )));
            }
            _ => {
                return Err(XmppError::Protocol(format!(
                    "unexpected <{name}> during SASL"
                )));
            }
        }
    }
}

/// The next top-level element; a stream error ends the login.
fn next_stanza<S: std::io::Read>(reader: &mut StanzaReader<S>) -> Result<Element, XmppError> {
    match login_event(reader)? {
        StreamEvent::Stanza(e) => {
            if e.name() == "error" {
                return Err(XmppError::Protocol(format!(
                    "stream error: {}",
                    error_condition(&e)
                )));
            }
            Ok(e)
        }
        other => Err(XmppError::Protocol(format!("unexpected {other:?}"))),
    }
}
