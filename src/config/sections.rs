//! The small sections: `tcp`, `db`, `push`, `limits`, `log`, `metrics`. Each reader
//! takes its defaults and ranges from [`super::keys`].
//!
//! Threads: `main`, once, while loading.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use super::doc::Doc;
use super::keys;
use super::{
    ConfigError, DbConfig, DbUrl, Limits, LogConfig, PushConfig, Synchronous, TcpConfig, invalid,
    tls,
};

/// `tcp.*`, with `tcp.tls` loaded and checked.
pub(super) fn tcp(doc: &Doc<'_>) -> Result<TcpConfig, ConfigError> {
    let host = doc.required(&keys::TCP_HOST)?;
    let port = doc.int(&keys::TCP_PORT)? as u16;
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| {
            invalid(
                keys::TCP_HOST.path,
                format!("`{host}` is not an address this machine can listen on"),
            )
        })?;
    let tls = if doc.section(&keys::TCP_TLS)? {
        Some(tls::load(doc)?)
    } else {
        None
    };
    Ok(TcpConfig {
        addr,
        tls,
        read_timeout: Duration::from_millis(doc.int(&keys::TCP_READ_TIMEOUT_MS)?),
        max_connections: doc.int(&keys::TCP_MAX_CONNECTIONS)? as usize,
        max_connections_per_ip: doc.int(&keys::TCP_MAX_CONNECTIONS_PER_IP)? as usize,
    })
}

/// `db.*`; `request_timeout` is `tcp.read_timeout_ms` (see [`DbConfig`]).
pub(super) fn db(doc: &Doc<'_>, request_timeout: Duration) -> Result<DbConfig, ConfigError> {
    let synchronous = match doc.choice(&keys::DB_SYNCHRONOUS)? {
        Some("normal") => Synchronous::Normal,
        _ => Synchronous::Full,
    };
    let path = doc
        .path(&keys::DB_PATH)?
        .ok_or_else(|| invalid(keys::DB_PATH.path, "is required"))?;
    let url = match doc.text(&keys::DB_URL)? {
        None => None,
        Some(u) => Some(DbUrl::parse(&u).map_err(|e| invalid(keys::DB_URL.path, e))?),
    };
    if url.is_some() && doc.given(&keys::DB_PATH) {
        return Err(invalid(
            keys::DB_URL.path,
            "cannot be set together with db.path: db.path selects SQLite, db.url PostgreSQL; keep one",
        ));
    }
    Ok(DbConfig {
        path,
        url,
        pool_size: doc.int(&keys::DB_POOL_SIZE)? as u32,
        ca_pem: tls::read_pem(doc, &keys::DB_CA_FILE)?,
        request_timeout,
        synchronous,
        mmap_size: doc.int(&keys::DB_MMAP_SIZE_MB)? * 1024 * 1024,
        cache_size: doc.int(&keys::DB_CACHE_SIZE_MB)? * 1024 * 1024,
        device_ttl_days: doc.int(&keys::DB_DEVICE_TTL_DAYS)? as u32,
    })
}

/// `push.*`.
pub(super) fn push(doc: &Doc<'_>) -> Result<PushConfig, ConfigError> {
    Ok(PushConfig {
        min_interval: Duration::from_millis(doc.int(&keys::PUSH_MIN_INTERVAL_MS)?),
    })
}

/// `limits.*`.
pub(super) fn limits(doc: &Doc<'_>) -> Result<Limits, ConfigError> {
    Ok(Limits {
        max_accounts: doc.int(&keys::LIMITS_MAX_ACCOUNTS)? as usize,
        max_request_bytes: doc.int(&keys::LIMITS_MAX_REQUEST_BYTES)? as usize,
    })
}

/// `log.*`.
pub(super) fn log(doc: &Doc<'_>) -> Result<LogConfig, ConfigError> {
    let level = doc
        .choice(&keys::LOG_LEVEL)?
        .and_then(|l| l.parse().ok())
        .unwrap_or(log::LevelFilter::Info);
    Ok(LogConfig {
        level,
        file: doc.path(&keys::LOG_FILE)?,
    })
}

/// `metrics.listen`.
pub(super) fn metrics_listen(doc: &Doc<'_>) -> Result<Option<SocketAddr>, ConfigError> {
    let Some(a) = doc.text(&keys::METRICS_LISTEN)? else {
        return Ok(None);
    };
    a.parse::<SocketAddr>().map(Some).map_err(|_| {
        invalid(
            keys::METRICS_LISTEN.path,
            format!("`{a}` is not an address like 127.0.0.1:9090"),
        )
    })
}
