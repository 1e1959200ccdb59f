//! Configuration: `configuration.json` in the seed's format, validated into typed values.
//!
//! Loading is two steps. First every key in the file is checked against [`keys::KEYS`]:
//! an unknown or misspelled key, a section that is not an object, and two spellings of
//! one key are errors that name the key. Then each section is read by its own function
//! (`sections.rs`, `xmpp.rs`, `wns.rs`, `tls.rs`) through `doc.rs`, whose readers take
//! the key's constant from [`keys`] and with it the one default and range. The result is
//! [`Config`], where durations are `Duration`s, addresses are resolved, paths are
//! absolute, JIDs are typed and PEM files are read (`files.rs`: regular files only,
//! size-capped) and checked (the TLS key against its certificate). Components get their
//! own sub-struct, never the whole `Config`. What loads but looks wrong goes to
//! [`Config::warnings`].
//!
//! Threads: runs once on `main` before anything starts. Reads files; no network (the
//! TLS pair check is a handshake over an in-memory pipe).

mod doc;
mod files;
mod json;
pub mod keys;
mod sections;
mod spec;
mod tls;
mod wns;
mod xmpp;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::types::{BareJid, ChannelHosts};
use doc::Doc;

/// Why the configuration could not be used. `main` prints it as one line and exits 2.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read (missing, permissions).
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not JSON; serde_json's message carries line and column.
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        source: serde_json::Error,
    },
    /// A key that the server does not know, with its full dotted path.
    UnknownKey(String),
    /// Two spellings of one key are both given (e.g. `cert_path` and `serverCertPath`):
    /// refused rather than silently taking one.
    TwoSpellings {
        /// The spelling met first, as a dotted path.
        first: String,
        /// The other spelling.
        second: String,
    },
    /// A key is present but its value is wrong, or a required key is missing.
    Invalid {
        /// The dotted path.
        key: String,
        /// What is wrong, in words an operator can act on.
        reason: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read { path, source } => {
                write!(f, "cannot read configuration {}: {source}", path.display())
            }
            Self::Parse { path, source } => {
                write!(
                    f,
                    "configuration {} is not valid JSON: {source}",
                    path.display()
                )
            }
            Self::UnknownKey(k) => write!(f, "configuration: unknown key `{k}`"),
            Self::TwoSpellings { first, second } => write!(
                f,
                "configuration: `{first}` and `{second}` are two spellings of one key; keep one"
            ),
            Self::Invalid { key, reason } => write!(f, "configuration: `{key}` {reason}"),
        }
    }
}

impl std::error::Error for ConfigError {}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// A value that must never be printed: passwords and client secrets.
#[derive(Clone, PartialEq, Eq)]
pub struct Masked(String);

impl Masked {
    /// The secret text, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Masked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"********\"")
    }
}

/// `db.url`: a PostgreSQL connection URL. It carries a password, so `Debug` (what
/// `check-config` prints) and [`DbUrl::masked`] (what logs use) replace it with stars.
#[derive(Clone, PartialEq, Eq)]
pub struct DbUrl(String);

impl DbUrl {
    /// Accepts `postgres://` and `postgresql://` URLs.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Ok(Self(s.to_owned()))
        } else {
            Err("must be a postgres:// or postgresql:// URL".into())
        }
    }

    /// The URL with its password, for the one place that connects.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with the password (if any) replaced by `****`.
    pub fn masked(&self) -> String {
        let Some((scheme, rest)) = self.0.split_once("://") else {
            return "****".into();
        };
        let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        match authority.rsplit_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
                let pass = if userinfo.contains(':') { ":****" } else { "" };
                let query = mask_query_password(tail);
                format!("{scheme}://{user}{pass}@{host}{query}")
            }
            None => format!("{scheme}://{authority}{}", mask_query_password(tail)),
        }
    }
}

/// `…?password=x&…` → `…?password=****&…`.
fn mask_query_password(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_owned();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some(("password", _)) => "password=****".to_owned(),
            _ => kv.to_owned(),
        })
        .collect();
    format!("{path}?{}", query.join("&"))
}

impl fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.masked())
    }
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The registration listener.
    pub tcp: TcpConfig,
    /// Storage.
    pub db: DbConfig,
    /// XMPP identity.
    pub xmpp: XmppConfig,
    /// WNS credentials and sending.
    pub wns: WnsConfig,
    /// Input limits.
    pub limits: Limits,
    /// Logging.
    pub log: LogConfig,
    /// Publish handling.
    pub push: PushConfig,
    /// `metrics.listen`.
    pub metrics_listen: Option<SocketAddr>,
    /// `shutdown.grace_ms`.
    pub shutdown_grace: Duration,
    /// Things that load but are probably not what the operator meant (a key that the
    /// chosen mode ignores, a placeholder credential). `main` prints them to stderr for
    /// `check-config` and logs them at warn when starting.
    pub warnings: Vec<String>,
}

/// `tcp.*`: where clients connect and how long they may take.
#[derive(Debug, Clone)]
pub struct TcpConfig {
    /// Resolved `tcp.host`:`tcp.port`.
    pub addr: SocketAddr,
    /// `tcp.tls`, absent for plain TCP.
    pub tls: Option<TlsConfig>,
    /// `tcp.read_timeout_ms`.
    pub read_timeout: Duration,
    /// `tcp.max_connections`.
    pub max_connections: usize,
    /// `tcp.max_connections_per_ip`.
    pub max_connections_per_ip: usize,
}

/// `tcp.tls.*`: PEM files, already checked to be readable and usable.
#[derive(Clone)]
pub struct TlsConfig {
    /// Absolute path of the certificate chain.
    pub cert_path: PathBuf,
    /// Absolute path of the PKCS#8 key.
    pub key_path: PathBuf,
    /// The loaded identity, built at load time so a bad file fails before start.
    pub identity: native_tls::Identity,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish()
    }
}

/// `db.*`.
#[derive(Debug, Clone)]
pub struct DbConfig {
    /// Absolute path of the SQLite file (unused when `url` is set).
    pub path: PathBuf,
    /// `db.url`: PostgreSQL instead of SQLite when set.
    pub url: Option<DbUrl>,
    /// `db.pool_size`: PostgreSQL connections this instance keeps open.
    pub pool_size: u32,
    /// `db.ca_file`, read at load time: a root trusted for TLS to PostgreSQL.
    pub ca_pem: Option<Pem>,
    /// How long one request may take in all (`tcp.read_timeout_ms`): a database
    /// server's statement and lock timeouts are cut to fit inside it.
    pub request_timeout: Duration,
    /// `db.synchronous`.
    pub synchronous: Synchronous,
    /// `db.mmap_size_mb`, in bytes.
    pub mmap_size: u64,
    /// `db.cache_size_mb`, in bytes.
    pub cache_size: u64,
    /// `db.device_ttl_days`.
    pub device_ttl_days: u32,
}

/// SQLite's durability setting, see the `db.synchronous` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synchronous {
    /// fsync at every commit: an acknowledged registration survives power loss.
    Full,
    /// fsync at checkpoints only: survives a process crash (`kill -9`), not power loss.
    Normal,
}

impl Synchronous {
    /// The pragma value.
    pub fn pragma(self) -> &'static str {
        match self {
            Self::Full => "FULL",
            Self::Normal => "NORMAL",
        }
    }
}

/// `xmpp.*`.
#[derive(Clone)]
pub struct XmppConfig {
    /// `xmpp.bare_jid`, validated.
    pub bare_jid: BareJid,
    /// `xmpp.password`.
    pub password: Option<Masked>,
    /// `xmpp.component`: component mode when present.
    pub component: Option<ComponentConfig>,
    /// Client mode's login, when `xmpp.component` is absent and a password is set.
    pub client: Option<ClientConfig>,
    /// `xmpp.ping_interval_s`.
    pub ping_interval: Duration,
}

/// Shows the service's own JID in full: unlike a user's, it is not personal data, and
/// `check-config` must show it.
impl fmt::Debug for XmppConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XmppConfig")
            .field("bare_jid", &self.bare_jid.as_str())
            .field("password", &self.password)
            .field("component", &self.component)
            .field("client", &self.client)
            .field("ping_interval", &self.ping_interval)
            .finish()
    }
}

/// A component's JID: a domain such as `push.example.org`, no local part or resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentJid(String);

impl ComponentJid {
    /// Accepts a dotted domain (or `localhost`) without `@`, `/` or spaces.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        if s.is_empty() || s.contains(['@', '/', ' ']) || !s.contains('.') && s != "localhost" {
            return Err("must be a domain JID like push.example.org");
        }
        Ok(Self(s.to_owned()))
    }

    /// The JID text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The domain of the XMPP server the component is attached to, where pings go:
    /// `push.example.org` → `example.org` (`localhost` stays `localhost`).
    pub fn server_domain(&self) -> &str {
        self.0.split_once('.').map_or(&self.0, |(_, d)| d)
    }
}

impl fmt::Display for ComponentJid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `xmpp.component.*`: the XEP-0114 connection.
#[derive(Debug, Clone)]
pub struct ComponentConfig {
    /// The component JID.
    pub jid: ComponentJid,
    /// The shared secret.
    pub secret: Masked,
    /// The server's component address.
    pub host: String,
    /// The server's component port.
    pub port: u16,
}

/// Client mode: log in as `xmpp.bare_jid`.
#[derive(Clone)]
pub struct ClientConfig {
    /// The account.
    pub bare_jid: BareJid,
    /// Its password.
    pub password: Masked,
    /// `xmpp.host`; `None`: the JID's domain by DNS SRV (xmpp/srv.rs).
    pub host: Option<String>,
    /// `xmpp.port`.
    pub port: u16,
    /// `xmpp.resource`.
    pub resource: String,
    /// `xmpp.ca_file`, read at load time.
    pub ca_pem: Option<Pem>,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("bare_jid", &self.bare_jid.as_str())
            .field("password", &self.password)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("resource", &self.resource)
            .field("ca_pem", &self.ca_pem)
            .finish()
    }
}

/// `push.*`.
#[derive(Debug, Clone)]
pub struct PushConfig {
    /// `push.min_interval_ms`.
    pub min_interval: Duration,
}

/// PEM text read from a file; `Debug` shows only its size.
#[derive(Clone)]
pub struct Pem(pub Vec<u8>);

impl fmt::Debug for Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PEM ({} bytes)", self.0.len())
    }
}

/// `wns.*`.
#[derive(Debug, Clone)]
pub struct WnsConfig {
    /// `wns.packet_id` and `wns.client_secret`, present only together.
    pub credentials: Option<WnsCredentials>,
    /// `wns.channel_hosts`.
    pub channel_hosts: ChannelHosts,
    /// `wns.token_url`.
    pub token_url: String,
    /// `wns.ca_file`, read at load time.
    pub ca_pem: Option<Pem>,
    /// `wns.workers`.
    pub workers: usize,
    /// `wns.queue_capacity`.
    pub queue_capacity: usize,
    /// `wns.timeout_ms`.
    pub timeout: Duration,
    /// `wns.max_attempts`.
    pub max_attempts: u32,
    /// `wns.deadline_ms`.
    pub deadline: Duration,
    /// `wns.cache_policy`; `None` omits the header.
    pub cache_policy: Option<String>,
    /// `wns.ttl_s`; `None` omits the header.
    pub ttl_s: Option<u64>,
    /// `wns.priority`; `None` omits the header.
    pub priority: Option<u8>,
}

/// The WNS client credentials from the Partner Center.
#[derive(Debug, Clone)]
pub struct WnsCredentials {
    /// The package SID (client_id).
    pub packet_id: String,
    /// The client secret.
    pub client_secret: Masked,
}

/// `limits.*`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `limits.max_accounts`.
    pub max_accounts: usize,
    /// `limits.max_request_bytes`.
    pub max_request_bytes: usize,
}

/// `log.*`.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// `log.level`.
    pub level: log::LevelFilter,
    /// `log.file`, absolute.
    pub file: Option<PathBuf>,
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let bytes = files::read_regular(path, files::MAX_CONFIG_BYTES).map_err(|source| {
            ConfigError::Read {
                path: path.to_owned(),
                source,
            }
        })?;
        let root = json::parse(&bytes).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let base = if base.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base
        };
        Self::from_value(&root, &base)
    }

    /// Validates an already parsed document; relative paths are resolved against `base`.
    pub fn from_value(root: &Value, base: &Path) -> Result<Config, ConfigError> {
        let Value::Object(map) = root else {
            return Err(invalid("(top level)", "must be a JSON object"));
        };
        check_known_keys(map, "")?;
        Self::from_doc(&Doc::new(map, base))
    }

    /// Reads every section; each reader takes its defaults and ranges from [`keys`].
    fn from_doc(doc: &Doc<'_>) -> Result<Config, ConfigError> {
        let tcp = sections::tcp(doc)?;
        let db = sections::db(doc, tcp.read_timeout)?;
        Ok(Config {
            tcp,
            db,
            xmpp: xmpp::load(doc)?,
            wns: wns::load(doc)?,
            limits: sections::limits(doc)?,
            log: sections::log(doc)?,
            push: sections::push(doc)?,
            metrics_listen: sections::metrics_listen(doc)?,
            shutdown_grace: Duration::from_millis(doc.int(&keys::SHUTDOWN_GRACE_MS)?),
            warnings: doc.take_warnings(),
        })
    }

    /// The JID users' servers publish to, returned as `push_bare_jid`: the component's
    /// JID in component mode, else `xmpp.bare_jid`.
    pub fn push_jid(&self) -> &str {
        self.xmpp
            .component
            .as_ref()
            .map_or(self.xmpp.bare_jid.as_str(), |c| c.jid.as_str())
    }
}

/// Whether a credential is obviously a placeholder from an example ("your-…",
/// "change-me", a run of zeros), so that `check-config` can say so before WNS or the XMPP
/// server refuses it at run time.
fn looks_like_placeholder(value: &str) -> bool {
    let v = value.to_ascii_lowercase();
    let words = [
        "your",
        "change-me",
        "changeme",
        "placeholder",
        "example",
        "xxxx",
        "secret",
    ];
    words.iter().any(|w| v.contains(w)) || v.contains("0000000000")
}

/// Rejects any key that is not in [`keys::KEYS`], naming its full path; a section given
/// as something other than an object; and two spellings of one key.
fn check_known_keys(map: &Map<String, Value>, prefix: &str) -> Result<(), ConfigError> {
    let mut seen: Vec<(&'static str, String)> = Vec::new();
    for (k, v) in map {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        let Some(key) = keys::lookup(&path) else {
            return Err(ConfigError::UnknownKey(path));
        };
        if let Some((_, first)) = seen.iter().find(|(canon, _)| *canon == key.path()) {
            return Err(ConfigError::TwoSpellings {
                first: first.clone(),
                second: path,
            });
        }
        if key.is_section() {
            match v {
                Value::Object(inner) => check_known_keys(inner, key.path())?,
                Value::Null => {}
                other => {
                    return Err(invalid(
                        &path,
                        format!(
                            "must be an object (a section of keys), not {}",
                            json_kind(other)
                        ),
                    ));
                }
            }
        }
        seen.push((key.path(), path));
    }
    Ok(())
}

/// "a string", "a number", …: for errors about a value of the wrong type.
fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests;
