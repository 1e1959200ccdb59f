//! Typed protocol values, validated once at the boundary.
//!
//! Every value that crosses a wire (device ids, account keys, nodes, secrets, channel
//! URIs) is a private-field newtype with a checked constructor. Past the codec nothing
//! carries a raw `String` for these concepts, so a function signature says which value it
//! wants and a check cannot be skipped by accident.
//!
//! Threads: pure data, used from every thread. No locks, no I/O.

use std::fmt;

use sha2::{Digest, Sha256};

/// Why a value was rejected at the boundary. The text is shown to the client as part of
/// the error answer, so it names the rule, never the rejected value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidValue(pub &'static str);

impl fmt::Display for InvalidValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for InvalidValue {}

/// The protocol version of a request (1 or 2). Every answer echoes it: clients from 0.39
/// on reject any answer whose `version` is not 2, older ones ignore it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolVersion {
    /// Clients 0.25–0.38.
    V1,
    /// Clients 0.39 and later.
    V2,
}

impl ProtocolVersion {
    /// Maps the JSON integer to a version; `None` for anything but 1 and 2.
    pub fn from_number(n: u64) -> Option<Self> {
        match n {
            1 => Some(Self::V1),
            2 => Some(Self::V2),
            _ => None,
        }
    }

    /// The number written on the wire and stored in the database.
    pub fn number(self) -> u8 {
        match self {
            Self::V1 => 1,
            Self::V2 => 2,
        }
    }
}

/// How a device names its accounts: the plain bare JID (clients 0.26–0.34) or the hashed
/// `account_id` (0.35+). Stored per device because it decides the WNS payload format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccountForm {
    /// `{"bare_jid": "user@example.org"}`; we store only its hash and domain.
    BareJid,
    /// `{"account_id": "<sha256 hex>"}`; echoed back byte-exact.
    AccountId,
}

impl AccountForm {
    /// The JSON key the client uses for this form, and the one we echo.
    pub fn json_key(self) -> &'static str {
        match self {
            Self::BareJid => "bare_jid",
            Self::AccountId => "account_id",
        }
    }

    /// Parses the database spelling (the JSON key).
    pub fn from_json_key(s: &str) -> Option<Self> {
        match s {
            "bare_jid" => Some(Self::BareJid),
            "account_id" => Some(Self::AccountId),
            _ => None,
        }
    }
}

/// The three client generations the server must serve, derived from the stored version
/// and account form. Later issues pick the WNS payload format from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientGeneration {
    /// Version 1 with `bare_jid` accounts (0.25–0.34): plain-text payloads.
    V1BareJid,
    /// Version 1 with `account_id` accounts (0.35–0.38): XML payloads.
    V1AccountId,
    /// Version 2 (0.39+): JSON payloads.
    V2,
}

impl ClientGeneration {
    /// Derives the generation. A v1 device that never sent accounts (0.25, or a client
    /// that only sent set_channel_uri so far) is treated as the oldest generation.
    pub fn of(version: ProtocolVersion, form: Option<AccountForm>) -> Self {
        match (version, form) {
            (ProtocolVersion::V2, _) => Self::V2,
            (ProtocolVersion::V1, Some(AccountForm::AccountId)) => Self::V1AccountId,
            (ProtocolVersion::V1, _) => Self::V1BareJid,
        }
    }
}

/// A device id: 1–256 hex characters, treated as opaque and stored byte-exact.
///
/// Clients 0.35+ send 64 lowercase hex characters; 0.25–0.34 send the raw system id in
/// hex, whose length varies. It is not a secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceId(String);

impl DeviceId {
    /// Checks length and alphabet.
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        if s.is_empty() || s.len() > 256 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(InvalidValue(
                "device_id must be 1 to 256 hexadecimal characters",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// The id as the client sent it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A short prefix for log lines, enough to correlate without flooding the log.
    pub fn short(&self) -> &str {
        &self.0[..self.0.len().min(12)]
    }
}

impl DeviceId {
    /// Rebuilds an id read back from the database.
    pub(crate) fn from_stored(s: String) -> Self {
        Self(s)
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The key of an account within a device: the client's `account_id` byte-exact, or for
/// `bare_jid` clients lowercase hex SHA-256(device_id + bare_jid). The two coincide for
/// the same JID, so a client upgrading from 0.34 to 0.35 keeps its node and secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AccountKey(String);

impl AccountKey {
    /// Validates an `account_id` from a client: non-empty, at most 128 characters, no
    /// control characters. Its content is otherwise opaque and echoed byte-exact.
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        if s.is_empty() {
            return Err(InvalidValue("account_id must not be empty"));
        }
        if s.chars().count() > 128 {
            return Err(InvalidValue("account_id must be at most 128 characters"));
        }
        if s.chars().any(char::is_control) {
            return Err(InvalidValue(
                "account_id must not contain control characters",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// The seed's bareJidHash: lowercase hex SHA-256 of UTF-8(device_id + bare_jid),
    /// with no separator (uwpx-protocol.md §7.2). The only place this derivation lives.
    pub fn derive(device: &DeviceId, jid: &BareJid) -> Self {
        let mut h = Sha256::new();
        h.update(device.as_str().as_bytes());
        h.update(jid.as_str().as_bytes());
        Self(hex::encode(h.finalize()))
    }

    /// Rebuilds a key read back from the database, where it was validated on the way in.
    pub(crate) fn from_stored(s: String) -> Self {
        Self(s)
    }

    /// The key text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A bare JID as a 0.26–0.34 client sends it. It lives only in memory for the length of
/// one request: the store keeps its hash ([`AccountKey::derive`]) and its domain.
#[derive(Clone, PartialEq, Eq)]
pub struct BareJid {
    text: String,
    at: usize,
}

impl BareJid {
    /// Accepts `local@domain` with a non-empty local part and a plausible domain, and no
    /// resource. Characters that RFC 7622 forbids in a local part are rejected.
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        const BAD: InvalidValue =
            InvalidValue("bare_jid must be a bare JID of the form user@domain");
        if s.len() > 2047 || s.contains('/') {
            return Err(BAD);
        }
        let at = s.find('@').ok_or(BAD)?;
        let (local, domain) = (&s[..at], &s[at + 1..]);
        let local_ok = !local.is_empty()
            && local.len() <= 1023
            && !local
                .chars()
                .any(|c| c.is_control() || c.is_whitespace() || "\"&'/:<>@".contains(c));
        if !local_ok || !is_domain(domain) {
            return Err(BAD);
        }
        Ok(Self {
            text: s.to_owned(),
            at,
        })
    }

    /// The JID exactly as the client sent it (it is hashed and echoed as is).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The local part (before the `@`), as given.
    pub fn local(&self) -> &str {
        &self.text[..self.at]
    }

    /// The domain part, lowercased; the only part of the JID the store keeps.
    pub fn domain(&self) -> String {
        self.text[self.at + 1..].to_lowercase()
    }
}

impl fmt::Debug for BareJid {
    /// Only the domain: a bare JID is personal data and stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BareJid(…@{})", &self.text[self.at + 1..])
    }
}

/// A DNS-ish domain: labels of letters, digits, `-` and non-ASCII (IDN in Unicode
/// form), separated by single dots. Also accepts an IPv4 literal.
fn is_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 1023
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| {
                    c.is_alphanumeric()
                        || c == '-'
                        || (!c.is_ascii() && !c.is_control() && !c.is_whitespace())
                })
        })
}

/// Draws `N` bytes from the operating system's CSPRNG and hex-encodes them.
fn random_hex<const N: usize>() -> Result<String, getrandom::Error> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf)?;
    Ok(hex::encode(buf))
}

/// An XEP-0357 node: 128 random bits as 32 lowercase hex characters (URL-safe).
///
/// In client mode the node name is the only capability protecting a push (PEP forwards
/// no publish-options), so it must be unguessable. UNIQUE in the database.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Node(String);

impl Node {
    /// A fresh node from getrandom.
    pub fn generate() -> Result<Self, getrandom::Error> {
        random_hex::<16>().map(Self)
    }

    /// A node named by a user's server (a publish, a PEP event). This server generates
    /// 32 hex characters; other app servers' nodes (URL-safe base64, alphanumerics, as a
    /// migrated database may hold) fit the same rule: 1 to [`Node::MAX_LEN`] URL-safe
    /// characters. Anything else cannot be one of ours and is answered as an unknown
    /// node without a lookup.
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let url_safe = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
        if !s.is_empty() && s.len() <= Self::MAX_LEN && s.bytes().all(url_safe) {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidValue("a node is 1 to 256 URL-safe characters"))
        }
    }

    /// The longest node accepted from outside.
    pub const MAX_LEN: usize = 256;

    /// Rebuilds a node read back from the database.
    pub(crate) fn from_stored(s: String) -> Self {
        Self(s)
    }

    /// The node text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The XEP-0357 publish-options secret: 192 random bits as 48 hex characters.
///
/// It has no `PartialEq`: the only comparison is [`Secret::verify`], in constant time,
/// and its `Debug` is redacted so it cannot leak into logs.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// A fresh secret from getrandom.
    pub fn generate() -> Result<Self, getrandom::Error> {
        random_hex::<24>().map(Self)
    }

    /// Rebuilds a secret read back from the database.
    pub(crate) fn from_stored(s: String) -> Self {
        Self(s)
    }

    /// The secret text, for the registration answer and the database only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares a candidate in time independent of where they differ. The length of our
    /// own secret is public (always 48), so an early return on length leaks nothing.
    pub fn verify(&self, candidate: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), candidate.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// The list of host suffixes a channel URI may point at, matched at a dot boundary.
///
/// This is a security boundary: the WNS bearer token is sent to whatever URI a device
/// registered, so only Microsoft's WNS hosts (or the test's own fake) may pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelHosts(Vec<String>);

impl ChannelHosts {
    /// Builds the allowlist from lowercase host suffixes such as `notify.windows.com`.
    pub fn new(suffixes: Vec<String>) -> Self {
        Self(
            suffixes
                .into_iter()
                .map(|s| s.to_ascii_lowercase())
                .collect(),
        )
    }

    /// True if `host` equals a suffix or ends with `.` + suffix.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.0.iter().any(|suffix| {
            host == *suffix
                || (host.len() > suffix.len()
                    && host.ends_with(suffix.as_str())
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.')
        })
    }

    /// The suffixes, for messages and `check-config`.
    pub fn suffixes(&self) -> &[String] {
        &self.0
    }
}

/// A WNS channel URI: `https://`, a host on the allowlist, an optional port, and a path
/// and query of printable ASCII. Stored and later POSTed to verbatim, never re-encoded.
#[derive(Clone, PartialEq, Eq)]
pub struct ChannelUri(String);

impl ChannelUri {
    /// Longest URI accepted; real ones are around 200 characters.
    pub const MAX_LEN: usize = 2048;

    /// Checks the URI against the allowlist. Userinfo (`user@host`) is rejected, so the
    /// host we check is the host a client library would connect to.
    pub fn parse(s: &str, hosts: &ChannelHosts) -> Result<Self, InvalidValue> {
        if s.len() > Self::MAX_LEN {
            return Err(InvalidValue("channel_uri is too long"));
        }
        if !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidValue(
                "channel_uri must be printable ASCII without spaces",
            ));
        }
        let rest = match s.get(..8) {
            Some(scheme) if scheme.eq_ignore_ascii_case("https://") => &s[8..],
            _ => return Err(InvalidValue("channel_uri must use https")),
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..end];
        if rest[end..].contains('#') {
            return Err(InvalidValue("channel_uri must not contain a fragment"));
        }
        if authority.contains('@') {
            return Err(InvalidValue(
                "channel_uri must not contain user information",
            ));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        if let Some(p) = port
            && !matches!(p.parse::<u16>(), Ok(n) if n > 0)
        {
            return Err(InvalidValue("channel_uri has an invalid port"));
        }
        let host_ok = !host.is_empty()
            && host.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !host_ok {
            return Err(InvalidValue("channel_uri has an invalid host"));
        }
        if !hosts.allows(host) {
            return Err(InvalidValue("channel_uri host is not an allowed WNS host"));
        }
        Ok(Self(s.to_owned()))
    }

    /// Rebuilds a URI read back from the database. The WNS sender checks it again
    /// against the allowlist at send time.
    pub(crate) fn from_stored(s: String) -> Self {
        Self(s)
    }

    /// The URI exactly as registered.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The host, lowercased as written (no port), for the send-time allowlist check and
    /// for logs (the path and query carry the device's channel token).
    pub fn host(&self) -> &str {
        let authority = self.authority();
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    }

    /// `host[:port]` as written: one WNS endpoint (where connections go).
    pub fn authority(&self) -> &str {
        let rest = self.0.get(8..).unwrap_or("");
        rest.split(['/', '?', '#']).next().unwrap_or("")
    }
}

impl fmt::Debug for ChannelUri {
    /// Host only: the query carries the device's channel token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelUri(https://{}/…)", self.host())
    }
}

/// What a push says, independent of how a generation encodes it: the XEP-0357 summary.
/// Parsed from the publish by `xmpp`, carried by `push`, encoded per generation by `wns`.
/// Serialisable: with several instances a trailing push's summary waits in the database.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    /// `message-count`, 0 if absent or not a number.
    pub message_count: u64,
    /// `pending-subscription-count`, likewise.
    pub pending_subscription_count: u64,
    /// `last-message-sender`, if the user's server includes it.
    pub last_message_sender: Option<String>,
    /// `last-message-body`, if the user's server includes it.
    pub last_message_body: Option<String>,
}

/// The WNS access token as it is kept across restarts. `Debug` never shows the value.
#[derive(Clone)]
pub struct SavedToken {
    /// The bearer token.
    pub access_token: String,
    /// Unix seconds at which it expires.
    pub expires_at: i64,
}

impl fmt::Debug for SavedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SavedToken(…, expires_at {})", self.expires_at)
    }
}

/// The domain of a JID as it appears in a stanza's `from` (full, bare or a bare domain),
/// lowercased: publishes for bare_jid accounts must come from the account's domain.
pub fn jid_domain(jid: &str) -> String {
    let no_resource = jid.split('/').next().unwrap_or("");
    no_resource
        .rsplit_once('@')
        .map_or(no_resource, |(_, d)| d)
        .to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV: &str = "5486bd868050a620141f4e81c9f1d2c67ab0de27e5e26d218ca41c9394ee806b";

    #[test]
    fn account_key_matches_the_protocol_vectors() {
        let dev = DeviceId::parse(DEV).unwrap();
        let cases = [
            (
                "someClient@xmpp.uwpx.org",
                "e5397e96c6ff4d629ab9f203eec3ff17c777b2127cf1b41005e54877487ba982",
            ),
            (
                "someOtherClient@xmpp.uwpx.org",
                "98d0e1085fc483d8371c8cde438fed253918a4ceae30a527da34c3dca4918e62",
            ),
            (
                "someclient@xmpp.uwpx.org",
                "6669cf58f3f0209665bb6db1f9346e83fd94b28cd9c5d20d135a03271dfdebe5",
            ),
        ];
        for (jid, key) in cases {
            let jid = BareJid::parse(jid).unwrap();
            assert_eq!(AccountKey::derive(&dev, &jid).as_str(), key);
        }
    }

    #[test]
    fn device_id_rules() {
        assert!(DeviceId::parse(DEV).is_ok());
        assert!(DeviceId::parse("A1").is_ok());
        assert!(DeviceId::parse(&"a".repeat(256)).is_ok());
        for bad in ["", "xyz", "12 34", &"a".repeat(257)] {
            assert!(DeviceId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn account_id_rules() {
        assert!(AccountKey::parse("DADBBB93").is_ok());
        assert!(AccountKey::parse(&"é".repeat(128)).is_ok());
        for bad in ["", "a\u{0}b", "tab\there", &"a".repeat(129)] {
            assert!(AccountKey::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bare_jid_rules() {
        let j = BareJid::parse("someClient@XMPP.uwpx.org").unwrap();
        assert_eq!(j.domain(), "xmpp.uwpx.org");
        assert!(!format!("{j:?}").contains("someClient"));
        assert!(BareJid::parse("user@münchen.de").is_ok());
        for bad in [
            "",
            "nodomain",
            "@example.org",
            "user@",
            "user@example.org/res",
            "a@b@c",
            "us er@example.org",
            "user@exa mple.org",
            "user@.org",
            "user@org.",
        ] {
            assert!(BareJid::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn channel_uri_allowlist_is_matched_at_a_dot_boundary() {
        let hosts = ChannelHosts::new(vec!["notify.windows.com".into()]);
        let ok = "https://db5p.notify.windows.com/?token=AwYAAAB%2bExample%2fToken%3d";
        assert_eq!(ChannelUri::parse(ok, &hosts).unwrap().as_str(), ok);
        assert!(ChannelUri::parse("HTTPS://notify.windows.com/?t=1", &hosts).is_ok());
        for bad in [
            "http://db5p.notify.windows.com/?token=x",
            "https://evilnotify.windows.com/?token=x",
            "https://notify.windows.com.evil.org/?token=x",
            "https://x@db5p.notify.windows.com/?token=x",
            "https://db5p.notify.windows.com:0/?token=x",
            "https://db5p.notify.windows.com/?token=x y",
            "https://db5p.notify.windows.com/#frag",
            "https:///?token=x",
            "ms-app://s-1-15-2-1",
        ] {
            assert!(ChannelUri::parse(bad, &hosts).is_err(), "{bad}");
        }
        let local = ChannelHosts::new(vec!["localhost".into()]);
        let uri = ChannelUri::parse("https://localhost:8443/c/1", &local).unwrap();
        assert_eq!(uri.host(), "localhost");
        assert!(!format!("{uri:?}").contains("c/1"));
        assert!(ChannelUri::parse("https://localhost.evil:8443/c/1", &local).is_err());
    }

    #[test]
    fn secrets_compare_only_by_value_and_never_print() {
        let s = Secret::generate().unwrap();
        assert_eq!(s.expose().len(), 48);
        assert!(s.verify(s.expose()));
        assert!(!s.verify(&s.expose()[1..]));
        assert!(!s.verify(""));
        assert_eq!(format!("{s:?}"), "Secret(…)");
        let n = Node::generate().unwrap();
        assert_eq!(n.as_str().len(), 32);
        assert_ne!(n, Node::generate().unwrap());
        assert_eq!(Node::parse(n.as_str()), Ok(n.clone()));
        assert!(
            Node::parse("node-3c3799e23e1b").is_ok(),
            "another server's node"
        );
        for bad in ["", "a b", "n/1", "<x>", &"a".repeat(257)] {
            assert!(Node::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn generation_from_version_and_form() {
        use AccountForm::*;
        use ProtocolVersion::*;
        assert_eq!(
            ClientGeneration::of(V2, Some(AccountId)),
            ClientGeneration::V2
        );
        assert_eq!(
            ClientGeneration::of(V1, Some(AccountId)),
            ClientGeneration::V1AccountId
        );
        assert_eq!(
            ClientGeneration::of(V1, Some(BareJid)),
            ClientGeneration::V1BareJid
        );
        assert_eq!(ClientGeneration::of(V1, None), ClientGeneration::V1BareJid);
    }

    #[test]
    fn jid_domains() {
        assert_eq!(jid_domain("localhost"), "localhost");
        assert_eq!(jid_domain("User@Example.ORG/res"), "example.org");
        assert_eq!(jid_domain("example.org/res@x"), "example.org");
    }
}
