//! Outgoing stanzas: IQ results and errors, disco answers, pings, stream errors; and
//! the one reader of error conditions ([`error_condition`]).
//!
//! Every stanza is written without an `xmlns` on its top element or its `<error>`, so it
//! sits in the stream's default namespace (`jabber:component:accept` or
//! `jabber:client`). Prosody reads an `<error>` in any other namespace as an untyped
//! error, counts it, and after 16 disables the user's push registration.
//!
//! The push outcome → IQ reply table (xep0357-wns.md part D). Only a truly dead channel
//! or an unknown node gives `cancel`, which makes the user's server drop the
//! registration (ejabberd at the first one, Prosody after 16):
//!
//! | outcome                                   | reply                               |
//! |-------------------------------------------|-------------------------------------|
//! | delivered, coalesced                      | `result`                            |
//! | channel gone (404/410), unknown node      | `cancel` / `item-not-found`         |
//! | missing or wrong secret, foreign domain   | `auth` / `forbidden`                |
//! | malformed publish                         | `modify` / `bad-request`            |
//! | WNS transient (406/5xx/timeout), queue full | `wait` / `resource-constraint`    |
//! | WNS misconfigured (401/403/blocked), our bug (400/405/413), store failure | `wait` / `internal-server-error` |
//! | no outcome within `wns.deadline_ms`       | `wait` / `remote-server-timeout`    |
//! | WNS delivery not configured               | `wait` / `internal-server-error`     |
//!
//! Threads: `xmpp-io`. Pure functions.

use std::fmt::Write as _;
use std::sync::LazyLock;

use minidom::Element;
use xmpp_parsers::disco::{DiscoInfoResult, Identity};
use xmpp_parsers::ns;

use super::publish::IqHeader;
pub use super::publish::error_condition;
use crate::push::PushOutcome;
use crate::wns::Outcome;
pub use crate::xml::escape as esc;

/// XMPP stanza error types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    /// Do not retry; for push: drop the registration.
    Cancel,
    /// Authentication problem (counted like cancel by Prosody, fatal on ejabberd).
    Auth,
    /// Malformed request.
    Modify,
    /// Temporary: retry later. Never disables a registration.
    Wait,
}

impl ErrorType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Cancel => "cancel",
            Self::Auth => "auth",
            Self::Modify => "modify",
            Self::Wait => "wait",
        }
    }
}

/// An IQ reply before addressing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// `type='result'`.
    Result,
    /// `type='error'` with a type and a defined condition.
    Error(ErrorType, &'static str),
}

/// THE mapping from a push outcome to the IQ reply (table in the module docs).
pub fn for_outcome(outcome: &PushOutcome) -> Reply {
    use ErrorType::*;
    match outcome {
        PushOutcome::Wns(Outcome::Delivered) | PushOutcome::Coalesced => Reply::Result,
        PushOutcome::Wns(Outcome::ChannelGone) | PushOutcome::UnknownNode => {
            Reply::Error(Cancel, "item-not-found")
        }
        PushOutcome::BadSecret | PushOutcome::ForeignDomain => Reply::Error(Auth, "forbidden"),
        PushOutcome::Wns(Outcome::Transient(_)) => Reply::Error(Wait, "resource-constraint"),
        PushOutcome::Wns(Outcome::Misconfigured(_) | Outcome::OurBug(_))
        | PushOutcome::Internal(_)
        | PushOutcome::NoWns => Reply::Error(Wait, "internal-server-error"),
        PushOutcome::TimedOut => Reply::Error(Wait, "remote-server-timeout"),
    }
}

/// Serialises a reply to the IQ `h` (addresses swapped, id kept).
pub fn iq_reply(h: &IqHeader, reply: Reply) -> String {
    match reply {
        Reply::Result => iq_result(h, ""),
        Reply::Error(t, condition) => {
            let mut s = String::with_capacity(200);
            let _ = write!(
                s,
                "<iq type='error' id='{}' from='{}' to='{}'><error type='{}'><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
                esc(&h.id),
                esc(&h.to),
                esc(&h.from),
                t.as_str()
            );
            s
        }
    }
}

/// `type='result'` with an optional payload.
pub fn iq_result(h: &IqHeader, payload: &str) -> String {
    let mut s = String::with_capacity(100 + payload.len());
    let _ = write!(s, "<iq type='result' id='{}'", esc(&h.id));
    if !h.to.is_empty() {
        let _ = write!(s, " from='{}'", esc(&h.to));
    }
    if !h.from.is_empty() {
        let _ = write!(s, " to='{}'", esc(&h.from));
    }
    if payload.is_empty() {
        s.push_str("/>");
    } else {
        let _ = write!(s, ">{payload}</iq>");
    }
    s
}

/// disco#info: we are a XEP-0357 app server. The payload is xmpp-parsers'
/// `DiscoInfoResult`, built once; the envelope stays in the stream's namespace.
pub fn disco_info(h: &IqHeader) -> String {
    static QUERY: LazyLock<String> = LazyLock::new(|| {
        let info = DiscoInfoResult {
            node: None,
            identities: vec![Identity {
                category: "pubsub".into(),
                type_: "push".into(),
                lang: None,
                name: Some("UWPX push server".into()),
            }],
            features: [ns::DISCO_INFO, ns::PUSH, ns::PING]
                .into_iter()
                .map(str::to_owned)
                .collect(),
            extensions: Vec::new(),
        };
        String::from(&Element::from(info))
    });
    iq_result(h, &QUERY)
}

/// disco#items: none.
pub fn disco_items(h: &IqHeader) -> String {
    iq_result(h, "<query xmlns='http://jabber.org/protocol/disco#items'/>")
}

/// Any other request: `cancel` / `service-unavailable`, so no IQ goes unanswered.
pub fn unsupported(h: &IqHeader) -> String {
    iq_reply(h, Reply::Error(ErrorType::Cancel, "service-unavailable"))
}

/// A malformed publish: `modify` / `bad-request`.
pub fn bad_request(h: &IqHeader) -> String {
    iq_reply(h, Reply::Error(ErrorType::Modify, "bad-request"))
}

/// Our keep-alive ping to the server.
pub fn ping(id: &str, from: &str, to: &str) -> String {
    format!(
        "<iq type='get' id='{}' from='{}' to='{}'><ping xmlns='urn:xmpp:ping'/></iq>",
        esc(id),
        esc(from),
        esc(to)
    )
}

/// A stream error followed by the stream's end.
pub fn stream_error(condition: &str) -> String {
    format!(
        "<stream:error><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>"
    )
}

/// An inbound stanza as text for the trace log, secrets masked. The namespace
/// declarations it came with are left out (each element says its namespace): rxml's
/// writer panics on some that the parser accepts, such as a `stream` prefix bound again
/// inside a stanza, and a log line must not take the XMPP thread down.
pub fn loggable(stanza: &Element) -> String {
    fn strip(e: &mut Element) {
        e.prefixes = Default::default();
        for c in e.children_mut() {
            strip(c);
        }
    }
    let mut e = stanza.clone();
    strip(&mut e);
    redact_secrets(&String::from(&e))
}

/// Masks the value of a `secret` form field, for trace logs of whole stanzas.
pub fn redact_secrets(xml: &str) -> String {
    let mut out = String::with_capacity(xml.len());
    let mut rest = xml;
    while let Some(i) = rest
        .find("var='secret'")
        .or_else(|| rest.find("var=\"secret\""))
    {
        let (head, tail) = rest.split_at(i);
        out.push_str(head);
        match (tail.find("<value>"), tail.find("</value>")) {
            (Some(a), Some(b)) if a < b => {
                out.push_str(&tail[..a + 7]);
                out.push_str("********");
                rest = &tail[b..];
            }
            _ => {
                out.push_str(tail);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

    #[test]
    fn a_stanza_that_rebinds_the_stream_prefix_can_be_logged() {
        // Found by the stanza_reader fuzz target: rxml reads this, and its writer
        // panicked on the stanza's own declarations.
        let wire = "<stream:stream xmlns:stream='ft:hp/et/therx.jabber.r:component:accept'><iq xmlns:stream='fhttp://etherx.jabbeorg/streamhost' xmlns='jqbber:component:accept'><iq xmlns:stream='fhttp://etherx.jabber.org/streamhost' xmlns='jabbexmpp:pi[ng'/></iq>";
        let mut r = crate::xmpp::reader::StanzaReader::new(wire.as_bytes());
        assert!(matches!(
            r.next_event(),
            Ok(crate::xmpp::reader::StreamEvent::Open(_))
        ));
        let Ok(crate::xmpp::reader::StreamEvent::Stanza(e)) = r.next_event() else {
            panic!("no stanza")
        };
        let text = loggable(&e);
        assert!(
            text.starts_with("<iq") && text.contains("jabbexmpp:pi[ng"),
            "{text}"
        );
    }

    fn h() -> IqHeader {
        IqHeader {
            id: "a'1".into(),
            from: "localhost".into(),
            to: "push.localhost".into(),
        }
    }

    #[test]
    fn every_row_of_the_reply_table() {
        use ErrorType::*;
        let rows = [
            (PushOutcome::Wns(Outcome::Delivered), Reply::Result),
            (PushOutcome::Coalesced, Reply::Result),
            (
                PushOutcome::Wns(Outcome::ChannelGone),
                Reply::Error(Cancel, "item-not-found"),
            ),
            (
                PushOutcome::UnknownNode,
                Reply::Error(Cancel, "item-not-found"),
            ),
            (PushOutcome::BadSecret, Reply::Error(Auth, "forbidden")),
            (PushOutcome::ForeignDomain, Reply::Error(Auth, "forbidden")),
            (
                PushOutcome::Wns(Outcome::Transient("x".into())),
                Reply::Error(Wait, "resource-constraint"),
            ),
            (
                PushOutcome::Wns(Outcome::Misconfigured("x".into())),
                Reply::Error(Wait, "internal-server-error"),
            ),
            (
                PushOutcome::Wns(Outcome::OurBug("x".into())),
                Reply::Error(Wait, "internal-server-error"),
            ),
            (
                PushOutcome::Internal(StoreError::Busy),
                Reply::Error(Wait, "internal-server-error"),
            ),
            (
                PushOutcome::NoWns,
                Reply::Error(Wait, "internal-server-error"),
            ),
            (
                PushOutcome::TimedOut,
                Reply::Error(Wait, "remote-server-timeout"),
            ),
        ];
        for (outcome, reply) in rows {
            assert_eq!(for_outcome(&outcome), reply, "{outcome:?}");
        }
    }

    #[test]
    fn error_conditions_are_read_from_every_kind_of_error() {
        let parse = |xml: &str| xml.parse::<Element>().unwrap();
        let rows = [
            // A stanza error in the component namespace, <text/> first.
            (
                "<iq xmlns='jabber:component:accept' type='error' id='1'><error type='cancel'><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>x</text><conflict xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
                "conflict",
            ),
            (
                "<error xmlns='jabber:client' type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>",
                "item-not-found",
            ),
            (
                "<stream:error xmlns:stream='http://etherx.jabber.org/streams'><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>",
                "not-authorized",
            ),
            (
                "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/></failure>",
                "not-authorized",
            ),
            (
                "<iq xmlns='jabber:client' type='error' id='2'><error type='wait'><made-up xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
                "undefined-condition",
            ),
            (
                "<iq xmlns='jabber:client' type='error' id='3'/>",
                "undefined-condition",
            ),
        ];
        for (xml, condition) in rows {
            assert_eq!(error_condition(&parse(xml)), condition, "{xml}");
        }
    }

    #[test]
    fn secrets_are_masked_in_trace_logs() {
        let xml = "<x><field var='secret'><value>s3cret</value></field><field var=\"secret\"><value>two</value></field><value>keep</value></x>";
        let red = redact_secrets(xml);
        assert!(!red.contains("s3cret") && !red.contains("two"), "{red}");
        assert!(red.contains("<value>keep</value>"));
    }

    #[test]
    fn replies_are_in_the_stream_namespace_and_escaped() {
        assert_eq!(
            iq_reply(&h(), Reply::Error(ErrorType::Wait, "resource-constraint")),
            "<iq type='error' id='a&apos;1' from='push.localhost' to='localhost'><error type='wait'><resource-constraint xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
        );
        assert_eq!(
            iq_reply(&h(), Reply::Result),
            "<iq type='result' id='a&apos;1' from='push.localhost' to='localhost'/>"
        );
        let info = disco_info(&h());
        assert!(
            info.starts_with("<iq type='result' id='a&apos;1' from='push.localhost' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'>"),
            "{info}"
        );
        let iq: Element = info
            .replacen("<iq ", "<iq xmlns='jabber:client' ", 1)
            .parse()
            .unwrap();
        let query = iq.get_child("query", ns::DISCO_INFO).unwrap().clone();
        let parsed = DiscoInfoResult::try_from(query).unwrap();
        assert_eq!(parsed.identities[0].category, "pubsub");
        assert_eq!(parsed.identities[0].type_, "push");
        assert!(parsed.features.contains(ns::PUSH) && parsed.features.contains(ns::PING));
        assert!(unsupported(&h()).contains("<error type='cancel'><service-unavailable"));
    }
}
