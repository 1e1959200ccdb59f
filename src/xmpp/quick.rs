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
//! A fuzz target (`stanza_reader`) checks that whatever this path accepts, rxml and
//! minidom accept as the same tree.
//!
//! Threads: `xmpp-io`. Pure.

use minidom::Element;
use minidom::rxml::NcName;

/// Reads one stanza from the start of `buf` (after whitespace), whose default namespace
/// is `ns` (the stream's). Returns the tree and the bytes used, or `None` to leave the
/// bytes to the full parser (not the quick shape, or not whole in `buf`).
pub fn stanza(buf: &[u8], ns: &str, max_depth: usize) -> Option<(Element, usize)> {
    let mut p = Cursor { b: buf, i: 0 };
    p.skip_ws();
    if p.peek()? != b'<' {
        return None;
    }
    let el = p.element(ns, 1, max_depth)?;
    Some((el, p.i))
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

    /// One element, its start tag at the cursor; `parent` is the inherited default
    /// namespace.
    fn element(&mut self, parent: &str, depth: usize, max_depth: usize) -> Option<Element> {
        if depth > max_depth {
            return None;
        }
        self.eat(b'<')?;
        let name = self.name()?;
        let mut declared: Option<String> = None;
        let mut attrs: Vec<(&'a str, String)> = Vec::new();
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
                            || RESERVED.contains(&value.as_str())
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
        let ns = declared.clone().unwrap_or_else(|| parent.to_owned());
        let mut builder = Element::builder(name, ns.as_str());
        if let Some(d) = declared {
            builder = builder.prefix(None, d).ok()?;
        }
        for (attr, value) in attrs {
            builder = builder.attr(NcName::try_from(attr).ok()?, value);
        }
        let mut el = builder.build();
        if empty {
            return Some(el);
        }
        loop {
            if self.peek()? != b'<' {
                let text = self.text()?;
                el.append_text(text);
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
                    let child = self.element(&ns, depth + 1, max_depth)?;
                    el.append_child(child);
                }
            }
        }
    }

    /// A quoted attribute value, entities decoded.
    fn attr_value(&mut self) -> Option<String> {
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
    fn text(&mut self) -> Option<String> {
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
fn decode(raw: &[u8], char_refs: bool) -> Option<String> {
    let s = std::str::from_utf8(raw).ok()?;
    if s.chars().any(|c| !allowed(c)) {
        return None;
    }
    if !s.contains('&') {
        return Some(s.to_owned());
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
    Some(out)
}

/// XML 1.0's `Char`.
fn allowed(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn the_depth_cap_is_left_to_rxml() {
        let deep = format!("{}{}", "<a>".repeat(33), "</a>".repeat(33));
        assert!(stanza(deep.as_bytes(), NS, 32).is_none());
        let ok = format!("{}{}", "<a>".repeat(32), "</a>".repeat(32));
        assert!(stanza(ok.as_bytes(), NS, 32).is_some());
    }
}
