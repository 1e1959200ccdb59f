//! XML text escaping, shared by the WNS payloads and the XMPP replies.
//!
//! Threads: any. Pure function.

/// Escapes `&`, `<`, `>`, `'` and `"`, so the result is safe as element text and as an
/// attribute value in either kind of quotes. Tab, line feed and carriage return become
/// character references: a parser turns them into spaces in an attribute value (XML 1.0
/// §3.3.3), so an IQ id holding `&#9;` would otherwise come back changed in our reply
/// (the `stanza_reader` fuzz target checks this).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_markup_and_both_quotes() {
        assert_eq!(super::escape("a<b>&'\"é"), "a&lt;b&gt;&amp;&apos;&quot;é");
    }

    #[test]
    fn whitespace_in_an_attribute_value_survives_a_parse() {
        let value = "id\twith\nline\r\nbreaks 'and' \"quotes\"";
        let xml = format!("<iq xmlns='jabber:client' id='{}'/>", super::escape(value));
        let iq: minidom::Element = xml.parse().unwrap();
        assert_eq!(iq.attr("id"), Some(value));
    }
}
