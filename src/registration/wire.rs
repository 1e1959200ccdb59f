//! The registration protocol's answers: [`RegError`] and [`Answer`] to bytes, in one place.
//!
//! Every answer is one compact JSON object plus a `\0`, written by the caller in a single
//! write (the client parses whatever its first read returned; uwpx-protocol.md §2, §14).
//! `status` is 1 for success and 0 for every error, `action` is `"response"` and
//! `version` echoes the request's version (0.39+ clients drop anything but 2).
//!
//! | error                                   | `error` text (status 0)                                     |
//! |-----------------------------------------|-------------------------------------------------------------|
//! | empty frame / not JSON / not an object  | `Malformed JSON: …` / `Malformed message: …`                |
//! | missing or wrongly typed field          | `Invalid message: missing field 'x'.` / `… must be …`       |
//! | unsupported version, unknown action     | `Unsupported version …` / `Unknown action '…'.`             |
//! | bad device_id / account / channel_uri   | `Invalid message: <the rule>.`                              |
//! | unknown device                          | `Device id unknown.` (the seed's exact text)                |
//! | test push without WNS                   | `Test push is not available: WNS delivery is not configured.` |
//! | test push refused by WNS                | `Channel expired: …` / `WNS unavailable: …` / `Server misconfigured: …` |
//! | too large / too slow / too many conns   | `Request too large: …` / `Request timed out: …` / `Server busy: …` |
//! | storage busy (locked elsewhere)         | `Server busy: the database is locked, try again later.`     |
//! | storage unreachable                     | `Storage unavailable: the request was not stored, try again later.` |
//! | any other storage failure               | `Internal server error: the request was not stored, try again later.` |
//!
//! Threads: `reg-conn-*`; pure functions.

use std::fmt;

use serde::Serialize;

use crate::store::StoreError;
use crate::types::{AccountForm, InvalidValue, Node, ProtocolVersion, Secret};
use crate::wns::Outcome;

/// Why a registration request failed. Each variant's doc says what the client sees.
#[derive(Debug)]
pub enum RegError {
    /// The frame was empty or only whitespace: `Malformed JSON: empty request.`
    Empty,
    /// The frame is not JSON: `Malformed JSON: <parser message>.`
    Malformed(String),
    /// The JSON is not an object: `Malformed message: …`.
    NotAnObject,
    /// A required field is absent: `Invalid message: missing field '…'.`
    Missing(String),
    /// A field has the wrong JSON type: `Invalid message: field '…' must be ….`
    WrongType {
        /// The field's path, e.g. `accounts[1].account_id`.
        field: String,
        /// What it must be, e.g. "a string".
        expected: &'static str,
    },
    /// `version` is a number other than 1 or 2.
    UnsupportedVersion(String),
    /// `action` is not one of the three actions.
    UnknownAction(String),
    /// A top-level value broke its rule (device_id, channel_uri).
    Invalid(InvalidValue),
    /// An element of `accounts` has neither or both of `account_id` and `bare_jid`.
    AccountShape {
        /// Its index.
        index: usize,
    },
    /// An element of `accounts` broke its rule.
    InvalidAccount {
        /// Its index.
        index: usize,
        /// The rule.
        reason: InvalidValue,
    },
    /// The same account appears twice.
    DuplicateAccount {
        /// The index of the second occurrence.
        index: usize,
    },
    /// `accounts` mixes `account_id` and `bare_jid` elements.
    MixedAccountForms,
    /// More accounts than `limits.max_accounts`.
    TooManyAccounts {
        /// The limit.
        max: usize,
    },
    /// set_push_accounts or request_test_push for a device never registered:
    /// `Device id unknown.` (clients only log it).
    DeviceUnknown,
    /// request_test_push while no WNS credentials are configured.
    TestPushUnavailable,
    /// request_test_push that WNS did not accept; the text says why in the client's terms
    /// (channel expired, WNS unavailable, server misconfigured).
    TestPushFailed(Outcome),
    /// A request larger than `limits.max_request_bytes`; the connection is closed after.
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// A request did not complete within `tcp.read_timeout_ms`; closed after.
    Timeout {
        /// The timeout.
        ms: u128,
    },
    /// Over `tcp.max_connections`; the connection is closed after.
    Busy,
    /// The store failed; nothing was committed.
    Store(StoreError),
}

impl fmt::Display for RegError {
    /// The `error` text of the answer. Never includes a secret, a bare JID or the
    /// channel URI; at most an echo of the unknown action name, truncated.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("Malformed JSON: empty request."),
            Self::Malformed(e) => write!(f, "Malformed JSON: {e}."),
            Self::NotAnObject => f.write_str("Malformed message: the request must be a JSON object."),
            Self::Missing(field) => write!(f, "Invalid message: missing field '{field}'."),
            Self::WrongType { field, expected } => {
                write!(f, "Invalid message: field '{field}' must be {expected}.")
            }
            Self::UnsupportedVersion(v) => write!(
                f,
                "Unsupported version {v}: this server speaks versions 1 and 2."
            ),
            Self::UnknownAction(a) => write!(f, "Unknown action '{a}'."),
            Self::Invalid(reason) => write!(f, "Invalid message: {reason}."),
            Self::AccountShape { index } => write!(
                f,
                "Invalid message: accounts[{index}] must have exactly one of 'account_id' and 'bare_jid'."
            ),
            Self::InvalidAccount { index, reason } => {
                write!(f, "Invalid message: accounts[{index}]: {reason}.")
            }
            Self::DuplicateAccount { index } => {
                write!(f, "Invalid message: accounts[{index}] repeats an earlier account.")
            }
            Self::MixedAccountForms => f.write_str(
                "Invalid message: all accounts must use the same form ('account_id' or 'bare_jid').",
            ),
            Self::TooManyAccounts { max } => {
                write!(f, "Invalid message: at most {max} accounts are allowed.")
            }
            Self::DeviceUnknown => f.write_str("Device id unknown."),
            Self::TestPushUnavailable => {
                f.write_str("Test push is not available: WNS delivery is not configured.")
            }
            Self::TestPushFailed(Outcome::ChannelGone) => f.write_str(
                "Channel expired: WNS no longer knows this device's channel; register a new channel.",
            ),
            Self::TestPushFailed(Outcome::Transient(reason)) => {
                write!(f, "WNS unavailable: {reason}; try again later.")
            }
            Self::TestPushFailed(Outcome::Misconfigured(_) | Outcome::OurBug(_)) => f.write_str(
                "Server misconfigured: WNS refused the push server's request; the operator must fix it.",
            ),
            Self::TestPushFailed(Outcome::Delivered) => f.write_str("Test push delivered."),
            Self::TooLarge { limit } => {
                write!(f, "Request too large: at most {limit} bytes are accepted.")
            }
            Self::Timeout { ms } => write!(
                f,
                "Request timed out: no complete request within {ms} ms."
            ),
            Self::Busy => f.write_str("Server busy: too many connections, try again later."),
            Self::Store(StoreError::Busy) => {
                f.write_str("Server busy: the database is locked, try again later.")
            }
            Self::Store(StoreError::Unavailable(_)) => f.write_str(
                "Storage unavailable: the request was not stored, try again later.",
            ),
            Self::Store(_) => {
                f.write_str("Internal server error: the request was not stored, try again later.")
            }
        }
    }
}

impl std::error::Error for RegError {}

impl From<StoreError> for RegError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// A successful answer.
#[derive(Debug)]
pub enum Answer {
    /// set_channel_uri and request_test_push: `{"action":"response","status":1,…}`.
    Done,
    /// set_push_accounts: the push JID plus node and secret per account.
    Accounts {
        /// `push_bare_jid`.
        push_jid: String,
        /// One per requested account, in request order.
        accounts: Vec<AccountAnswer>,
    },
}

/// One element of the `accounts` answer.
#[derive(Debug)]
pub struct AccountAnswer {
    /// Which key to echo under.
    pub form: AccountForm,
    /// The client's string, byte-exact.
    pub echo: String,
    /// The account's node.
    pub node: Node,
    /// The account's secret.
    pub secret: Secret,
    /// False if the account cannot receive pushes (client mode: its PEP node could not
    /// be created); the client then disables push for it.
    pub success: bool,
}

#[derive(Serialize)]
struct Wire<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    accounts: Option<Vec<WireAccount<'a>>>,
    action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    push_bare_jid: Option<&'a str>,
    status: u8,
    version: u8,
}

#[derive(Serialize)]
struct WireAccount<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    account_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bare_jid: Option<&'a str>,
    node: &'a str,
    secret: &'a str,
    success: bool,
}

/// Encodes an answer as compact JSON (keys in alphabetical order, like the C++ server)
/// followed by one `\0`.
pub fn encode(version: ProtocolVersion, result: &Result<Answer, RegError>) -> Vec<u8> {
    let mut wire = Wire {
        accounts: None,
        action: "response",
        error: None,
        push_bare_jid: None,
        status: 1,
        version: version.number(),
    };
    match result {
        Ok(Answer::Done) => {}
        Ok(Answer::Accounts { push_jid, accounts }) => {
            wire.push_bare_jid = Some(push_jid);
            wire.accounts = Some(
                accounts
                    .iter()
                    .map(|a| WireAccount {
                        account_id: (a.form == AccountForm::AccountId).then_some(a.echo.as_str()),
                        bare_jid: (a.form == AccountForm::BareJid).then_some(a.echo.as_str()),
                        node: a.node.as_str(),
                        secret: a.secret.expose(),
                        success: a.success,
                    })
                    .collect(),
            );
        }
        Err(e) => {
            wire.status = 0;
            wire.error = Some(e.to_string());
        }
    }
    // Serialising these plain structs cannot fail (no maps with non-string keys, no
    // custom Serialize); fall back to a fixed error answer rather than panic anyway.
    let mut out = serde_json::to_vec(&wire).unwrap_or_else(|_| {
        format!(
            "{{\"action\":\"response\",\"error\":\"Internal server error.\",\"status\":0,\"version\":{}}}",
            version.number()
        )
        .into_bytes()
    });
    out.push(0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_compact_sorted_and_nul_terminated() {
        assert_eq!(
            encode(ProtocolVersion::V2, &Ok(Answer::Done)),
            b"{\"action\":\"response\",\"status\":1,\"version\":2}\0"
        );
        assert_eq!(
            encode(ProtocolVersion::V1, &Err(RegError::DeviceUnknown)),
            b"{\"action\":\"response\",\"error\":\"Device id unknown.\",\"status\":0,\"version\":1}\0"
        );
        let answer = Answer::Accounts {
            push_jid: "push@xmpp.uwpx.org".into(),
            accounts: vec![AccountAnswer {
                form: AccountForm::BareJid,
                echo: "someClient@xmpp.uwpx.org".into(),
                node: Node::from_stored("n1".into()),
                secret: Secret::from_stored("s1".into()),
                success: true,
            }],
        };
        assert_eq!(
            String::from_utf8(encode(ProtocolVersion::V1, &Ok(answer))).unwrap(),
            "{\"accounts\":[{\"bare_jid\":\"someClient@xmpp.uwpx.org\",\"node\":\"n1\",\"secret\":\"s1\",\"success\":true}],\"action\":\"response\",\"push_bare_jid\":\"push@xmpp.uwpx.org\",\"status\":1,\"version\":1}\0"
        );
    }

    #[test]
    fn every_error_has_distinct_text() {
        let errors = [
            RegError::Empty,
            RegError::Malformed("x".into()),
            RegError::NotAnObject,
            RegError::Missing("device_id".into()),
            RegError::WrongType {
                field: "version".into(),
                expected: "an integer",
            },
            RegError::UnsupportedVersion("3".into()),
            RegError::UnknownAction("push".into()),
            RegError::Invalid(InvalidValue("channel_uri must use https")),
            RegError::AccountShape { index: 0 },
            RegError::InvalidAccount {
                index: 0,
                reason: InvalidValue("r"),
            },
            RegError::DuplicateAccount { index: 1 },
            RegError::MixedAccountForms,
            RegError::TooManyAccounts { max: 32 },
            RegError::DeviceUnknown,
            RegError::TestPushUnavailable,
            RegError::TestPushFailed(Outcome::ChannelGone),
            RegError::TestPushFailed(Outcome::Transient("x".into())),
            RegError::TestPushFailed(Outcome::Misconfigured("x".into())),
            RegError::TooLarge { limit: 65536 },
            RegError::Timeout { ms: 10000 },
            RegError::Busy,
            RegError::Store(StoreError::Busy),
            RegError::Store(StoreError::Unavailable("gone".into())),
            RegError::Store(StoreError::Full),
        ];
        let texts: std::collections::HashSet<String> =
            errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(texts.len(), errors.len());
    }
}
