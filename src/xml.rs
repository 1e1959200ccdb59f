//! XML text escaping, shared by the WNS payloads and the XMPP replies.
//!
//! Threads: any. Pure function.

/// Escapes `&`, `<`, `>`, `'` and `"`, so the result is safe as element text and as an
/// attribute value in either kind of quotes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
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
}
