//! Raw WNS payloads, by the device's client generation (uwpx-protocol.md §10–11).
//!
//! | generation            | push                                                        | test push |
//! |-----------------------|-------------------------------------------------------------|-----------|
//! | v2 (0.39+)            | `{"account_id":…,"action":"push","message_count":N,"pending_subscription_count":M,"version":2}` | `{"action":"test_push","version":2}` |
//! | v1 account_id (0.35–0.38) | the XEP-0357 `<notification>` with an added `<account id="…"/>` | `<test/>` |
//! | v1 bare_jid (0.25–0.34)   | a short text shown verbatim as a toast; no JID, no body  | "Test push notification from your push server." |
//!
//! A payload must be non-empty and at most [`MAX_PAYLOAD`] bytes. The v1 XML form carries
//! the user's summary (sender, body); if it is too big, it falls back to the same
//! notification with only the summary counts, and then to the bare account element.
//!
//! Threads: `xmpp-io` and `reg-conn-*` build payloads; no I/O, no locks.

use serde::Serialize;

use crate::types::{ClientGeneration, Summary};
use crate::xml::escape;

/// WNS refuses bodies over 5000 bytes with 413.
pub const MAX_PAYLOAD: usize = 5000;

/// The text pre-0.35 clients show verbatim as a toast: it must not leak who wrote what.
pub const V1_TEXT_PUSH: &str = "You might have received new messages while you were away.";
/// The test push text for pre-0.35 clients (the seed's exact string).
pub const V1_TEXT_TEST: &str = "Test push notification from your push server.";

/// The payload of a push for `account_id` (the account key as the client knows it).
pub fn push(generation: ClientGeneration, account_id: &str, summary: &Summary) -> Vec<u8> {
    match generation {
        ClientGeneration::V2 => v2_push(account_id, summary),
        ClientGeneration::V1AccountId => v1_xml_push(account_id, summary),
        ClientGeneration::V1BareJid => V1_TEXT_PUSH.as_bytes().to_vec(),
    }
}

/// The payload of a test push.
pub fn test_push(generation: ClientGeneration) -> Vec<u8> {
    match generation {
        ClientGeneration::V2 => br#"{"action":"test_push","version":2}"#.to_vec(),
        ClientGeneration::V1AccountId => b"<test/>".to_vec(),
        ClientGeneration::V1BareJid => V1_TEXT_TEST.as_bytes().to_vec(),
    }
}

#[derive(Serialize)]
struct V2Push<'a> {
    account_id: &'a str,
    action: &'static str,
    message_count: u64,
    pending_subscription_count: u64,
    version: u8,
}

fn v2_push(account_id: &str, s: &Summary) -> Vec<u8> {
    let push = V2Push {
        account_id,
        action: "push",
        message_count: s.message_count,
        pending_subscription_count: s.pending_subscription_count,
        version: 2,
    };
    // A struct of strings and integers always serialises; account ids are ≤ 128 chars,
    // so the result is far below MAX_PAYLOAD.
    serde_json::to_vec(&push).unwrap_or_else(|_| br#"{"action":"push","version":2}"#.to_vec())
}

/// The v1 XML form, shrinking until it fits: full summary, counts only, account only.
fn v1_xml_push(account_id: &str, s: &Summary) -> Vec<u8> {
    let full = v1_xml(account_id, s, true);
    if full.len() <= MAX_PAYLOAD {
        return full;
    }
    let counts = v1_xml(account_id, s, false);
    if counts.len() <= MAX_PAYLOAD {
        return counts;
    }
    format!(
        "<notification xmlns=\"urn:xmpp:push:0\"><account id=\"{}\"/></notification>",
        escape(account_id)
    )
    .into_bytes()
}

fn v1_xml(account_id: &str, s: &Summary, with_text: bool) -> Vec<u8> {
    let mut x = String::from(
        "<notification xmlns=\"urn:xmpp:push:0\"><x xmlns=\"jabber:x:data\" type=\"form\"><field var=\"FORM_TYPE\" type=\"hidden\"><value>urn:xmpp:push:summary</value></field>",
    );
    let mut field = |var: &str, value: &str| {
        x.push_str(&format!(
            "<field var=\"{var}\"><value>{}</value></field>",
            escape(value)
        ));
    };
    field("message-count", &s.message_count.to_string());
    field(
        "pending-subscription-count",
        &s.pending_subscription_count.to_string(),
    );
    if with_text {
        if let Some(sender) = &s.last_message_sender {
            field("last-message-sender", sender);
        }
        if let Some(body) = &s.last_message_body {
            field("last-message-body", body);
        }
    }
    x.push_str(&format!(
        "</x><account id=\"{}\"/></notification>",
        escape(account_id)
    ));
    x.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "e5397e96c6ff4d629ab9f203eec3ff17c777b2127cf1b41005e54877487ba982";

    #[test]
    fn v2_bytes_match_the_client_contract() {
        let s = Summary {
            message_count: 2,
            ..Summary::default()
        };
        assert_eq!(
            push(ClientGeneration::V2, ID, &s),
            format!("{{\"account_id\":\"{ID}\",\"action\":\"push\",\"message_count\":2,\"pending_subscription_count\":0,\"version\":2}}").into_bytes()
        );
        assert_eq!(
            test_push(ClientGeneration::V2),
            br#"{"action":"test_push","version":2}"#
        );
    }

    #[test]
    fn v1_xml_carries_the_account_and_escapes() {
        let s = Summary {
            message_count: 1,
            pending_subscription_count: 0,
            last_message_sender: Some("bob@example.org/phone".into()),
            last_message_body: Some("a < b & \"c\"".into()),
        };
        let xml = String::from_utf8(push(ClientGeneration::V1AccountId, "x\"y", &s)).unwrap();
        assert!(xml.starts_with("<notification xmlns=\"urn:xmpp:push:0\">"));
        assert!(xml.ends_with("<account id=\"x&quot;y\"/></notification>"));
        assert!(xml.contains(
            "<field var=\"last-message-sender\"><value>bob@example.org/phone</value></field>"
        ));
        assert!(xml.contains("a &lt; b &amp; &quot;c&quot;"));
        assert_eq!(test_push(ClientGeneration::V1AccountId), b"<test/>");
    }

    #[test]
    fn oversize_summaries_fall_back_to_smaller_forms_of_the_same_push() {
        let s = Summary {
            message_count: 3,
            last_message_body: Some("x".repeat(6000)),
            ..Summary::default()
        };
        let xml = String::from_utf8(push(ClientGeneration::V1AccountId, ID, &s)).unwrap();
        assert!(xml.len() <= MAX_PAYLOAD);
        assert!(xml.contains("<field var=\"message-count\"><value>3</value></field>"));
        assert!(!xml.contains("last-message-body"));
        assert!(xml.contains(&format!("<account id=\"{ID}\"/>")));
        let long_id = "é".repeat(3000); // not reachable from the codec, but still bounded
        assert!(push(ClientGeneration::V1AccountId, &long_id, &s).len() > MAX_PAYLOAD);
    }

    #[test]
    fn v1_text_leaks_nothing() {
        let s = Summary {
            last_message_sender: Some("bob@example.org".into()),
            last_message_body: Some("secret plans".into()),
            ..Summary::default()
        };
        let text = String::from_utf8(push(ClientGeneration::V1BareJid, ID, &s)).unwrap();
        assert!(!text.contains("bob") && !text.contains("plans") && !text.contains(ID));
        assert_eq!(
            test_push(ClientGeneration::V1BareJid),
            V1_TEXT_TEST.as_bytes()
        );
    }
}
