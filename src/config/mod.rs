//! Configuration: `configuration.json` in the seed's format, validated into typed values.
//!
//! Loading is two steps. First every key in the file is checked against [`keys::KEYS`],
//! so an unknown or misspelled key is an error that names it. Then each key is read with
//! its own validator into [`Config`], where durations are `Duration`s, addresses are
//! resolved and paths are made absolute. Components get their own sub-struct, never the
//! whole `Config`.
//!
//! Threads: runs once on `main` before anything starts. Reads files; no network.

pub mod keys;

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::types::{BareJid, ChannelHosts};

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
#[derive(Debug, Clone)]
pub struct XmppConfig {
    /// `xmpp.bare_jid`, validated.
    pub bare_jid: String,
    /// `xmpp.password`.
    pub password: Option<Masked>,
    /// `xmpp.component`: component mode when present.
    pub component: Option<ComponentConfig>,
    /// Client mode's login, when `xmpp.component` is absent and a password is set.
    pub client: Option<ClientConfig>,
    /// `xmpp.ping_interval_s`.
    pub ping_interval: Duration,
}

/// `xmpp.component.*`: the XEP-0114 connection.
#[derive(Debug, Clone)]
pub struct ComponentConfig {
    /// The component JID.
    pub jid: String,
    /// The shared secret.
    pub secret: Masked,
    /// The server's component address.
    pub host: String,
    /// The server's component port.
    pub port: u16,
}

/// Client mode: log in as `xmpp.bare_jid`.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The account.
    pub bare_jid: String,
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
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let root: Value = serde_json::from_str(&text).map_err(|source| ConfigError::Parse {
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
        let doc = Doc { root: map, base };

        let host = doc.string("tcp.host")?.unwrap_or_else(|| "0.0.0.0".into());
        let port = doc.integer("tcp.port", 0, 65535)?.unwrap_or(1997) as u16;
        let addr = (host.as_str(), port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| {
                invalid(
                    "tcp.host",
                    format!("`{host}` is not an address this machine can listen on"),
                )
            })?;
        let tls = match doc.get("tcp.tls") {
            None | Some(Value::Null) => None,
            Some(Value::Object(_)) => Some(load_tls(&doc)?),
            Some(_) => return Err(invalid("tcp.tls", "must be an object")),
        };
        let tcp = TcpConfig {
            addr,
            tls,
            read_timeout: Duration::from_millis(
                doc.integer("tcp.read_timeout_ms", 100, 3_600_000)?
                    .unwrap_or(10_000),
            ),
            max_connections: doc
                .integer("tcp.max_connections", 1, 100_000)?
                .unwrap_or(1024) as usize,
            max_connections_per_ip: doc
                .integer("tcp.max_connections_per_ip", 1, 100_000)?
                .unwrap_or(64) as usize,
        };

        let synchronous = match doc.string("db.synchronous")?.as_deref() {
            None | Some("full") => Synchronous::Full,
            Some("normal") => Synchronous::Normal,
            Some(other) => {
                return Err(invalid(
                    "db.synchronous",
                    format!("must be \"full\" or \"normal\", not \"{other}\""),
                ));
            }
        };
        let url = match doc.string("db.url")? {
            None => None,
            Some(u) => Some(DbUrl::parse(&u).map_err(|e| invalid("db.url", e))?),
        };
        if url.is_some() && doc.get("db.path").is_some() {
            return Err(invalid(
                "db.url",
                "cannot be set together with db.path: db.path selects SQLite, db.url PostgreSQL; keep one",
            ));
        }
        let db = DbConfig {
            path: doc
                .path("db.path")?
                .unwrap_or_else(|| base.join("pushServer.db")),
            url,
            pool_size: doc.integer("db.pool_size", 1, 1000)?.unwrap_or(8) as u32,
            ca_pem: read_pem(&doc, "db.ca_file")?,
            request_timeout: tcp.read_timeout,
            synchronous,
            device_ttl_days: doc.integer("db.device_ttl_days", 1, 3650)?.unwrap_or(90) as u32,
        };

        let bare_jid = doc
            .string("xmpp.bare_jid")?
            .ok_or_else(|| invalid("xmpp.bare_jid", "is required"))?;
        BareJid::parse(&bare_jid).map_err(|e| invalid("xmpp.bare_jid", e.0))?;
        let component = match doc.get("xmpp.component") {
            None | Some(Value::Null) => None,
            Some(Value::Object(_)) => {
                let jid = doc.string("xmpp.component.jid")?.ok_or_else(|| {
                    invalid("xmpp.component.jid", "is required in `xmpp.component`")
                })?;
                if jid.contains(['@', '/', ' ']) || !jid.contains('.') && jid != "localhost" {
                    return Err(invalid(
                        "xmpp.component.jid",
                        "must be a domain JID like push.example.org",
                    ));
                }
                Some(ComponentConfig {
                    jid,
                    secret: doc
                        .string("xmpp.component.secret")?
                        .map(Masked)
                        .ok_or_else(|| {
                            invalid("xmpp.component.secret", "is required in `xmpp.component`")
                        })?,
                    host: doc
                        .string("xmpp.component.host")?
                        .unwrap_or_else(|| "127.0.0.1".into()),
                    port: doc
                        .integer("xmpp.component.port", 1, 65535)?
                        .unwrap_or(5347) as u16,
                })
            }
            Some(_) => return Err(invalid("xmpp.component", "must be an object")),
        };
        let password = doc.string("xmpp.password")?.map(Masked);
        let client = match (&component, &password) {
            (None, Some(password)) => Some(ClientConfig {
                host: doc.string("xmpp.host")?,
                port: doc.integer("xmpp.port", 1, 65535)?.unwrap_or(5222) as u16,
                resource: doc
                    .string("xmpp.resource")?
                    .unwrap_or_else(|| "push".into()),
                ca_pem: read_pem(&doc, "xmpp.ca_file")?,
                bare_jid: bare_jid.clone(),
                password: password.clone(),
            }),
            _ => None,
        };
        let xmpp = XmppConfig {
            bare_jid,
            password,
            component,
            client,
            ping_interval: Duration::from_secs(
                doc.integer("xmpp.ping_interval_s", 5, 3600)?.unwrap_or(60),
            ),
        };
        let push = PushConfig {
            min_interval: Duration::from_millis(
                doc.integer("push.min_interval_ms", 0, 3_600_000)?
                    .unwrap_or(2000),
            ),
        };

        let credentials = match (
            doc.string("wns.packet_id")?,
            doc.string("wns.client_secret")?,
        ) {
            (Some(packet_id), Some(secret)) => Some(WnsCredentials {
                packet_id,
                client_secret: Masked(secret),
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid(
                    "wns.client_secret",
                    "is required when `wns.packet_id` is set",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "wns.packet_id",
                    "is required when `wns.client_secret` is set",
                ));
            }
        };
        let channel_hosts = match doc.get("wns.channel_hosts") {
            None => vec!["notify.windows.com".to_owned()],
            Some(Value::Array(items)) if !items.is_empty() => items
                .iter()
                .map(|v| match v.as_str() {
                    Some(s) if !s.is_empty() && !s.contains(['/', ':', '@', ' ']) => {
                        Ok(s.to_owned())
                    }
                    _ => Err(invalid(
                        "wns.channel_hosts",
                        "must list host names like \"notify.windows.com\"",
                    )),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(invalid(
                    "wns.channel_hosts",
                    "must be a non-empty array of host names",
                ));
            }
        };
        let token_url = doc
            .string("wns.token_url")?
            .unwrap_or_else(|| "https://login.live.com/accesstoken.srf".into());
        if !token_url.starts_with("https://") {
            return Err(invalid("wns.token_url", "must be an https URL"));
        }
        let ca_pem = read_pem(&doc, "wns.ca_file")?;
        let timeout =
            Duration::from_millis(doc.integer("wns.timeout_ms", 100, 120_000)?.unwrap_or(5000));
        let deadline = Duration::from_millis(
            doc.integer("wns.deadline_ms", 100, 600_000)?
                .unwrap_or(20_000),
        );
        let cache_policy = match doc.get("wns.cache_policy") {
            None => Some("cache".to_owned()),
            Some(Value::Null) => None,
            Some(Value::String(s)) if s == "cache" || s == "no-cache" => Some(s.clone()),
            Some(_) => {
                return Err(invalid(
                    "wns.cache_policy",
                    "must be \"cache\", \"no-cache\" or null",
                ));
            }
        };
        let ttl_s = match doc.get("wns.ttl_s") {
            None => Some(86_400),
            Some(Value::Null) => None,
            Some(_) => doc.integer("wns.ttl_s", 1, 30 * 86_400)?,
        };
        let priority = match doc.get("wns.priority") {
            None => Some(1),
            Some(Value::Null) => None,
            Some(_) => doc.integer("wns.priority", 1, 4)?.map(|p| p as u8),
        };
        let wns = WnsConfig {
            credentials,
            channel_hosts: ChannelHosts::new(channel_hosts),
            token_url,
            ca_pem,
            workers: doc.integer("wns.workers", 1, 256)?.unwrap_or(4) as usize,
            queue_capacity: doc
                .integer("wns.queue_capacity", 1, 1_000_000)?
                .unwrap_or(4096) as usize,
            timeout,
            max_attempts: doc.integer("wns.max_attempts", 1, 20)?.unwrap_or(3) as u32,
            deadline,
            cache_policy,
            ttl_s,
            priority,
        };

        let limits = Limits {
            max_accounts: doc.integer("limits.max_accounts", 1, 10_000)?.unwrap_or(32) as usize,
            max_request_bytes: doc
                .integer("limits.max_request_bytes", 1024, 16 * 1024 * 1024)?
                .unwrap_or(65536) as usize,
        };

        let level = match doc.string("log.level")?.as_deref() {
            None => log::LevelFilter::Info,
            Some(s) => s.parse().map_err(|_| {
                invalid(
                    "log.level",
                    format!("must be one of error, warn, info, debug, trace, not \"{s}\""),
                )
            })?,
        };
        let log = LogConfig {
            level,
            file: doc.path("log.file")?,
        };

        let metrics_listen = match doc.string("metrics.listen")? {
            None => None,
            Some(a) => Some(a.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    "metrics.listen",
                    format!("`{a}` is not an address like 127.0.0.1:9090"),
                )
            })?),
        };
        Ok(Config {
            tcp,
            db,
            xmpp,
            wns,
            limits,
            log,
            push,
            metrics_listen,
            shutdown_grace: Duration::from_millis(
                doc.integer("shutdown.grace_ms", 0, 600_000)?
                    .unwrap_or(5000),
            ),
        })
    }

    /// The JID users' servers publish to, returned as `push_bare_jid`: the component's
    /// JID in component mode, else `xmpp.bare_jid`.
    pub fn push_jid(&self) -> &str {
        self.xmpp
            .component
            .as_ref()
            .map_or(&self.xmpp.bare_jid, |c| &c.jid)
    }
}

/// Reads a PEM file of certificates named by `key`, if set.
fn read_pem(doc: &Doc<'_>, key: &str) -> Result<Option<Pem>, ConfigError> {
    let Some(p) = doc.path(key)? else {
        return Ok(None);
    };
    let pem =
        std::fs::read(&p).map_err(|e| invalid(key, format!("cannot read {}: {e}", p.display())))?;
    if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
        return Err(invalid(
            key,
            format!("{} holds no PEM certificate", p.display()),
        ));
    }
    Ok(Some(Pem(pem)))
}

fn load_tls(doc: &Doc<'_>) -> Result<TlsConfig, ConfigError> {
    let cert_path = doc
        .path("tcp.tls.cert_path")?
        .ok_or_else(|| invalid("tcp.tls.cert_path", "is required when `tcp.tls` is set"))?;
    let key_path = doc
        .path("tcp.tls.key_path")?
        .ok_or_else(|| invalid("tcp.tls.key_path", "is required when `tcp.tls` is set"))?;
    let cert = std::fs::read(&cert_path).map_err(|e| {
        invalid(
            "tcp.tls.cert_path",
            format!("cannot read {}: {e}", cert_path.display()),
        )
    })?;
    let key = std::fs::read(&key_path).map_err(|e| {
        invalid(
            "tcp.tls.key_path",
            format!("cannot read {}: {e}", key_path.display()),
        )
    })?;
    let has = |needle: &[u8]| key.windows(needle.len()).any(|w| w == needle);
    if has(b"BEGIN RSA PRIVATE KEY") || has(b"BEGIN EC PRIVATE KEY") {
        return Err(invalid(
            "tcp.tls.key_path",
            "holds a PKCS#1/SEC1 key; convert it with `openssl pkcs8 -topk8 -nocrypt -in old.key -out new.key`",
        ));
    }
    let identity = native_tls::Identity::from_pkcs8(&cert, &key)
        .map_err(|e| invalid("tcp.tls", format!("certificate or key is not usable: {e}")))?;
    Ok(TlsConfig {
        cert_path,
        key_path,
        identity,
    })
}

/// Rejects any key that is not in [`keys::KEYS`], naming its full path.
fn check_known_keys(map: &Map<String, Value>, prefix: &str) -> Result<(), ConfigError> {
    for (k, v) in map {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        let Some(key) = keys::lookup(&path) else {
            return Err(ConfigError::UnknownKey(path));
        };
        if let Value::Object(inner) = v
            && key.doc.starts_with("Section")
        {
            check_known_keys(inner, key.path)?;
        }
    }
    Ok(())
}

/// Typed access to the parsed document by dotted path, honouring aliases.
struct Doc<'a> {
    root: &'a Map<String, Value>,
    base: &'a Path,
}

impl Doc<'_> {
    /// The value at `path` in any accepted spelling; an error if two spellings are both set.
    fn get(&self, path: &str) -> Option<&Value> {
        let key = keys::lookup(path)?;
        std::iter::once(key.path)
            .chain(key.aliases.iter().copied())
            .find_map(|p| self.raw(p))
    }

    fn raw(&self, path: &str) -> Option<&Value> {
        let mut parts = path.split('.');
        let mut cur = self.root.get(parts.next()?)?;
        for p in parts {
            cur = cur.as_object()?.get(p)?;
        }
        Some(cur)
    }

    fn string(&self, path: &str) -> Result<Option<String>, ConfigError> {
        match self.get(path) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(Value::String(_)) => Err(invalid(path, "must not be empty")),
            Some(_) => Err(invalid(path, "must be a string")),
        }
    }

    fn integer(&self, path: &str, min: u64, max: u64) -> Result<Option<u64>, ConfigError> {
        match self.get(path) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
                _ => Err(invalid(
                    path,
                    format!("must be an integer from {min} to {max}"),
                )),
            },
        }
    }

    fn path(&self, path: &str) -> Result<Option<PathBuf>, ConfigError> {
        Ok(self.string(path)?.map(|s| self.base.join(s)))
    }
}

#[cfg(test)]
mod tests;
