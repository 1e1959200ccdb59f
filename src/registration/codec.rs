//! Sans-I/O codec for the UWPX registration protocol: NUL-framed JSON in, typed
//! [`Request`]s out.
//!
//! The framer cuts the byte stream at each `\0` and enforces the size cap. The decoder
//! turns one frame into a request for one of the three client generations (v1 with
//! `bare_jid`, v1 with `account_id`, v2 with `account_id`; uwpx-protocol.md §1, §4),
//! validating every field into the types of [`crate::types`]. Each rejection is a
//! [`RegError`] carrying the version to answer with.
//!
//! Threads: runs on `reg-conn-*` threads; no I/O, no locks, unit-tested on byte vectors.

use serde_json::{Map, Value};

use super::wire::RegError;
use crate::store::AccountSpec;
use crate::types::{
    AccountForm, AccountKey, BareJid, ChannelHosts, ChannelUri, DeviceId, ProtocolVersion,
};

/// Splits a byte stream into NUL-terminated frames of bounded size.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    scanned: usize,
    limit: usize,
}

/// One item cut from the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A complete request, without its NUL (possibly empty).
    Request(Vec<u8>),
    /// More than `limit` bytes arrived without a NUL, or the request with its NUL is
    /// larger than `limit`. The connection is answered once and then closed.
    TooLarge,
}

impl Framer {
    /// A framer that accepts requests of at most `limit` bytes, NUL included.
    pub fn new(limit: usize) -> Self {
        Self {
            buf: Vec::with_capacity(1024),
            scanned: 0,
            limit,
        }
    }

    /// Appends bytes read from the socket.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame, if one is buffered. Whitespace between frames (a CRLF
    /// after a NUL, say) is skipped.
    pub fn next_frame(&mut self) -> Option<Frame> {
        let lead = self
            .buf
            .iter()
            .take_while(|b| b.is_ascii_whitespace())
            .count();
        if lead > 0 {
            self.buf.drain(..lead);
            self.scanned = self.scanned.saturating_sub(lead);
        }
        match self.buf[self.scanned..].iter().position(|&b| b == 0) {
            Some(i) => {
                let end = self.scanned + i;
                self.scanned = 0;
                if end + 1 > self.limit {
                    self.buf.clear();
                    return Some(Frame::TooLarge);
                }
                let frame = self.buf[..end].to_vec();
                self.buf.drain(..=end);
                Some(Frame::Request(frame))
            }
            None if self.buf.len() >= self.limit => {
                self.buf.clear();
                self.scanned = 0;
                Some(Frame::TooLarge)
            }
            None => {
                self.scanned = self.buf.len();
                None
            }
        }
    }

    /// True while part of a request is buffered (more than whitespace).
    pub fn has_partial(&self) -> bool {
        self.buf.iter().any(|b| !b.is_ascii_whitespace())
    }

    /// At end of input: what is left, as a last request without a NUL. Lenient towards
    /// tools that half-close instead of sending the NUL (the Python server accepted EOF).
    pub fn take_rest(&mut self) -> Option<Vec<u8>> {
        self.scanned = 0;
        self.has_partial().then(|| std::mem::take(&mut self.buf))
    }
}

/// What the decoder needs from the configuration.
#[derive(Debug, Clone)]
pub struct Rules {
    /// `limits.max_accounts`.
    pub max_accounts: usize,
    /// `wns.channel_hosts`.
    pub channel_hosts: ChannelHosts,
}

/// A decoded, validated request.
#[derive(Debug)]
pub struct Request {
    /// The version to store and to echo.
    pub version: ProtocolVersion,
    /// The device it is about.
    pub device_id: DeviceId,
    /// What it asks for.
    pub action: Action,
}

/// The three actions real clients send.
#[derive(Debug)]
pub enum Action {
    /// Create the device or update its channel.
    SetChannelUri(ChannelUri),
    /// Replace the device's account set.
    SetPushAccounts(AccountList),
    /// Send a test notification to the device.
    RequestTestPush,
}

impl Action {
    /// The action's wire name, for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::SetChannelUri(_) => "set_channel_uri",
            Self::SetPushAccounts(_) => "set_push_accounts",
            Self::RequestTestPush => "request_test_push",
        }
    }
}

/// The accounts of a set_push_accounts, all in one form.
#[derive(Debug)]
pub struct AccountList {
    /// The form, `None` for an empty list (the stored form is then kept).
    pub form: Option<AccountForm>,
    /// The accounts in request order.
    pub entries: Vec<AccountEntry>,
}

/// One account of a request: what to store and what to echo.
#[derive(Debug)]
pub struct AccountEntry {
    /// Key and domain for the store.
    pub spec: AccountSpec,
    /// The exact string the client sent (account_id or bare JID), echoed back so the
    /// client's case-sensitive match succeeds. Never stored, never logged.
    pub echo: String,
}

/// A rejected frame: the error, and the version its answer must carry.
#[derive(Debug)]
pub struct Rejected {
    /// The request's version if it had a valid one, else 2 (clients ≤ 0.38 ignore it).
    pub version: ProtocolVersion,
    /// Why.
    pub error: RegError,
}

/// Decodes one frame. Unknown top-level fields are ignored for forward compatibility;
/// everything the action needs must be present with the right JSON type.
pub fn decode(frame: &[u8], rules: &Rules) -> Result<Request, Rejected> {
    let frame = frame.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(frame);
    let reject = |version, error| Rejected { version, error };
    if frame.iter().all(u8::is_ascii_whitespace) {
        return Err(reject(ProtocolVersion::V2, RegError::Empty));
    }
    let value: Value = serde_json::from_slice(frame)
        .map_err(|e| reject(ProtocolVersion::V2, RegError::Malformed(e.to_string())))?;
    let Value::Object(obj) = value else {
        return Err(reject(ProtocolVersion::V2, RegError::NotAnObject));
    };
    let answer_version = obj
        .get("version")
        .and_then(Value::as_u64)
        .and_then(ProtocolVersion::from_number)
        .unwrap_or(ProtocolVersion::V2);
    decode_object(&obj, rules).map_err(|error| reject(answer_version, error))
}

fn decode_object(obj: &Map<String, Value>, rules: &Rules) -> Result<Request, RegError> {
    let version = match obj.get("version") {
        None => return Err(RegError::Missing("version".into())),
        Some(v) => match v.as_u64() {
            Some(n) => ProtocolVersion::from_number(n)
                .ok_or_else(|| RegError::UnsupportedVersion(v.to_string()))?,
            None if v.is_number() => return Err(RegError::UnsupportedVersion(v.to_string())),
            None => return Err(wrong_type("version", "an integer")),
        },
    };
    let action = string_field(obj, "action")?;
    let device_id = DeviceId::parse(string_field(obj, "device_id")?).map_err(RegError::Invalid)?;
    let action = match action {
        "set_channel_uri" => {
            let uri = string_field(obj, "channel_uri")?;
            Action::SetChannelUri(
                ChannelUri::parse(uri, &rules.channel_hosts).map_err(RegError::Invalid)?,
            )
        }
        "set_push_accounts" | "set_accounts" => {
            Action::SetPushAccounts(decode_accounts(obj, &device_id, rules.max_accounts)?)
        }
        "request_test_push" => Action::RequestTestPush,
        other => return Err(RegError::UnknownAction(truncate(other, 64))),
    };
    Ok(Request {
        version,
        device_id,
        action,
    })
}

fn decode_accounts(
    obj: &Map<String, Value>,
    device: &DeviceId,
    max: usize,
) -> Result<AccountList, RegError> {
    let items = match obj.get("accounts") {
        None => return Err(RegError::Missing("accounts".into())),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(wrong_type("accounts", "an array")),
    };
    if items.len() > max {
        return Err(RegError::TooManyAccounts { max });
    }
    let mut form = None;
    let mut entries: Vec<AccountEntry> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::Object(acc) = item else {
            return Err(wrong_type(&format!("accounts[{i}]"), "an object"));
        };
        let (this_form, text) = match (acc.get("account_id"), acc.get("bare_jid")) {
            (Some(_), Some(_)) => return Err(RegError::AccountShape { index: i }),
            (Some(v), None) => (AccountForm::AccountId, v),
            (None, Some(v)) => (AccountForm::BareJid, v),
            (None, None) => return Err(RegError::AccountShape { index: i }),
        };
        let Some(text) = text.as_str() else {
            return Err(wrong_type(
                &format!("accounts[{i}].{}", this_form.json_key()),
                "a string",
            ));
        };
        if *form.get_or_insert(this_form) != this_form {
            return Err(RegError::MixedAccountForms);
        }
        let spec = match this_form {
            AccountForm::AccountId => AccountSpec {
                key: AccountKey::parse(text).map_err(|e| RegError::InvalidAccount {
                    index: i,
                    reason: e,
                })?,
                domain: None,
            },
            AccountForm::BareJid => {
                let jid = BareJid::parse(text).map_err(|e| RegError::InvalidAccount {
                    index: i,
                    reason: e,
                })?;
                AccountSpec {
                    key: AccountKey::derive(device, &jid),
                    domain: Some(jid.domain()),
                }
            }
        };
        if entries.iter().any(|e| e.spec.key == spec.key) {
            return Err(RegError::DuplicateAccount { index: i });
        }
        entries.push(AccountEntry {
            spec,
            echo: text.to_owned(),
        });
    }
    Ok(AccountList { form, entries })
}

fn string_field<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<&'a str, RegError> {
    match obj.get(name) {
        None => Err(RegError::Missing(name.into())),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(wrong_type(name, "a string")),
    }
}

fn wrong_type(field: &str, expected: &'static str) -> RegError {
    RegError::WrongType {
        field: field.to_owned(),
        expected,
    }
}

fn truncate(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn rules() -> Rules {
        Rules {
            max_accounts: 32,
            channel_hosts: ChannelHosts::new(vec!["notify.windows.com".into()]),
        }
    }

    /// uwpx-protocol.md §4.2, clients 0.26–0.34.
    const BARE_JID_V1: &[u8] = b"{\r\n  \"version\": 1,\r\n  \"action\": \"set_push_accounts\",\r\n  \"device_id\": \"5486bd868050a620141f4e81c9f1d2c67ab0de27e5e26d218ca41c9394ee806b\",\r\n  \"accounts\": [\r\n    {\r\n      \"bare_jid\": \"someClient@xmpp.uwpx.org\"\r\n    }\r\n  ]\r\n}\0";

    #[test]
    fn framer_splits_pipelined_requests_and_skips_whitespace() {
        let mut f = Framer::new(100);
        f.push(b"{\"a\":1}\0\r\n{\"b\"");
        assert_eq!(f.next_frame(), Some(Frame::Request(b"{\"a\":1}".to_vec())));
        assert_eq!(f.next_frame(), None);
        assert!(f.has_partial());
        f.push(b":2}\0\0");
        assert_eq!(f.next_frame(), Some(Frame::Request(b"{\"b\":2}".to_vec())));
        assert_eq!(f.next_frame(), Some(Frame::Request(Vec::new())));
        assert_eq!(f.next_frame(), None);
        assert!(!f.has_partial());
    }

    #[test]
    fn framer_caps_size_with_and_without_nul() {
        let mut f = Framer::new(10);
        f.push(b"123456789\0");
        assert!(matches!(f.next_frame(), Some(Frame::Request(_))));
        f.push(b"1234567890\0");
        assert_eq!(f.next_frame(), Some(Frame::TooLarge));
        let mut f = Framer::new(10);
        f.push(b"12345");
        assert_eq!(f.next_frame(), None);
        f.push(b"67890");
        assert_eq!(f.next_frame(), Some(Frame::TooLarge));
    }

    #[test]
    fn bare_jid_request_hashes_the_jid_and_echoes_it() {
        let mut f = Framer::new(65536);
        f.push(BARE_JID_V1);
        let Some(Frame::Request(frame)) = f.next_frame() else {
            panic!()
        };
        let req = decode(&frame, &rules()).unwrap();
        assert_eq!(req.version, ProtocolVersion::V1);
        let Action::SetPushAccounts(list) = req.action else {
            panic!()
        };
        assert_eq!(list.form, Some(AccountForm::BareJid));
        assert_eq!(list.entries[0].echo, "someClient@xmpp.uwpx.org");
        assert_eq!(
            list.entries[0].spec.key.as_str(),
            "e5397e96c6ff4d629ab9f203eec3ff17c777b2127cf1b41005e54877487ba982"
        );
        assert_eq!(
            list.entries[0].spec.domain.as_deref(),
            Some("xmpp.uwpx.org")
        );
    }

    #[test]
    fn each_bad_input_has_its_own_error_and_version() {
        let dev = "\"device_id\":\"abcd\"";
        let cases: &[(&str, ProtocolVersion, &str)] = &[
            ("", ProtocolVersion::V2, "Empty"),
            ("{", ProtocolVersion::V2, "Malformed"),
            ("[1]", ProtocolVersion::V2, "NotAnObject"),
            (
                r#"{"action":"set_channel_uri"}"#,
                ProtocolVersion::V2,
                "Missing",
            ),
            (
                r#"{"version":"2","action":"x"}"#,
                ProtocolVersion::V2,
                "WrongType",
            ),
            (
                r#"{"version":3,"action":"x"}"#,
                ProtocolVersion::V2,
                "UnsupportedVersion",
            ),
            (
                r#"{"version":1.5,"action":"x"}"#,
                ProtocolVersion::V2,
                "UnsupportedVersion",
            ),
            (
                &format!(r#"{{"version":1,"action":"register_push",{dev}}}"#),
                ProtocolVersion::V1,
                "UnknownAction",
            ),
            (
                r#"{"version":1,"action":"set_channel_uri","device_id":"xyz","channel_uri":"https://a.notify.windows.com/"}"#,
                ProtocolVersion::V1,
                "Invalid",
            ),
            (
                &format!(
                    r#"{{"version":2,"action":"set_channel_uri",{dev},"channel_uri":"ms-app://s-1"}}"#
                ),
                ProtocolVersion::V2,
                "Invalid",
            ),
            (
                &format!(r#"{{"version":2,"action":"set_channel_uri",{dev},"channel_uri":5}}"#),
                ProtocolVersion::V2,
                "WrongType",
            ),
            (
                &format!(r#"{{"version":2,"action":"set_push_accounts",{dev}}}"#),
                ProtocolVersion::V2,
                "Missing",
            ),
            (
                &format!(r#"{{"version":2,"action":"set_push_accounts",{dev},"accounts":{{}}}}"#),
                ProtocolVersion::V2,
                "WrongType",
            ),
            (
                &format!(r#"{{"version":2,"action":"set_push_accounts",{dev},"accounts":[1]}}"#),
                ProtocolVersion::V2,
                "WrongType",
            ),
            (
                &format!(r#"{{"version":2,"action":"set_push_accounts",{dev},"accounts":[{{}}]}}"#),
                ProtocolVersion::V2,
                "AccountShape",
            ),
            (
                &format!(
                    r#"{{"version":2,"action":"set_push_accounts",{dev},"accounts":[{{"account_id":""}}]}}"#
                ),
                ProtocolVersion::V2,
                "InvalidAccount",
            ),
            (
                &format!(
                    r#"{{"version":2,"action":"set_push_accounts",{dev},"accounts":[{{"account_id":1}}]}}"#
                ),
                ProtocolVersion::V2,
                "WrongType",
            ),
            (
                &format!(
                    r#"{{"version":1,"action":"set_push_accounts",{dev},"accounts":[{{"bare_jid":"a@b/c"}}]}}"#
                ),
                ProtocolVersion::V1,
                "InvalidAccount",
            ),
            (
                &format!(
                    r#"{{"version":2,"action":"set_push_accounts",{dev},"accounts":[{{"account_id":"a"}},{{"account_id":"a"}}]}}"#
                ),
                ProtocolVersion::V2,
                "DuplicateAccount",
            ),
            (
                &format!(
                    r#"{{"version":2,"action":"set_push_accounts",{dev},"accounts":[{{"account_id":"a"}},{{"bare_jid":"a@b"}}]}}"#
                ),
                ProtocolVersion::V2,
                "MixedAccountForms",
            ),
        ];
        for (input, version, kind) in cases {
            let r = decode(input.as_bytes(), &rules()).unwrap_err();
            assert_eq!(r.version, *version, "{input}");
            assert!(
                format!("{:?}", r.error).starts_with(kind),
                "{input}: {:?}",
                r.error
            );
        }
        let many: Vec<String> = (0..33)
            .map(|i| format!(r#"{{"account_id":"a{i}"}}"#))
            .collect();
        let input = format!(
            r#"{{"version":2,"action":"set_accounts",{dev},"accounts":[{}]}}"#,
            many.join(",")
        );
        assert!(matches!(
            decode(input.as_bytes(), &rules()).unwrap_err().error,
            RegError::TooManyAccounts { max: 32 }
        ));
    }
}
