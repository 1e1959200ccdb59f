//! The quick path of the stanza reader: a stanza that lies whole in the read buffer, in
//! the plain shape XMPP servers write (Prosody's and ejabberd's publishes among them), is
//! turned into its tree here in one pass, without rxml's token and event objects. Half
//! of the XMPP thread's CPU per publish was rxml and minidom's tree builder (19.7 µs for
//! a 911-byte publish, `cargo bench --bench stanza`).
//!
//! It is a subset, never a second opinion: anything outside the shape below makes it
//! decline ([`None`]), and the full parser ([`super::reader`]) reads the same bytes as
//! before, errors and caps included. The shape:
//! - element and attribute names of ASCII letters, digits, `_`, `-` and `.` (no
//!   prefixes: `xmlns:p`, `p:name` and `xml:lang` decline);
//! - `xmlns='…'` (non-empty, not one of XML's own) for the default namespace, unique
//!   attributes, quoted with
//!   `'` or `"`, values without `<`, tabs or line breaks;
//! - character data and attribute values in UTF-8 with the five predefined entities;
//!   character references in character data only, and only to XML characters; no
//!   carriage returns (XML folds them into line feeds: rxml does that);
//! - no comments, processing instructions, CDATA sections or DOCTYPE, no `]]>`, no
//!   control characters, no U+FFFE/U+FFFF; nesting up to the reader's depth cap.
//!
//! A publish IQ, the stanza a busy stream is made of, need not become a tree at all:
//! [`publish`] reads the same shape in the same pass straight into the fields that
//! `classify` takes from the tree (header, node, secret, summary). Reading a 911-byte
//! publish that way takes 4.8 µs instead of 11.4 µs for tree, classification and drop,
//! and 16 µs instead of 37 µs with cold caches (`cargo bench --bench stanza -- --fields
//! 1`). One grammar serves both: the walk hands each element to a [`Sink`].
//!
//! A fuzz target (`stanza_reader`) checks that whatever this path accepts, rxml and
//! minidom accept as the same tree, and that a publish read into its fields is what
//! `classify` reads from its tree.
//!
//! Threads: `xmpp-io`. Pure.

use std::borrow::Cow;

use minidom::Element;
use minidom::rxml::NcName;

#[cfg(doc)]
use super::publish::{Inbound, classify};
use super::publish::{IqHeader, NS_DATA, NS_PUBSUB, NS_PUSH, apply_summary_field, take_secret};
use crate::push::Publish;
use crate::types::{Node, Summary};

/// Reads one stanza from the start of `buf` (after whitespace), whose default namespace
/// is `ns` (the stream's). Returns the tree and the bytes used, or `None` to leave the
/// bytes to the full parser (not the quick shape, or not whole in `buf`).
pub fn stanza(buf: &[u8], ns: &str, max_depth: usize) -> Option<(Element, usize)> {
    let mut p = Cursor { b: buf, i: 0 };
    p.skip_ws();
    if p.peek()? != b'<' {
        return None;
    }
    let el = p.element(&mut Tree, None, ns, 1, max_depth)?;
    Some((el, p.i))
}

/// Reads one stanza like [`stanza`], but only if it is a publish IQ of a stream whose
/// namespace is `stream_ns`, and straight into what [`classify`] would make of its tree
/// (an [`Inbound::Publish`]), with no tree in between: on a busy stream nearly every
/// stanza is one, and building and walking its twenty-odd elements was most of the
/// XMPP thread's work per push. `None` for anything else, and for publishes that
/// `classify` answers otherwise (no node, a node that cannot be ours): those go the
/// tree's way. The fuzz target `stanza_reader` checks that both ways agree.
pub fn publish(
    buf: &[u8],
    ns: &str,
    stream_ns: &str,
    max_depth: usize,
) -> Option<(IqHeader, Publish, usize)> {
    let mut p = Cursor { b: buf, i: 0 };
    p.skip_ws();
    if p.peek()? != b'<' {
        return None;
    }
    let mut fields = Fields {
        stream_ns,
        header: None,
        node: None,
        secret: None,
        summary: Summary::default(),
    };
    p.element(&mut fields, None, ns, 1, max_depth)?;
    let node = Node::parse(&fields.node?).ok()?;
    let publish = Publish {
        node,
        secret: fields.secret,
        summary: fields.summary,
    };
    Some((fields.header?, publish, p.i))
}

/// What one pass makes of the elements it reads: [`Tree`] builds them, [`Fields`] keeps
/// only a publish's fields. The grammar, and so what is declined, is the same for both.
trait Sink<'a> {
    /// An element whose children are being read.
    type Open;
    /// An element's start tag was read: its name, namespace, whether it declared that
    /// namespace, and its other attributes. `None` declines the whole stanza.
    fn open(
        &mut self,
        parent: Option<&mut Self::Open>,
        name: &'a str,
        ns: &str,
        declared: bool,
        attrs: Vec<(&'a str, Cow<'a, str>)>,
    ) -> Option<Self::Open>;
    /// Character data directly inside `el`.
    fn text(&mut self, el: &mut Self::Open, text: Cow<'a, str>);
    /// `child` of `parent` is complete.
    fn close(&mut self, parent: &mut Self::Open, child: Self::Open);
}

/// Builds the tree, as rxml and minidom's tree builder would.
struct Tree;

impl<'a> Sink<'a> for Tree {
    type Open = Element;

    fn open(
        &mut self,
        _parent: Option<&mut Element>,
        name: &'a str,
        ns: &str,
        declared: bool,
        attrs: Vec<(&'a str, Cow<'a, str>)>,
    ) -> Option<Element> {
        let mut builder = Element::builder(name, ns);
        if declared {
            builder = builder.prefix(None, ns).ok()?;
        }
        for (attr, value) in attrs {
            builder = builder.attr(NcName::try_from(attr).ok()?, value.into_owned());
        }
        Some(builder.build())
    }

    fn text(&mut self, el: &mut Element, text: Cow<'a, str>) {
        el.append_text(text.into_owned());
    }

    fn close(&mut self, parent: &mut Element, child: Element) {
        parent.append_child(child);
    }
}

/// A publish's fields, read the way [`classify`] reads them from the tree: the first
/// child element of the IQ, the first `publish` and `publish-options` of the pubsub
/// element, the first `item`, `notification` and form under them, and every form
/// field in order (see [`apply_summary_field`] and [`take_secret`]).
struct Fields<'a, 's> {
    stream_ns: &'s str,
    header: Option<IqHeader>,
    node: Option<Cow<'a, str>>,
    secret: Option<String>,
    summary: Summary,
}

/// Where an open element stands in a publish; the flags say which first children
/// were seen.
enum Role<'a> {
    Iq {
        payload: bool,
    },
    Pubsub {
        publish: bool,
        options: bool,
    },
    Publish {
        item: bool,
    },
    Item {
        notification: bool,
    },
    Notification {
        form: bool,
    },
    Options {
        form: bool,
    },
    Form {
        secret: bool,
    },
    Field {
        secret: bool,
        var: Option<Cow<'a, str>>,
        value: Option<String>,
        seen: bool,
    },
    Value(String),
    Other,
}

/// Whether this child is the first `wanted` one its parent has (`seen` remembers).
fn first(seen: &mut bool, wanted: bool) -> bool {
    wanted && !std::mem::replace(seen, true)
}

/// `role` for the first wanted child (see [`first`]); any other child is of no interest.
fn first_child<'a>(seen: &mut bool, wanted: bool, role: Role<'a>) -> Role<'a> {
    if first(seen, wanted) {
        role
    } else {
        Role::Other
    }
}

impl<'a> Sink<'a> for Fields<'a, '_> {
    type Open = Role<'a>;

    fn open(
        &mut self,
        parent: Option<&mut Role<'a>>,
        name: &'a str,
        ns: &str,
        _declared: bool,
        attrs: Vec<(&'a str, Cow<'a, str>)>,
    ) -> Option<Role<'a>> {
        let Some(parent) = parent else {
            let attr = |name: &str| attrs.iter().find(|(a, _)| *a == name).map(|(_, v)| v);
            let id = attr("id").filter(|id| !id.is_empty())?;
            if name != "iq" || ns != self.stream_ns || attr("type")?.as_ref() != "set" {
                return None;
            }
            self.header = Some(IqHeader {
                id: id.to_string(),
                from: attr("from").map_or_else(String::new, |v| v.to_string()),
                to: attr("to").map_or_else(String::new, |v| v.to_string()),
            });
            return Some(Role::Iq { payload: false });
        };
        let role = match parent {
            Role::Iq { payload } => {
                // The payload is the first child: anything but pubsub is not a publish.
                if !std::mem::replace(payload, true) {
                    if name != "pubsub" || ns != NS_PUBSUB {
                        return None;
                    }
                    Role::Pubsub {
                        publish: false,
                        options: false,
                    }
                } else {
                    Role::Other
                }
            }
            Role::Pubsub { publish, options } => {
                if first(publish, name == "publish" && ns == NS_PUBSUB) {
                    let node = attrs.into_iter().find(|(a, _)| *a == "node");
                    self.node = Some(node?.1).filter(|n| !n.is_empty());
                    self.node.as_ref()?;
                    Role::Publish { item: false }
                } else {
                    let wanted = name == "publish-options" && ns == NS_PUBSUB;
                    first_child(options, wanted, Role::Options { form: false })
                }
            }
            Role::Publish { item } => first_child(
                item,
                name == "item" && ns == NS_PUBSUB,
                Role::Item {
                    notification: false,
                },
            ),
            Role::Item { notification } => first_child(
                notification,
                name == "notification" && ns == NS_PUSH,
                Role::Notification { form: false },
            ),
            Role::Notification { form } => first_child(
                form,
                name == "x" && ns == NS_DATA,
                Role::Form { secret: false },
            ),
            Role::Options { form } => first_child(
                form,
                name == "x" && ns == NS_DATA,
                Role::Form { secret: true },
            ),
            Role::Form { secret } if name == "field" && ns == NS_DATA => Role::Field {
                secret: *secret,
                var: attrs.into_iter().find(|(a, _)| *a == "var").map(|(_, v)| v),
                value: None,
                seen: false,
            },
            Role::Field { seen, .. } => first_child(
                seen,
                name == "value" && ns == NS_DATA,
                Role::Value(String::new()),
            ),
            _ => Role::Other,
        };
        Some(role)
    }

    fn text(&mut self, el: &mut Role<'a>, text: Cow<'a, str>) {
        if let Role::Value(value) = el {
            value.push_str(&text);
        }
    }

    fn close(&mut self, parent: &mut Role<'a>, child: Role<'a>) {
        match (parent, child) {
            (Role::Field { value, .. }, Role::Value(text)) => *value = Some(text),
            (
                _,
                Role::Field {
                    secret: false,
                    var,
                    value,
                    ..
                },
            ) => apply_summary_field(&mut self.summary, var.as_deref(), value),
            (
                _,
                Role::Field {
                    secret: true,
                    var,
                    value,
                    ..
                },
            ) => take_secret(&mut self.secret, var.as_deref(), value),
            _ => {}
        }
    }
}

/// Namespaces XML reserves: never a default namespace.
const RESERVED: [&str; 2] = [
    "http://www.w3.org/XML/1998/namespace",
    "http://www.w3.org/2000/xmlns/",
];

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// Skips XML whitespace; whether there was any.
    fn skip_ws(&mut self) -> bool {
        let start = self.i;
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
        self.i > start
    }

    /// An unprefixed ASCII name.
    fn name(&mut self) -> Option<&'a str> {
        let start = self.i;
        match self.peek()? {
            b'A'..=b'Z' | b'a'..=b'z' | b'_' => self.i += 1,
            _ => return None,
        }
        while let Some(b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.') = self.peek() {
            self.i += 1;
        }
        std::str::from_utf8(&self.b[start..self.i]).ok()
    }

    /// One element, its start tag at the cursor, handed to `sink`; `parent_ns` is the
    /// inherited default namespace.
    fn element<S: Sink<'a>>(
        &mut self,
        sink: &mut S,
        parent: Option<&mut S::Open>,
        parent_ns: &str,
        depth: usize,
        max_depth: usize,
    ) -> Option<S::Open> {
        if depth > max_depth {
            return None;
        }
        self.eat(b'<')?;
        let name = self.name()?;
        let mut declared: Option<Cow<'a, str>> = None;
        let mut attrs: Vec<(&'a str, Cow<'a, str>)> = Vec::new();
        let empty = loop {
            let spaced = self.skip_ws();
            match self.peek()? {
                b'>' => {
                    self.i += 1;
                    break false;
                }
                b'/' => {
                    self.i += 1;
                    self.eat(b'>')?;
                    break true;
                }
                _ if !spaced => return None,
                _ => {
                    let attr = self.name()?;
                    self.skip_ws();
                    self.eat(b'=')?;
                    self.skip_ws();
                    let value = self.attr_value()?;
                    if attr == "xmlns" {
                        // The xml and xmlns namespaces must not be bound to a prefix
                        // of their own, nor be the default namespace.
                        if declared.is_some()
                            || value.is_empty()
                            || RESERVED.contains(&value.as_ref())
                        {
                            return None;
                        }
                        declared = Some(value);
                    } else {
                        if attrs.iter().any(|(a, _)| *a == attr) {
                            return None;
                        }
                        attrs.push((attr, value));
                    }
                }
            }
        };
        let ns = declared.as_deref().unwrap_or(parent_ns);
        let mut el = sink.open(parent, name, ns, declared.is_some(), attrs)?;
        if empty {
            return Some(el);
        }
        loop {
            if self.peek()? != b'<' {
                let text = self.text()?;
                sink.text(&mut el, text);
                continue;
            }
            match *self.b.get(self.i + 1)? {
                b'/' => {
                    self.i += 2;
                    if self.name()? != name {
                        return None;
                    }
                    self.skip_ws();
                    self.eat(b'>')?;
                    return Some(el);
                }
                b'!' | b'?' => return None,
                _ => {
                    let child = self.element(sink, Some(&mut el), ns, depth + 1, max_depth)?;
                    sink.close(&mut el, child);
                }
            }
        }
    }

    /// A quoted attribute value, entities decoded.
    fn attr_value(&mut self) -> Option<Cow<'a, str>> {
        let quote = self.peek()?;
        if quote != b'\'' && quote != b'"' {
            return None;
        }
        self.i += 1;
        let start = self.i;
        let end = start + self.b[start..].iter().position(|&c| c == quote)?;
        let raw = &self.b[start..end];
        if raw
            .iter()
            .any(|&c| c == b'<' || c == b'\t' || c == b'\n' || c == b'\r')
        {
            return None;
        }
        self.i = end + 1;
        decode(raw, false)
    }

    /// Character data up to the next `<` (which must come: the element is whole).
    fn text(&mut self) -> Option<Cow<'a, str>> {
        let start = self.i;
        let end = start + self.b[start..].iter().position(|&c| c == b'<')?;
        self.i = end;
        let raw = &self.b[start..end];
        // XML turns CR LF and lone CRs into LFs: left to rxml, as is "]]>".
        if raw.contains(&b'\r') || raw.windows(3).any(|w| w == b"]]>") {
            return None;
        }
        decode(raw, true)
    }
}

/// UTF-8 with the predefined entities (and, in character data, character references)
/// decoded; `None` for anything else or for a character XML does not allow.
fn decode(raw: &[u8], char_refs: bool) -> Option<Cow<'_, str>> {
    let s = std::str::from_utf8(raw).ok()?;
    if s.chars().any(|c| !allowed(c)) {
        return None;
    }
    if !s.contains('&') {
        return Some(Cow::Borrowed(s));
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let semi = after.find(';')?;
        let entity = &after[..semi];
        let c = match entity {
            "lt" => '<',
            "gt" => '>',
            "amp" => '&',
            "quot" => '"',
            "apos" => '\'',
            _ if char_refs && entity.starts_with('#') => {
                let n = match entity.strip_prefix("#x") {
                    Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                    None => entity[1..].parse::<u32>().ok()?,
                };
                let digits = entity.trim_start_matches("#x").trim_start_matches('#');
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return None;
                }
                char::from_u32(n).filter(|&c| allowed(c))?
            }
            _ => return None,
        };
        out.push(c);
        rest = &after[semi + 1..];
    }
    out.push_str(rest);
    Some(Cow::Owned(out))
}

/// XML 1.0's `Char`.
fn allowed(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

#[cfg(test)]
mod tests {
    use super::super::publish::Inbound;
    use super::*;

    const NS: &str = "jabber:component:accept";

    /// The same bytes through rxml and minidom's tree builder, in a stream.
    fn full(xml: &str) -> Option<Element> {
        let stream = format!(
            "<stream:stream xmlns='{NS}' xmlns:stream='http://etherx.jabber.org/streams'>{xml}"
        );
        let mut r = super::super::reader::StanzaReader::new(std::io::Cursor::new(stream));
        r.disable_quick_path();
        match r.next_event() {
            Ok(super::super::reader::StreamEvent::Open(_)) => {}
            _ => return None,
        }
        match r.next_event() {
            Ok(super::super::reader::StreamEvent::Stanza(e)) => Some(e),
            _ => None,
        }
    }

    fn quick(xml: &str) -> Option<Element> {
        stanza(xml.as_bytes(), NS, 32).map(|(e, used)| {
            assert_eq!(used, xml.trim_end().len(), "{xml}");
            e
        })
    }

    #[test]
    fn what_the_quick_path_reads_is_what_rxml_reads() {
        for xml in [
            "<iq id='1' type='set' to='push.localhost' from='localhost'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='abc'><item><notification xmlns='urn:xmpp:push:0'><x xmlns='jabber:x:data' type='form'><field var='FORM_TYPE' type='hidden'><value>urn:xmpp:push:summary</value></field><field var='last-message-body'><value>Hi &amp; &lt;bye&gt; &#128512; &#x41;</value></field></x></notification></item></publish></pubsub></iq>",
            "  \n<iq id=\"2\" type=\"get\"><ping xmlns=\"urn:xmpp:ping\"/></iq>",
            "<message from='a@b' to='c@d'><body>line one\nline two\n\ttabbed é ü 漢字</body></message>",
            "<iq id='3' type='result'/>",
            "<iq id='4' type='error'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>it&apos;s &quot;gone&quot;</text></error></iq>",
            "<presence/>",
            "<a x='1'  y = '2' ><b>t</b> mixed <c/>tail</a >",
        ] {
            let q = quick(xml).unwrap_or_else(|| panic!("declined: {xml}"));
            let f = full(xml).unwrap_or_else(|| panic!("rxml refused: {xml}"));
            assert_eq!(q, f, "{xml}");
            assert_eq!(String::from(&q), String::from(&f), "{xml}");
        }
    }

    #[test]
    fn anything_outside_the_shape_or_not_whole_is_left_to_rxml() {
        for xml in [
            // Not whole.
            "<iq id='1'><ping xmlns='urn:xmpp:ping'/>",
            "<iq id='1'",
            "<iq id='1'>text",
            "",
            "   ",
            // Prefixes, comments, PIs, CDATA, DOCTYPE.
            "<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>",
            "<iq xmlns:p='urn:x' id='1'/>",
            "<iq xml:lang='en' id='1'/>",
            "<iq id='1'><!-- c --></iq>",
            "<iq id='1'><?pi x?></iq>",
            "<iq id='1'><![CDATA[x]]></iq>",
            "<!DOCTYPE iq><iq/>",
            "</stream:stream>",
            // Not well-formed, or not allowed in XML.
            "<iq id='1'></message>",
            "<iq id='1' id='2'/>",
            "<iq id='1'type='get'/>",
            "<iq id=1/>",
            "<iq id='<'/>",
            "<iq id='a\nb'/>",
            "<iq xmlns=''/>",
            "<iq xmlns='http://www.w3.org/XML/1998/namespace'/>",
            "<iq xmlns='http://www.w3.org/2000/xmlns/'/>",
            "<iq>&nbsp;</iq>",
            "<iq>&#0;</iq>",
            "<iq>&#xD800;</iq>",
            "<iq>&#x;</iq>",
            "<iq>&#-5;</iq>",
            "<iq>&amp</iq>",
            "<iq>]]></iq>",
            "<iq>a\r\nb</iq>",
            "<iq>\u{1}</iq>",
            "<iq>\u{FFFE}</iq>",
            "<iq id='&#65;'/>",
            "text<iq/>",
            "<1iq/>",
            "<iq id='1' />x",
        ] {
            let q = stanza(xml.as_bytes(), NS, 32);
            // The last one is whole: its trailing text is the next thing in the stream.
            if xml == "<iq id='1' />x" {
                assert_eq!(q.map(|(_, used)| used), Some(xml.len() - 1));
                continue;
            }
            assert!(q.is_none(), "accepted: {xml:?}");
        }
        // Invalid UTF-8.
        assert!(stanza(b"<iq>\xff</iq>", NS, 32).is_none());
    }

    /// Prosody 0.12's publish, verbatim from xep0357-wns.md.
    const PROSODY: &str = "<iq id='2858b90f13931609ec968e081b638bb21468fecbc21ef89a801d1365c01ee910' to='push.localhost' from='localhost' type='set'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='node-3c3799e23e1b'><item><notification xmlns='urn:xmpp:push:0'><x xmlns='jabber:x:data' type='form'><field var='FORM_TYPE' type='hidden'><value>urn:xmpp:push:summary</value></field><field var='message-count' type='text-single'><value>1</value></field><field var='pending-subscription-count' type='text-single'/><field var='last-message-sender' type='jid-single'/><field var='last-message-body' type='text-single'><value>New Message!</value></field></x></notification></item></publish><publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field><field var='secret'><value>secret-6b347accefdf</value></field></x></publish-options></pubsub></iq>";
    /// ejabberd 23.01's publish, verbatim from xep0357-wns.md.
    const EJABBERD: &str = "<iq to='push.localhost' from='localhost' type='set' id='rr-1795635726504-5117491995268745708-gT7rdqkOm/sJ23BsTHE/pAv2eGo=-34317716'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='node-7a60034e6b10'><item><notification xmlns='urn:xmpp:push:0'><x type='submit' xmlns='jabber:x:data'><field var='FORM_TYPE' type='hidden'><value>urn:xmpp:push:summary</value></field><field var='last-message-body' type='text-single' label='The body text of the last received message'><value>New message</value></field></x></notification></item></publish><publish-options><x type='submit' xmlns='jabber:x:data'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field><field var='secret'><value>secret-5a8fe426d47c</value></field></x></publish-options></pubsub></iq>";

    /// A publish with `inner` inside `<pubsub/>`.
    fn pubsub(inner: &str) -> String {
        format!(
            "<iq type='set' id='i1' from='localhost' to='push.localhost'><pubsub xmlns='http://jabber.org/protocol/pubsub'>{inner}</pubsub></iq>"
        )
    }

    /// `fields` as the summary form, and `options` as the publish-options form.
    fn with_forms(fields: &str, options: &str) -> String {
        pubsub(&format!(
            "<publish node='n1'><item><notification xmlns='urn:xmpp:push:0'><x xmlns='jabber:x:data'>{fields}</x></notification></item></publish><publish-options><x xmlns='jabber:x:data' type='submit'>{options}</x></publish-options>"
        ))
    }

    fn classified(xml: &str) -> Inbound {
        let tree = full(xml).unwrap_or_else(|| panic!("rxml refused: {xml}"));
        super::super::publish::classify(&tree, NS)
    }

    #[test]
    fn publishes_read_into_fields_are_what_classify_reads_from_the_tree() {
        let field = |var: &str, value: &str| format!("<field var='{var}'>{value}</field>");
        let secret = field("secret", "<value>s1</value>");
        let cases = [
            PROSODY.to_owned(),
            EJABBERD.to_owned(),
            // Pretty-printed, attributes in another order, double quotes.
            "<iq type=\"set\" id=\"i2\" to=\"push.localhost\">\n  <pubsub xmlns=\"http://jabber.org/protocol/pubsub\">\n    <publish node=\"n2\">\n      <item id=\"x\"/>\n    </publish>\n  </pubsub>\n</iq>".to_owned(),
            // No item, no options, no summary.
            pubsub("<publish node='n3'/>"),
            pubsub("<publish node='n3'><item><notification xmlns='urn:xmpp:push:0'/></item></publish>"),
            // Options first; unknown children before the ones that count; a second
            // publish and a second item are not read.
            pubsub(&format!(
                "<publish-options><x xmlns='jabber:x:data'>{secret}</x></publish-options><other/><publish node='n4'><unknown/><item><x xmlns='jabber:x:data'>{}</x><notification xmlns='urn:xmpp:push:0'><x xmlns='urn:other'>{}</x><x xmlns='jabber:x:data'>{}</x></notification></item><item><notification xmlns='urn:xmpp:push:0'><x xmlns='jabber:x:data'>{}</x></notification></item></publish><publish node='n5'/>",
                field("message-count", "<value>7</value>"),
                field("message-count", "<value>8</value>"),
                field("message-count", "<value>9</value>"),
                field("message-count", "<value>10</value>"),
            )),
            // Later fields win; a missing or bad count is 0; empty texts are none; the
            // first value counts; text around a child element is joined; entities.
            with_forms(
                &[
                    field("message-count", "<value>3</value>"),
                    field("message-count", "<value> 4 </value>"),
                    field("pending-subscription-count", "<value>2</value>"),
                    field("pending-subscription-count", ""),
                    field("last-message-sender", "<value>juliet@example.com</value>"),
                    field("last-message-sender", "<value></value>"),
                    field("last-message-body", "<value>a<b/>c &amp; &#x41;</value><value>second</value>"),
                    "<field><value>no var</value></field>".to_owned(),
                    "<field var='message-count' xmlns='urn:other'><value>99</value></field>".to_owned(),
                    field("message-count", "<value xmlns='urn:other'>98</value><value>5</value>"),
                ]
                .concat(),
                &secret,
            ),
            with_forms(&field("message-count", "<value>x</value>"), ""),
            // The first secret field with a value.
            with_forms(
                "",
                &[
                    field("secret", ""),
                    field("secret", "<value>first</value>"),
                    field("secret", "<value>second</value>"),
                ]
                .concat(),
            ),
            with_forms("", &field("secret", "<value></value>")),
            // The same, in a stream whose namespace a stanza repeats.
            format!(
                "<iq xmlns='{NS}' type='set' id='i3'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='n6'/></pubsub></iq>"
            ),
        ];
        for xml in &cases {
            let (header, publish, used) = super::publish(xml.as_bytes(), NS, NS, 32)
                .unwrap_or_else(|| panic!("declined: {xml}"));
            assert_eq!(used, xml.len(), "{xml}");
            assert_eq!(Inbound::Publish(header, publish), classified(xml), "{xml}");
        }
        // A few of the readings spelled out.
        let Some((_, p, _)) = super::publish(cases[6].as_bytes(), NS, NS, 32) else {
            panic!()
        };
        assert_eq!(p.summary.message_count, 5);
        assert_eq!(p.summary.pending_subscription_count, 0);
        assert_eq!(p.summary.last_message_sender, None);
        assert_eq!(p.summary.last_message_body.as_deref(), Some("ac & A"));
        assert_eq!(p.secret.as_deref(), Some("s1"));
        let Some((_, p, _)) = super::publish(cases[8].as_bytes(), NS, NS, 32) else {
            panic!()
        };
        assert_eq!(p.secret.as_deref(), Some("first"));
        let Some((h, p, _)) = super::publish(PROSODY.as_bytes(), NS, NS, 32) else {
            panic!()
        };
        assert_eq!(h.from, "localhost");
        assert_eq!(p.node.as_str(), "node-3c3799e23e1b");
        assert_eq!(p.secret.as_deref(), Some("secret-6b347accefdf"));
        assert_eq!(p.summary.message_count, 1);
        assert_eq!(p.summary.last_message_body.as_deref(), Some("New Message!"));
    }

    #[test]
    fn everything_but_a_plain_publish_is_left_to_the_tree() {
        let cases = [
            // Not publishes.
            "<iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>".to_owned(),
            "<iq type='get' id='1'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>".to_owned(),
            "<iq type='result' id='1'/>".to_owned(),
            "<message from='a@b'><body>x</body></message>".to_owned(),
            pubsub("<publish node='n1'/>").replace("type='set'", "type='get'"),
            pubsub("<publish node='n1'/>").replace("id='i1'", "id=''"),
            pubsub("<publish node='n1'/>").replace(" id='i1'", ""),
            pubsub("<publish node='n1'/>").replace("<iq ", "<iq xmlns='jabber:client' "),
            pubsub("<publish node='n1'/>").replace("<iq ", "<message ").replace("</iq>", "</message>"),
            // The first child is not pubsub.
            "<iq type='set' id='1'><other/><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='n1'/></pubsub></iq>".to_owned(),
            "<iq type='set' id='1'><pubsub xmlns='urn:other'><publish node='n1'/></pubsub></iq>".to_owned(),
            // Publishes classify answers otherwise: no publish, no node, not our node.
            pubsub(""),
            pubsub("<publish/>"),
            pubsub("<publish node=''/>"),
            pubsub("<publish node='a b'/>"),
            pubsub("<publish node='n1' xmlns='urn:other'/>"),
            // Outside the quick shape, or not whole.
            pubsub("<publish node='n1'/><!-- c -->"),
            pubsub("<publish node='n1'/>").replace("</iq>", ""),
        ];
        for xml in &cases {
            assert!(
                super::publish(xml.as_bytes(), NS, NS, 32).is_none(),
                "read: {xml}"
            );
            if let Some(tree) = full(xml) {
                let c = super::super::publish::classify(&tree, NS);
                assert!(
                    !matches!(c, Inbound::Publish(..)) || xml.contains("<!--"),
                    "{xml}: {c:?}"
                );
            }
        }
        // Another stream namespace than the session's: classify would ignore it.
        assert!(super::publish(PROSODY.as_bytes(), NS, "jabber:client", 32).is_none());
    }

    #[test]
    fn the_depth_cap_is_left_to_rxml() {
        let deep = format!("{}{}", "<a>".repeat(33), "</a>".repeat(33));
        assert!(stanza(deep.as_bytes(), NS, 32).is_none());
        let ok = format!("{}{}", "<a>".repeat(32), "</a>".repeat(32));
        assert!(stanza(ok.as_bytes(), NS, 32).is_some());
    }
}
