//! The one list of configuration keys: path, accepted spellings, typed default, range and
//! meaning.
//!
//! Each key is a typed constant ([`Key<Int>`], [`Key<Text>`], …) that the loader passes to
//! its reader, so a default or a range is written once, here. [`KEYS`] lists them all: the
//! loader rejects any key not in it (naming it), and tests check that every listed key is
//! read by the loader and that the README table is [`markdown_table`]'s output, so a key
//! cannot be added in one place and forgotten in another.
//!
//! Threads: read-only data.

use std::fmt::Write as _;

pub use super::spec::{AnyKey, Choice, Fallback, Int, Key, List, Section, Spec, Text};

const fn section(path: &'static str, absent: &'static str, doc: &'static str) -> Key<Section> {
    Key {
        path,
        aliases: &[],
        spec: Section { absent },
        doc,
    }
}

const fn int(path: &'static str, min: u64, max: u64, default: u64, doc: &'static str) -> Key<Int> {
    Key {
        path,
        aliases: &[],
        spec: Int {
            min,
            max,
            default,
            null_omits: false,
        },
        doc,
    }
}

const fn text(path: &'static str, default: Fallback, doc: &'static str) -> Key<Text> {
    Key {
        path,
        aliases: &[],
        spec: Text { default },
        doc,
    }
}

const fn choice(
    path: &'static str,
    options: &'static [&'static str],
    default: &'static str,
    doc: &'static str,
) -> Key<Choice> {
    Key {
        path,
        aliases: &[],
        spec: Choice {
            options,
            default,
            null_omits: false,
        },
        doc,
    }
}

use Fallback::{Required, Unset, Value};

/// `wns`.
pub const WNS: Key<Section> = section(
    "wns",
    "",
    "Section: Windows Push Notification Services credentials and sending.",
);
/// `wns.packet_id`.
pub const WNS_PACKET_ID: Key<Text> = text(
    "wns.packet_id",
    Unset("(none)"),
    "Package SID `ms-app://s-1-15-2-…` from the Partner Center; the WNS client_id. Without it and `wns.client_secret`, WNS delivery is off.",
);
/// `wns.client_secret`.
pub const WNS_CLIENT_SECRET: Key<Text> = text(
    "wns.client_secret",
    Unset("(none)"),
    "WNS client secret from the Partner Center. Never logged; masked by `check-config`.",
);
/// `wns.channel_hosts`.
pub const WNS_CHANNEL_HOSTS: Key<List> = Key {
    path: "wns.channel_hosts",
    aliases: &[],
    spec: List {
        default: &["notify.windows.com"],
    },
    doc: "Host suffixes a device's channel_uri may point at, matched at a dot boundary. Security boundary: the WNS bearer token is sent to that host.",
};
/// `wns.token_url`.
pub const WNS_TOKEN_URL: Key<Text> = text(
    "wns.token_url",
    Value("https://login.live.com/accesstoken.srf"),
    "OAuth token endpoint (client-credentials grant). Must be https.",
);
/// `wns.ca_file`.
pub const WNS_CA_FILE: Key<Text> = text(
    "wns.ca_file",
    Unset("(none)"),
    "PEM file of extra trusted root certificates for the token endpoint and channels, added to the system's (tests, private CAs).",
);
/// `wns.workers`.
pub const WNS_WORKERS: Key<Int> = int(
    "wns.workers",
    1,
    256,
    4,
    "WNS worker threads, each with a keep-alive connection.",
);
/// `wns.queue_capacity`.
pub const WNS_QUEUE_CAPACITY: Key<Int> = int(
    "wns.queue_capacity",
    1,
    1_000_000,
    4096,
    "Push jobs that may wait for a worker; beyond it a push fails at once as transient (the XMPP server is told to retry later).",
);
/// `wns.timeout_ms`.
pub const WNS_TIMEOUT_MS: Key<Int> = int(
    "wns.timeout_ms",
    100,
    120_000,
    5000,
    "Longest single HTTP request to WNS (the token request gets at least 2 s).",
);
/// `wns.max_attempts`.
pub const WNS_MAX_ATTEMPTS: Key<Int> = int(
    "wns.max_attempts",
    1,
    20,
    3,
    "Sends per push before it counts as a transient failure (500s, timeouts, throttling).",
);
/// `wns.deadline_ms`.
pub const WNS_DEADLINE_MS: Key<Int> = int(
    "wns.deadline_ms",
    100,
    600_000,
    20_000,
    "Longest a push may take in total, retries included.",
);
/// `wns.cache_policy`.
pub const WNS_CACHE_POLICY: Key<Choice> = Key {
    path: "wns.cache_policy",
    aliases: &[],
    spec: Choice {
        options: &["cache", "no-cache"],
        default: "cache",
        null_omits: true,
    },
    doc: "`X-WNS-Cache-Policy` (\"cache\", \"no-cache\", or null to omit). \"cache\" keeps the last wake-up for a device that is offline, so it still learns about messages when it comes back.",
};
/// `wns.ttl_s`.
pub const WNS_TTL_S: Key<Int> = Key {
    path: "wns.ttl_s",
    aliases: &[],
    spec: Int {
        min: 1,
        max: 30 * 86_400,
        default: 86_400,
        null_omits: true,
    },
    doc: "`X-WNS-TTL` in seconds (null to omit): a cached wake-up older than a day is stale.",
};
/// `wns.priority`.
pub const WNS_PRIORITY: Key<Int> = Key {
    path: "wns.priority",
    aliases: &[],
    spec: Int {
        min: 1,
        max: 4,
        default: 1,
        null_omits: true,
    },
    doc: "`X-WNS-PRIORITY` 1 (high) to 4 (very low), or null to omit. A push stands for a chat message the user is waiting for, so high: lower priorities are held back while the screen is off on battery.",
};
/// `xmpp`.
pub const XMPP: Key<Section> = section(
    "xmpp",
    "",
    "Section: the XMPP identity users' servers publish to.",
);
/// `xmpp.bare_jid`.
pub const XMPP_BARE_JID: Key<Text> = text(
    "xmpp.bare_jid",
    Required("(required)"),
    "The push service's JID, returned to clients as `push_bare_jid`.",
);
/// `xmpp.password`.
pub const XMPP_PASSWORD: Key<Text> = text(
    "xmpp.password",
    Unset("(none)"),
    "Password of `xmpp.bare_jid` (client mode). Masked by `check-config`.",
);
/// `xmpp.host`.
pub const XMPP_HOST: Key<Text> = text(
    "xmpp.host",
    Unset("(SRV of the JID's domain)"),
    "Client mode: the XMPP server to connect to. Unset: DNS SRV `_xmpp-client._tcp` / `_xmpps-client._tcp` of the JID's domain, else the domain itself.",
);
/// `xmpp.port`.
pub const XMPP_PORT: Key<Int> = int(
    "xmpp.port",
    1,
    65535,
    5222,
    "Client mode: its client port (STARTTLS is required).",
);
/// `xmpp.resource`.
pub const XMPP_RESOURCE: Key<Text> = text(
    "xmpp.resource",
    Value("push"),
    "Client mode: the resource to bind.",
);
/// `xmpp.ca_file`.
pub const XMPP_CA_FILE: Key<Text> = text(
    "xmpp.ca_file",
    Unset("(none)"),
    "Client mode: a PEM root certificate trusted in addition to the system's, for the XMPP server's certificate (tests, private CAs).",
);
/// `xmpp.component`.
pub const XMPP_COMPONENT: Key<Section> = section(
    "xmpp.component",
    "(none: client mode if xmpp.password is set)",
    "Section: run as an XEP-0114 component; `push_bare_jid` in answers is then the component JID.",
);
/// `xmpp.component.jid`.
pub const XMPP_COMPONENT_JID: Key<Text> = text(
    "xmpp.component.jid",
    Required("(required in xmpp.component)"),
    "The component's JID, e.g. push.example.org, as configured on the XMPP server.",
);
/// `xmpp.component.secret`.
pub const XMPP_COMPONENT_SECRET: Key<Text> = text(
    "xmpp.component.secret",
    Required("(required in xmpp.component)"),
    "The component's shared secret. Masked by `check-config`.",
);
/// `xmpp.component.host`.
pub const XMPP_COMPONENT_HOST: Key<Text> = text(
    "xmpp.component.host",
    Value("127.0.0.1"),
    "The XMPP server's component port address.",
);
/// `xmpp.component.port`.
pub const XMPP_COMPONENT_PORT: Key<Int> = int(
    "xmpp.component.port",
    1,
    65535,
    5347,
    "The XMPP server's component port.",
);
/// `xmpp.ping_interval_s`.
pub const XMPP_PING_INTERVAL_S: Key<Int> = int(
    "xmpp.ping_interval_s",
    5,
    3600,
    60,
    "After this long without a stanza from the server, XEP-0199 pings (10 per interval while the silence lasts); 3 silent intervals give the connection up and reconnect. With several instances, any stanza counts, another instance's ping answers too.",
);
/// `push`.
pub const PUSH: Key<Section> = section("push", "", "Section: publish handling.");
/// `push.min_interval_ms`.
pub const PUSH_MIN_INTERVAL_MS: Key<Int> = int(
    "push.min_interval_ms",
    0,
    3_600_000,
    2000,
    "At most one WNS push per node in this window; publishes inside it are answered at once and folded into one trailing push (0 turns this off).",
);
/// `tcp`.
pub const TCP: Key<Section> = section(
    "tcp",
    "",
    "Section: the registration listener UWPX clients connect to.",
);
/// `tcp.host`.
pub const TCP_HOST: Key<Text> = text("tcp.host", Value("0.0.0.0"), "Address to listen on.");
/// `tcp.port`.
pub const TCP_PORT: Key<Int> = int(
    "tcp.port",
    0,
    65535,
    1997,
    "Port to listen on (UWPX clients use 1997; 0 picks a free port, logged at start).",
);
/// `tcp.tls`.
pub const TCP_TLS: Key<Section> = section(
    "tcp.tls",
    "(none: plain TCP)",
    "Section: TLS for the listener. Real UWPX clients only speak TLS 1.2, so production needs it.",
);
/// `tcp.tls.cert_path`.
pub const TCP_TLS_CERT_PATH: Key<Text> = Key {
    path: "tcp.tls.cert_path",
    aliases: &["tcp.tls.server_cert_path", "tcp.tls.serverCertPath"],
    spec: Text {
        default: Required("(required in tcp.tls)"),
    },
    doc: "PEM certificate chain, leaf first. Relative paths are relative to the configuration file.",
};
/// `tcp.tls.key_path`.
pub const TCP_TLS_KEY_PATH: Key<Text> = Key {
    path: "tcp.tls.key_path",
    aliases: &["tcp.tls.server_key_path", "tcp.tls.serverKeyPath"],
    spec: Text {
        default: Required("(required in tcp.tls)"),
    },
    doc: "PEM private key in PKCS#8 form (`BEGIN PRIVATE KEY`).",
};
/// `tcp.read_timeout_ms`.
pub const TCP_READ_TIMEOUT_MS: Key<Int> = int(
    "tcp.read_timeout_ms",
    100,
    3_600_000,
    10_000,
    "A connection that has not sent a whole request within this time is closed (idle and slow clients).",
);
/// `tcp.max_connections`.
pub const TCP_MAX_CONNECTIONS: Key<Int> = int(
    "tcp.max_connections",
    1,
    100_000,
    1024,
    "Connections served at once; one more is answered with a busy error and closed.",
);
/// `tcp.max_connections_per_ip`.
pub const TCP_MAX_CONNECTIONS_PER_IP: Key<Int> = int(
    "tcp.max_connections_per_ip",
    1,
    100_000,
    64,
    "Connections served at once from one IPv4 address or one IPv6 /64; one more from there is answered with a busy error and closed. Many users behind one carrier-grade NAT share an address, but each connection lasts one request.",
);
/// `db`.
pub const DB: Key<Section> = section("db", "", "Section: storage.");
/// `db.path`.
pub const DB_PATH: Key<Text> = text(
    "db.path",
    Value("pushServer.db"),
    "SQLite database file (WAL mode). Relative paths are relative to the configuration file.",
);
/// `db.synchronous`.
pub const DB_SYNCHRONOUS: Key<Choice> = choice(
    "db.synchronous",
    &["full", "normal"],
    "full",
    "SQLite `synchronous` mode: \"full\" (a commit survives power loss) or \"normal\" (a commit survives a process crash; faster).",
);
/// `db.mmap_size_mb`.
pub const DB_MMAP_SIZE_MB: Key<Int> = int(
    "db.mmap_size_mb",
    0,
    65_536,
    256,
    "SQLite: how much of the file the lookup connection maps into memory. Mapped pages cost no read syscall on the publish path; they count in the resident size once touched but are page cache the kernel can drop. 0 turns mapping off.",
);
/// `db.cache_size_mb`.
pub const DB_CACHE_SIZE_MB: Key<Int> = int(
    "db.cache_size_mb",
    1,
    65_536,
    16,
    "SQLite: the lookup connection's page cache (private memory, on top of the kernel's).",
);
/// `db.url`.
pub const DB_URL: Key<Text> = text(
    "db.url",
    Unset("(none: SQLite)"),
    "PostgreSQL instead of SQLite: `postgres://USER:PASSWORD@HOST:PORT/DBNAME` (or `postgresql://`, with options such as `?sslmode=require`). Not together with `db.path`. The password is masked in `check-config` and never logged.",
);
/// `db.pool_size`.
pub const DB_POOL_SIZE: Key<Int> = int(
    "db.pool_size",
    1,
    1000,
    8,
    "PostgreSQL connections this instance keeps open.",
);
/// `db.ca_file`.
pub const DB_CA_FILE: Key<Text> = text(
    "db.ca_file",
    Unset("(none)"),
    "PEM root certificate trusted, besides the system's, for TLS to PostgreSQL (`sslmode=require`).",
);
/// `db.device_ttl_days`.
pub const DB_DEVICE_TTL_DAYS: Key<Int> = int(
    "db.device_ttl_days",
    1,
    3650,
    90,
    "A device neither registered nor successfully pushed to for this many days is removed, with its accounts (hourly sweep).",
);
/// `metrics`.
pub const METRICS: Key<Section> =
    section("metrics", "", "Section: the health and metrics endpoint.");
/// `metrics.listen`.
pub const METRICS_LISTEN: Key<Text> = text(
    "metrics.listen",
    Unset("(none: off)"),
    "Address for plain-HTTP `GET /health` and `GET /metrics` (Prometheus), e.g. \"127.0.0.1:9090\". Keep it off the internet.",
);
/// `shutdown`.
pub const SHUTDOWN: Key<Section> = section("shutdown", "", "Section: stopping.");
/// `shutdown.grace_ms`.
pub const SHUTDOWN_GRACE_MS: Key<Int> = int(
    "shutdown.grace_ms",
    0,
    600_000,
    5000,
    "On Ctrl+C/SIGTERM, how long WNS jobs in flight may finish before open publish IQs are answered with a `wait` error.",
);
/// `limits`.
pub const LIMITS: Key<Section> = section("limits", "", "Section: input limits.");
/// `limits.max_accounts`.
pub const LIMITS_MAX_ACCOUNTS: Key<Int> = int(
    "limits.max_accounts",
    1,
    10_000,
    32,
    "Most accounts one set_push_accounts may carry.",
);
/// `limits.max_request_bytes`.
pub const LIMITS_MAX_REQUEST_BYTES: Key<Int> = int(
    "limits.max_request_bytes",
    1024,
    16 * 1024 * 1024,
    65536,
    "Largest request accepted, NUL included; a larger one is answered with an error and the connection closed.",
);
/// `log`.
pub const LOG: Key<Section> = section("log", "", "Section: logging.");
/// `log.level`.
pub const LOG_LEVEL: Key<Choice> = choice(
    "log.level",
    &["error", "warn", "info", "debug", "trace", "off"],
    "info",
    "One of error, warn, info, debug, trace.",
);
/// `log.file`.
pub const LOG_FILE: Key<Text> = text(
    "log.file",
    Unset("(none)"),
    "Also append the log to this file.",
);

/// Every key the server understands, in README order.
pub const KEYS: &[&dyn AnyKey] = &[
    &WNS,
    &WNS_PACKET_ID,
    &WNS_CLIENT_SECRET,
    &WNS_CHANNEL_HOSTS,
    &WNS_TOKEN_URL,
    &WNS_CA_FILE,
    &WNS_WORKERS,
    &WNS_QUEUE_CAPACITY,
    &WNS_TIMEOUT_MS,
    &WNS_MAX_ATTEMPTS,
    &WNS_DEADLINE_MS,
    &WNS_CACHE_POLICY,
    &WNS_TTL_S,
    &WNS_PRIORITY,
    &XMPP,
    &XMPP_BARE_JID,
    &XMPP_PASSWORD,
    &XMPP_HOST,
    &XMPP_PORT,
    &XMPP_RESOURCE,
    &XMPP_CA_FILE,
    &XMPP_COMPONENT,
    &XMPP_COMPONENT_JID,
    &XMPP_COMPONENT_SECRET,
    &XMPP_COMPONENT_HOST,
    &XMPP_COMPONENT_PORT,
    &XMPP_PING_INTERVAL_S,
    &PUSH,
    &PUSH_MIN_INTERVAL_MS,
    &TCP,
    &TCP_HOST,
    &TCP_PORT,
    &TCP_TLS,
    &TCP_TLS_CERT_PATH,
    &TCP_TLS_KEY_PATH,
    &TCP_READ_TIMEOUT_MS,
    &TCP_MAX_CONNECTIONS,
    &TCP_MAX_CONNECTIONS_PER_IP,
    &DB,
    &DB_PATH,
    &DB_SYNCHRONOUS,
    &DB_MMAP_SIZE_MB,
    &DB_CACHE_SIZE_MB,
    &DB_URL,
    &DB_POOL_SIZE,
    &DB_CA_FILE,
    &DB_DEVICE_TTL_DAYS,
    &METRICS,
    &METRICS_LISTEN,
    &SHUTDOWN,
    &SHUTDOWN_GRACE_MS,
    &LIMITS,
    &LIMITS_MAX_ACCOUNTS,
    &LIMITS_MAX_REQUEST_BYTES,
    &LOG,
    &LOG_LEVEL,
    &LOG_FILE,
];

/// Finds the key for a dotted path in any accepted spelling.
pub fn lookup(path: &str) -> Option<&'static dyn AnyKey> {
    KEYS.iter()
        .copied()
        .find(|k| k.path() == path || k.aliases().contains(&path))
}

/// The README's configuration table, one row per key, generated from [`KEYS`].
pub fn markdown_table() -> String {
    let mut out = String::from("| key | default | meaning |\n|---|---|---|\n");
    for k in KEYS {
        let mut doc = k.doc().to_owned();
        if !k.aliases().is_empty() {
            let names: Vec<String> = k
                .aliases()
                .iter()
                .map(|a| format!("`{}`", a.rsplit('.').next().unwrap_or(a)))
                .collect();
            let _ = write!(doc, " Also spelled {}.", names.join(", "));
        }
        let _ = writeln!(
            out,
            "| `{}` | {} | {doc} |",
            k.path(),
            k.shown_default().replace('|', "/")
        );
    }
    out
}
