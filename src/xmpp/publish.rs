//! Inbound stanzas → typed requests, with every check that needs no I/O.
//!
//! The IQ envelope is read here by hand rather than with xmpp-parsers' `Iq`, whose
//! namespace is fixed at compile time: one binary serves `jabber:component:accept`
//! (component mode) and `jabber:client` (client mode), so the stream's namespace is a
//! parameter. Payloads are read leniently, because Prosody and ejabberd differ
//! (xep0357-wns.md part C): the summary form may be `form` or `submit` or absent,
//! fields may be empty, and unknown children are ignored. `publish-options` need no
//! FORM_TYPE for the `secret` to be found.
//!
//! Threads: `xmpp-io`. No I/O, no locks.

use std::collections::{HashSet, VecDeque};

use minidom::Element;
use xmpp_parsers::pubsub::{Event, event};
use xmpp_parsers::{ns, sasl as xsasl, stanza_error, stream_error};

use crate::push::Publish;
use crate::types::{Node, Summary};

/// XEP-0060 pubsub.
pub const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
/// XEP-0357 push.
pub const NS_PUSH: &str = "urn:xmpp:push:0";
/// XEP-0004 data forms.
pub const NS_DATA: &str = "jabber:x:data";
/// XEP-0030 disco#info.
pub const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
/// XEP-0030 disco#items.
pub const NS_DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
/// XEP-0199 ping.
pub const NS_PING: &str = "urn:xmpp:ping";
/// XEP-0060 events (client mode receives pushes as these).
pub const NS_PUBSUB_EVENT: &str = "http://jabber.org/protocol/pubsub#event";

/// The addressing of an IQ, kept to build the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IqHeader {
    /// `id` (required for a reply).
    pub id: String,
    /// `from`: the user's server (a domain) in component mode.
    pub from: String,
    /// `to`: our JID.
    pub to: String,
}

/// What an inbound stanza is.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// A XEP-0357 publish.
    Publish(IqHeader, Publish),
    /// A publish we cannot use (no node, no item): answered `modify/bad-request`.
    BadPublish(IqHeader, &'static str),
    /// A publish to a node that cannot be one of ours (not the shape we generate):
    /// answered like an unknown node, without a lookup.
    ForeignNode(IqHeader),
    /// disco#info get.
    DiscoInfo(IqHeader),
    /// disco#items get.
    DiscoItems(IqHeader),
    /// XEP-0199 ping.
    Ping(IqHeader),
    /// Any other get/set: answered `service-unavailable`.
    Unsupported(IqHeader),
    /// An IQ result or error addressed to us (the answer to a ping or a PEP request).
    Response {
        /// Its id.
        id: String,
        /// The error condition, if it was an error (`conflict`, `item-not-found`, …).
        error: Option<String>,
    },
    /// A pubsub event message (client mode: a push published to one of our PEP nodes).
    Event {
        /// `from` of the message: must be our own bare JID.
        from: String,
        /// The node.
        node: Node,
        /// The item id (servers may deliver an event twice).
        item_id: Option<String>,
        /// `publisher` of the item: the user's server, where the server names it.
        publisher: Option<String>,
        /// The summary.
        summary: Summary,
    },
    /// Messages, presences, IQs without an id, anything else: ignored.
    Ignored,
}

/// Classifies a stanza read from a stream whose default namespace is `stream_ns`.
pub fn classify(stanza: &Element, stream_ns: &str) -> Inbound {
    if stanza.is("message", stream_ns) {
        return event_of(stanza).unwrap_or(Inbound::Ignored);
    }
    if !stanza.is("iq", stream_ns) {
        return Inbound::Ignored;
    }
    let Some(id) = stanza.attr("id").filter(|id| !id.is_empty()) else {
        return Inbound::Ignored; // an IQ without id cannot be answered
    };
    let header = IqHeader {
        id: id.to_owned(),
        from: stanza.attr("from").unwrap_or("").to_owned(),
        to: stanza.attr("to").unwrap_or("").to_owned(),
    };
    let payload = stanza.children().next();
    match (stanza.attr("type").unwrap_or(""), payload) {
        ("result", _) => Inbound::Response {
            id: header.id,
            error: None,
        },
        ("error", _) => Inbound::Response {
            id: header.id,
            error: Some(error_condition(stanza)),
        },
        ("set", Some(p)) if p.is("pubsub", NS_PUBSUB) => match parse_publish(p) {
            Ok(Some(publish)) => Inbound::Publish(header, publish),
            Ok(None) => Inbound::ForeignNode(header),
            Err(why) => Inbound::BadPublish(header, why),
        },
        ("get", Some(p)) if p.is("query", NS_DISCO_INFO) => Inbound::DiscoInfo(header),
        ("get", Some(p)) if p.is("query", NS_DISCO_ITEMS) => Inbound::DiscoItems(header),
        ("get", Some(p)) if p.is("ping", NS_PING) => Inbound::Ping(header),
        ("get" | "set", _) => Inbound::Unsupported(header),
        _ => Inbound::Ignored,
    }
}

/// The publish, `None` if its node cannot be ours, or why it is malformed.
fn parse_publish(pubsub: &Element) -> Result<Option<Publish>, &'static str> {
    let publish = pubsub
        .get_child("publish", NS_PUBSUB)
        .ok_or("no <publish/> in <pubsub/>")?;
    let node = publish
        .attr("node")
        .filter(|n| !n.is_empty())
        .ok_or("<publish/> has no node")?;
    let Ok(node) = Node::parse(node) else {
        return Ok(None);
    };
    let item = publish.get_child("item", NS_PUBSUB);
    let notification = item.and_then(|i| i.get_child("notification", NS_PUSH));
    let summary = notification
        .and_then(|n| n.get_child("x", NS_DATA))
        .map(summary_of)
        .unwrap_or_default();
    let mut secret = None;
    if let Some(form) = pubsub
        .get_child("publish-options", NS_PUBSUB)
        .and_then(|o| o.get_child("x", NS_DATA))
    {
        for f in form.children().filter(|f| f.is("field", NS_DATA)) {
            take_secret(&mut secret, f.attr("var"), first_value(f));
        }
    }
    Ok(Some(Publish {
        node,
        secret,
        summary,
    }))
}

/// The text of a form field's first `value`, if it has one.
fn first_value(field: &Element) -> Option<String> {
    field.get_child("value", NS_DATA).map(Element::text)
}

/// The `secret` publish-option is the first `secret` field's value: takes `value` if
/// the field is one and none was found before.
pub(super) fn take_secret(secret: &mut Option<String>, var: Option<&str>, value: Option<String>) {
    if secret.is_none() && var == Some("secret") {
        *secret = value;
    }
}

/// Reads the summary form in one pass over its fields (this runs for every push).
pub(super) fn summary_of(form: &Element) -> Summary {
    let mut summary = Summary::default();
    for f in form.children().filter(|f| f.is("field", NS_DATA)) {
        apply_summary_field(&mut summary, f.attr("var"), first_value(f));
    }
    summary
}

/// What one summary field (`var`, the text of its first `value`) sets; a later field
/// with the same `var` wins. Counts that are missing or not numbers are 0, empty texts
/// none.
pub(super) fn apply_summary_field(summary: &mut Summary, var: Option<&str>, value: Option<String>) {
    let count = |v: Option<String>| v.and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(0);
    let text = |v: Option<String>| v.filter(|v| !v.is_empty());
    match var {
        Some("message-count") => summary.message_count = count(value),
        Some("pending-subscription-count") => summary.pending_subscription_count = count(value),
        Some("last-message-sender") => summary.last_message_sender = text(value),
        Some("last-message-body") => summary.last_message_body = text(value),
        _ => {}
    }
}

/// A pubsub event message, read with xmpp-parsers' `pubsub::event` (client mode: a push
/// published to one of our PEP nodes). Anything but published items is `None`.
pub fn event_of(message: &Element) -> Option<Inbound> {
    let event = message.get_child("event", ns::PUBSUB_EVENT)?.clone();
    let event::Payload::Items {
        node, published, ..
    } = Event::try_from(event).ok()?.payload
    else {
        return None;
    };
    let item = published.into_iter().next()?;
    // Events for nodes that cannot be ours (other PEP data of the push account) are
    // none of our business.
    let node = Node::parse(&node.0).ok()?;
    let summary = item
        .payload
        .as_ref()
        .filter(|p| p.is("notification", NS_PUSH))
        .and_then(|n| n.get_child("x", NS_DATA))
        .map(summary_of)
        .unwrap_or_default();
    Some(Inbound::Event {
        from: message.attr("from").unwrap_or("").to_owned(),
        node,
        item_id: item.id.map(|i| i.0),
        publisher: item.publisher.map(|j| j.to_string()),
        summary,
    })
}

/// The defined condition of an error, by its name (`conflict`, `not-authorized`, …):
/// of a stanza (an `<iq type='error'>` or its `<error/>`, in either stream namespace),
/// of a stream error, or of a SASL `<failure/>`. The first child in a condition
/// namespace that xmpp-parsers' typed condition enum for that namespace accepts wins,
/// so `<text/>` and application-specific children are skipped wherever they stand;
/// none is `undefined-condition`.
pub fn error_condition(e: &Element) -> String {
    let error = if matches!(e.name(), "error" | "failure") {
        Some(e)
    } else {
        e.children().find(|c| c.name() == "error")
    };
    error
        .into_iter()
        .flat_map(Element::children)
        .find(|c| {
            let c = (*c).clone();
            match c.ns().as_str() {
                ns::XMPP_STANZAS => stanza_error::DefinedCondition::try_from(c).is_ok(),
                ns::XMPP_STREAMS => stream_error::DefinedCondition::try_from(c).is_ok(),
                ns::SASL => xsasl::DefinedCondition::try_from(c).is_ok(),
                _ => false,
            }
        })
        .map_or_else(|| "undefined-condition".to_owned(), |c| c.name().to_owned())
}

/// Recently seen event item ids, to drop a second delivery of the same event.
pub struct RecentItems {
    order: VecDeque<String>,
    set: HashSet<String>,
    cap: usize,
}

impl RecentItems {
    /// Remembers up to `cap` items.
    pub fn new(cap: usize) -> Self {
        Self {
            order: VecDeque::new(),
            set: HashSet::new(),
            cap,
        }
    }

    /// False if (node, item) was seen recently.
    pub fn insert(&mut self, node: &str, item: &str) -> bool {
        let key = format!("{node}\u{0}{item}");
        if !self.set.insert(key.clone()) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > self.cap
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: &str = "jabber:component:accept";

    fn parse(xml: &str) -> Inbound {
        let wrapped = format!("<wrap xmlns='{NS}'>{xml}</wrap>");
        let root: Element = wrapped.parse().unwrap();
        classify(root.children().next().unwrap(), NS)
    }

    /// Verbatim from Prosody 0.12.3 (xep0357-wns.md part C).
    const PROSODY: &str = "<iq id='2858b90f' to='push.localhost' from='localhost' type='set'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='node-3c3799e23e1b'><item><notification xmlns='urn:xmpp:push:0'><x xmlns='jabber:x:data' type='form'><field var='FORM_TYPE' type='hidden'><value>urn:xmpp:push:summary</value></field><field var='message-count' type='text-single'><value>1</value></field><field var='pending-subscription-count' type='text-single'/><field var='last-message-sender' type='jid-single'/><field var='last-message-body' type='text-single'><value>New Message!</value></field></x></notification></item></publish><publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field><field var='secret'><value>secret-6b347accefdf</value></field></x></publish-options></pubsub></iq>";
    /// Verbatim from ejabberd 23.01.
    const EJABBERD: &str = "<iq to='push.localhost' from='localhost' type='set' id='rr-1795635726504-5117491995268745708-gT7rdqkOm/sJ23BsTHE/pAv2eGo=-34317716'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='node-7a60034e6b10'><item><notification xmlns='urn:xmpp:push:0'><x type='submit' xmlns='jabber:x:data'><field var='FORM_TYPE' type='hidden'><value>urn:xmpp:push:summary</value></field><field var='last-message-body' type='text-single' label='The body text of the last received message'><value>New message</value></field></x></notification></item></publish><publish-options><x type='submit' xmlns='jabber:x:data'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field><field var='secret'><value>secret-5a8fe426d47c</value></field></x></publish-options></pubsub></iq>";

    #[test]
    fn prosody_and_ejabberd_publishes_parse() {
        let Inbound::Publish(h, p) = parse(PROSODY) else {
            panic!()
        };
        assert_eq!(
            (h.id.as_str(), h.from.as_str(), h.to.as_str()),
            ("2858b90f", "localhost", "push.localhost")
        );
        assert_eq!(p.node.as_str(), "node-3c3799e23e1b");
        assert_eq!(p.secret.as_deref(), Some("secret-6b347accefdf"));
        assert_eq!(p.summary.message_count, 1);
        assert_eq!(p.summary.pending_subscription_count, 0);
        assert_eq!(p.summary.last_message_sender, None);
        assert_eq!(p.summary.last_message_body.as_deref(), Some("New Message!"));
        let Inbound::Publish(_, p) = parse(EJABBERD) else {
            panic!()
        };
        assert_eq!(p.secret.as_deref(), Some("secret-5a8fe426d47c"));
        assert_eq!(p.summary.message_count, 0);
    }

    #[test]
    fn lenient_shapes() {
        // No form, no publish-options, extra children.
        let Inbound::Publish(_, p) = parse(
            "<iq id='1' type='set'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='n'><item><notification xmlns='urn:xmpp:push:0'><extra xmlns='x:y'/></notification></item></publish></pubsub></iq>",
        ) else {
            panic!()
        };
        assert_eq!(
            (p.node.as_str(), p.secret, p.summary),
            ("n", None, Summary::default())
        );
        // No item at all still names the node.
        assert!(matches!(
            parse(
                "<iq id='1' type='set'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='n'/></pubsub></iq>"
            ),
            Inbound::Publish(..)
        ));
        // Garbage count.
        let Inbound::Publish(_, p) = parse(
            "<iq id='1' type='set'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='n'><item><notification xmlns='urn:xmpp:push:0'><x xmlns='jabber:x:data'><field var='message-count'><value>lots</value></field></x></notification></item></publish></pubsub></iq>",
        ) else {
            panic!()
        };
        assert_eq!(p.summary.message_count, 0);
    }

    #[test]
    fn other_stanzas() {
        assert!(matches!(
            parse(
                "<iq id='1' type='set'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish/></pubsub></iq>"
            ),
            Inbound::BadPublish(..)
        ));
        assert!(matches!(
            parse(
                "<iq id='1' type='get' from='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
            ),
            Inbound::DiscoInfo(_)
        ));
        assert!(matches!(
            parse(
                "<iq id='1' type='get'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>"
            ),
            Inbound::DiscoItems(_)
        ));
        assert!(matches!(
            parse("<iq id='1' type='get'><ping xmlns='urn:xmpp:ping'/></iq>"),
            Inbound::Ping(_)
        ));
        assert!(matches!(
            parse("<iq id='1' type='get'><vCard xmlns='vcard-temp'/></iq>"),
            Inbound::Unsupported(_)
        ));
        assert!(matches!(
            parse("<iq id='1' type='set'/>"),
            Inbound::Unsupported(_)
        ));
        assert_eq!(
            parse("<iq id='p1' type='result'/>"),
            Inbound::Response {
                id: "p1".into(),
                error: None
            }
        );
        assert_eq!(
            parse(
                "<iq id='p2' type='error'><error type='cancel'><conflict xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
            ),
            Inbound::Response {
                id: "p2".into(),
                error: Some("conflict".into())
            }
        );
        assert_eq!(
            parse("<iq type='get'><ping xmlns='urn:xmpp:ping'/></iq>"),
            Inbound::Ignored
        );
        assert_eq!(
            parse("<message><body>hi</body></message>"),
            Inbound::Ignored
        );
        assert_eq!(parse("<presence/>"), Inbound::Ignored);
    }

    /// Verbatim from Prosody (NOTES.md, mode B).
    #[test]
    fn pep_events_parse() {
        let xml = "<message to='push@localhost' from='push@localhost' id='Zl' type='headline'><event xmlns='http://jabber.org/protocol/pubsub#event'><items node='node-7e3da6fdad3e'><item id='0769' publisher='localhost'><notification xmlns='urn:xmpp:push:0'><x xmlns='jabber:x:data' type='form'><field var='FORM_TYPE' type='hidden'><value>urn:xmpp:push:summary</value></field><field var='message-count' type='text-single'><value>1</value></field><field var='last-message-body' type='text-single'><value>New Message!</value></field></x></notification></item></items></event></message>";
        let Inbound::Event {
            from,
            node,
            item_id,
            publisher,
            summary,
        } = parse(xml)
        else {
            panic!()
        };
        assert_eq!(
            (from.as_str(), node.as_str()),
            ("push@localhost", "node-7e3da6fdad3e")
        );
        assert_eq!(
            (item_id.as_deref(), publisher.as_deref()),
            (Some("0769"), Some("localhost"))
        );
        assert_eq!(summary.message_count, 1);
        assert_eq!(
            parse("<message from='x'><body>no event</body></message>"),
            Inbound::Ignored
        );
    }

    #[test]
    fn duplicate_event_items_are_recognised_within_the_window() {
        let mut r = RecentItems::new(2);
        assert!(r.insert("n", "1"));
        assert!(!r.insert("n", "1"), "ejabberd delivered one event twice");
        assert!(
            r.insert("m", "1"),
            "same item id on another node is another event"
        );
        assert!(r.insert("n", "2"));
        assert!(r.insert("n", "1"), "forgotten after the window");
    }
}
