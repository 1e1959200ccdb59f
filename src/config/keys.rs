//! The one list of configuration keys: path, accepted spellings, default and meaning.
//!
//! The loader rejects any key not listed here (naming it), `check-config` and the README
//! key table are checked against it by tests, so a key cannot be added in one place and
//! forgotten in another.
//!
//! Threads: read-only data.

/// One configuration key (a leaf) or section (an object).
#[derive(Debug)]
pub struct Key {
    /// Dotted path with the canonical spelling, e.g. `tcp.tls.cert_path`.
    pub path: &'static str,
    /// Older spellings accepted in the same place (the seed's Python and C++ configs).
    pub aliases: &'static [&'static str],
    /// The default as shown to operators; empty when the key is required or a section.
    pub default: &'static str,
    /// What it does, for the README and `check-config`.
    pub doc: &'static str,
}

const fn key(path: &'static str, default: &'static str, doc: &'static str) -> Key {
    Key {
        path,
        aliases: &[],
        default,
        doc,
    }
}

/// Every key the server understands. Sections (JSON objects) have an empty default and
/// a doc starting with "Section".
pub const KEYS: &[Key] = &[
    key(
        "wns",
        "",
        "Section: Windows Push Notification Services credentials and sending.",
    ),
    key(
        "wns.packet_id",
        "(none)",
        "Package SID `ms-app://s-1-15-2-…` from the Partner Center; the WNS client_id. Without it and `wns.client_secret`, WNS delivery is off.",
    ),
    key(
        "wns.client_secret",
        "(none)",
        "WNS client secret from the Partner Center. Never logged; masked by `check-config`.",
    ),
    key(
        "wns.channel_hosts",
        "[\"notify.windows.com\"]",
        "Host suffixes a device's channel_uri may point at, matched at a dot boundary. Security boundary: the WNS bearer token is sent to that host.",
    ),
    key(
        "wns.token_url",
        "\"https://login.live.com/accesstoken.srf\"",
        "OAuth token endpoint (client-credentials grant). Must be https.",
    ),
    key(
        "wns.ca_file",
        "(none)",
        "PEM file of extra trusted root certificates for the token endpoint and channels, added to the system's (tests, private CAs).",
    ),
    key(
        "wns.workers",
        "4",
        "WNS worker threads, each with a keep-alive connection.",
    ),
    key(
        "wns.queue_capacity",
        "4096",
        "Push jobs that may wait for a worker; beyond it a push fails at once as transient (the XMPP server is told to retry later).",
    ),
    key(
        "wns.timeout_ms",
        "5000",
        "Longest single HTTP request to WNS.",
    ),
    key(
        "wns.max_attempts",
        "3",
        "Sends per push before it counts as a transient failure (500s, timeouts, throttling).",
    ),
    key(
        "wns.deadline_ms",
        "20000",
        "Longest a push may take in total, retries included.",
    ),
    key(
        "wns.cache_policy",
        "\"cache\"",
        "`X-WNS-Cache-Policy` (\"cache\", \"no-cache\", or null to omit). \"cache\" keeps the last wake-up for a device that is offline, so it still learns about messages when it comes back.",
    ),
    key(
        "wns.ttl_s",
        "86400",
        "`X-WNS-TTL` in seconds (null to omit): a cached wake-up older than a day is stale.",
    ),
    key(
        "wns.priority",
        "1",
        "`X-WNS-PRIORITY` 1 (high) to 4 (very low), or null to omit. A push stands for a chat message the user is waiting for, so high: lower priorities are held back while the screen is off on battery.",
    ),
    key(
        "xmpp",
        "",
        "Section: the XMPP identity users' servers publish to.",
    ),
    key(
        "xmpp.bare_jid",
        "(required)",
        "The push service's JID, returned to clients as `push_bare_jid`.",
    ),
    key(
        "xmpp.password",
        "(none)",
        "Password of `xmpp.bare_jid` (client mode). Masked by `check-config`.",
    ),
    key(
        "xmpp.host",
        "(SRV of the JID's domain)",
        "Client mode: the XMPP server to connect to. Unset: DNS SRV `_xmpp-client._tcp` / `_xmpps-client._tcp` of the JID's domain, else the domain itself.",
    ),
    key(
        "xmpp.port",
        "5222",
        "Client mode: its client port (STARTTLS is required).",
    ),
    key(
        "xmpp.resource",
        "\"push\"",
        "Client mode: the resource to bind.",
    ),
    key(
        "xmpp.ca_file",
        "(none)",
        "Client mode: a PEM root certificate trusted in addition to the system's, for the XMPP server's certificate (tests, private CAs).",
    ),
    key(
        "xmpp.component",
        "(none: client mode if xmpp.password is set)",
        "Section: run as an XEP-0114 component; `push_bare_jid` in answers is then the component JID.",
    ),
    key(
        "xmpp.component.jid",
        "(required in xmpp.component)",
        "The component's JID, e.g. push.example.org, as configured on the XMPP server.",
    ),
    key(
        "xmpp.component.secret",
        "(required in xmpp.component)",
        "The component's shared secret. Masked by `check-config`.",
    ),
    key(
        "xmpp.component.host",
        "\"127.0.0.1\"",
        "The XMPP server's component port address.",
    ),
    key(
        "xmpp.component.port",
        "5347",
        "The XMPP server's component port.",
    ),
    key(
        "xmpp.ping_interval_s",
        "60",
        "XEP-0199 ping to the server this often, to find a dead TCP connection (reconnect after 30 s without an answer).",
    ),
    key("push", "", "Section: publish handling."),
    key(
        "push.min_interval_ms",
        "2000",
        "At most one WNS push per node in this window; publishes inside it are answered at once and folded into one trailing push (0 turns this off).",
    ),
    key(
        "tcp",
        "",
        "Section: the registration listener UWPX clients connect to.",
    ),
    key("tcp.host", "\"0.0.0.0\"", "Address to listen on."),
    key(
        "tcp.port",
        "1997",
        "Port to listen on (UWPX clients use 1997; 0 picks a free port, logged at start).",
    ),
    key(
        "tcp.tls",
        "(none: plain TCP)",
        "Section: TLS for the listener. Real UWPX clients only speak TLS 1.2, so production needs it.",
    ),
    Key {
        path: "tcp.tls.cert_path",
        aliases: &["tcp.tls.server_cert_path", "tcp.tls.serverCertPath"],
        default: "(required in tcp.tls)",
        doc: "PEM certificate chain, leaf first. Relative paths are relative to the configuration file.",
    },
    Key {
        path: "tcp.tls.key_path",
        aliases: &["tcp.tls.server_key_path", "tcp.tls.serverKeyPath"],
        default: "(required in tcp.tls)",
        doc: "PEM private key in PKCS#8 form (`BEGIN PRIVATE KEY`).",
    },
    key(
        "tcp.read_timeout_ms",
        "10000",
        "A connection that has not sent a whole request within this time is closed (idle and slow clients).",
    ),
    key(
        "tcp.max_connections",
        "1024",
        "Connections served at once; one more is answered with a busy error and closed.",
    ),
    key(
        "tcp.max_connections_per_ip",
        "64",
        "Connections served at once from one IPv4 address or one IPv6 /64; one more from there is answered with a busy error and closed. Many users behind one carrier-grade NAT share an address, but each connection lasts one request.",
    ),
    key("db", "", "Section: storage."),
    key(
        "db.path",
        "\"pushServer.db\"",
        "SQLite database file (WAL mode). Relative paths are relative to the configuration file.",
    ),
    key(
        "db.synchronous",
        "\"full\"",
        "SQLite `synchronous` mode: \"full\" (a commit survives power loss) or \"normal\" (a commit survives a process crash; faster).",
    ),
    key(
        "db.url",
        "",
        "PostgreSQL instead of SQLite: `postgres://USER:PASSWORD@HOST:PORT/DBNAME` (or `postgresql://`, with options such as `?sslmode=require`). Not together with `db.path`. The password is masked in `check-config` and never logged.",
    ),
    key(
        "db.pool_size",
        "8",
        "PostgreSQL connections this instance keeps open.",
    ),
    key(
        "db.ca_file",
        "",
        "PEM root certificate trusted, besides the system's, for TLS to PostgreSQL (`sslmode=require`).",
    ),
    key(
        "db.device_ttl_days",
        "90",
        "A device neither registered nor successfully pushed to for this many days is removed, with its accounts (hourly sweep).",
    ),
    key("metrics", "", "Section: the health and metrics endpoint."),
    key(
        "metrics.listen",
        "(none: off)",
        "Address for plain-HTTP `GET /health` and `GET /metrics` (Prometheus), e.g. \"127.0.0.1:9090\". Keep it off the internet.",
    ),
    key("shutdown", "", "Section: stopping."),
    key(
        "shutdown.grace_ms",
        "5000",
        "On Ctrl+C/SIGTERM, how long WNS jobs in flight may finish before open publish IQs are answered with a `wait` error.",
    ),
    key("limits", "", "Section: input limits."),
    key(
        "limits.max_accounts",
        "32",
        "Most accounts one set_push_accounts may carry.",
    ),
    key(
        "limits.max_request_bytes",
        "65536",
        "Largest request accepted, NUL included; a larger one is answered with an error and the connection closed.",
    ),
    key("log", "", "Section: logging."),
    key(
        "log.level",
        "\"info\"",
        "One of error, warn, info, debug, trace.",
    ),
    key("log.file", "(none)", "Also append the log to this file."),
];

/// Finds the key for a dotted path in any accepted spelling.
pub fn lookup(path: &str) -> Option<&'static Key> {
    KEYS.iter()
        .find(|k| k.path == path || k.aliases.contains(&path))
}
