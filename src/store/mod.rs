//! Durable state in SQLite: devices, their push accounts (node + secret), the WNS token.
//!
//! One `rusqlite::Connection` behind a `Mutex`. Reads take the lock for one statement.
//! Writes go through the `commit` module's group commit: concurrent writes share one transaction
//! and one fsync, and each write method returns only after the `COMMIT` that holds it,
//! which is what lets the registration code answer "success" knowing the data is on
//! disk. The lock is never held across network I/O.
//!
//! Threads: called from `reg-conn-*` threads (and later `xmpp-io` and `wns-worker-*`).
//! This is the only file with SQL in it; it never touches a socket.
//!
//! Parameters compared to an indexed column are written `+?N`. With SQLite's STAT4
//! (compiled in by the bundled build) a bare `?N` there marks the statement to be
//! recompiled whenever its bindings are cleared, which rusqlite's statement cache does
//! on every use: a full re-prepare per query. The unary `+` keeps the index and the
//! cached plan.

mod commit;
pub mod listing;
mod schema;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OptionalExtension, params};

use crate::config::Synchronous;
use crate::types::{AccountForm, AccountKey, ChannelUri, DeviceId, Node, ProtocolVersion, Secret};

/// A storage failure. Callers decide what the wire sees; nothing here is shown to a
/// client verbatim.
#[derive(Debug, Clone)]
pub enum StoreError {
    /// The database stayed locked past the busy timeout (another process holds it).
    Busy,
    /// Any other SQLite error (disk full, I/O error, corruption), as its message: the
    /// same failure may have to be reported to every write of a failed batch.
    Sql(Arc<str>),
    /// The operating system's random source failed, so no node or secret could be drawn.
    Random(getrandom::Error),
    /// The database was written by a newer version of this server; it is left untouched.
    NewerSchema(i64),
}

impl StoreError {
    /// True for failures that may succeed on a retry (a lock held elsewhere).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Busy)
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Busy => f.write_str("database is busy"),
            Self::Sql(e) => write!(f, "database error: {e}"),
            Self::Random(e) => write!(f, "random source failed: {e}"),
            Self::NewerSchema(v) => write!(
                f,
                "schema version {v} is newer than this server's ({}); refusing to touch it",
                schema::CURRENT
            ),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => Self::Busy,
            _ => Self::Sql(e.to_string().into()),
        }
    }
}

/// An account as a registration asks for it: its key, and for bare_jid clients the
/// domain of the JID (used later to check the `from` of a publish).
#[derive(Debug, Clone)]
pub struct AccountSpec {
    /// The account key.
    pub key: AccountKey,
    /// Lowercased domain of the bare JID, `None` for account_id clients.
    pub domain: Option<String>,
}

/// A stored account with the node and secret handed to the client.
#[derive(Debug, Clone)]
pub struct AccountRecord {
    /// The account key.
    pub key: AccountKey,
    /// Its XEP-0357 node, stable while the account stays registered.
    pub node: Node,
    /// Its publish-options secret, stable likewise.
    pub secret: Secret,
    /// True if this call created it (client mode then creates its PEP node).
    pub created: bool,
}

/// A stored device.
#[derive(Debug, Clone)]
pub struct DeviceRecord {
    /// The device id.
    pub device_id: DeviceId,
    /// Where WNS notifications for it go.
    pub channel_uri: ChannelUri,
    /// The protocol version of its last request.
    pub version: ProtocolVersion,
    /// How its accounts are named; `None` until it sent a non-empty account list.
    pub account_form: Option<AccountForm>,
    /// Unix seconds (UTC) of the last registration request.
    pub updated_at: i64,
    /// Unix seconds (UTC) of the last registration or successful delivery.
    pub last_seen_at: i64,
}

/// The cached WNS access token as persisted.
#[derive(Clone)]
pub struct StoredToken {
    /// The bearer token.
    pub access_token: String,
    /// Unix seconds at which it expires.
    pub expires_at: i64,
}

impl fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoredToken(…, expires_at {})", self.expires_at)
    }
}

/// Everything needed to push to the account behind a node.
#[derive(Debug, Clone)]
pub struct NodeTarget {
    /// The device.
    pub device_id: DeviceId,
    /// The account key, which v2 payloads carry as `account_id`.
    pub account_key: AccountKey,
    /// The JID's domain for bare_jid clients: publishes must come from it.
    pub domain: Option<String>,
    /// The node's secret.
    pub secret: Secret,
    /// The device's channel.
    pub channel_uri: ChannelUri,
    /// The device's protocol version.
    pub version: ProtocolVersion,
    /// The device's account form.
    pub account_form: Option<AccountForm>,
    /// Unix seconds of the device's last registration or recorded delivery.
    pub last_seen_at: i64,
}

/// Counts for `stats` and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Devices stored.
    pub devices: u64,
    /// Accounts stored.
    pub accounts: u64,
}

/// The database handle. Cheap to share as `Arc<Store>`.
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    /// A second connection for reads, so a lookup on the publish path never waits for a
    /// write transaction (WAL lets readers and the writer run at once). `None` for the
    /// in-memory database, which a second connection could not see.
    read: Option<Mutex<Connection>>,
    batcher: commit::Batcher,
}

impl Store {
    /// Opens (creating if needed) the database at `path` in WAL mode and migrates it.
    pub fn open(path: &Path, sync: Synchronous) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        let mut store = Self::setup(conn, sync)?;
        let read = Connection::open(path)?;
        read.busy_timeout(Duration::from_secs(5))?;
        // Node lookups hit random pages: map the file (no read syscall per page) and
        // keep a larger page cache.
        read.pragma_update(None, "mmap_size", 256i64 * 1024 * 1024)?;
        read.pragma_update(None, "cache_size", -16_000i64)?;
        read.set_prepared_statement_cache_capacity(32);
        store.read = Some(Mutex::new(read));
        Ok(store)
    }

    /// An in-memory database with the same schema, for unit tests.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::setup(Connection::open_in_memory()?, Synchronous::Normal)
    }

    fn setup(mut conn: Connection, sync: Synchronous) -> Result<Self, StoreError> {
        conn.busy_timeout(Duration::from_secs(5))?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if mode != "wal" && mode != "memory" {
            log::warn!("store: journal_mode is {mode}, not wal");
        }
        conn.pragma_update(None, "synchronous", sync.pragma())?;
        conn.pragma_update(None, "foreign_keys", true)?;
        schema::migrate(&mut conn)?;
        conn.set_prepared_statement_cache_capacity(32);
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            read: None,
            batcher: commit::Batcher::default(),
        })
    }

    /// Takes the lock. A panic in another thread while it held the lock cannot leave a
    /// transaction half-applied (rusqlite rolls back on drop), so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The read connection (or the only one, in memory).
    fn reader(&self) -> MutexGuard<'_, Connection> {
        match &self.read {
            Some(r) => r.lock().unwrap_or_else(|p| p.into_inner()),
            None => self.lock(),
        }
    }

    /// Creates the device or updates its channel and version, keeping its accounts,
    /// nodes and secrets (clients never resend accounts when only the URI changes).
    pub fn set_channel(
        &self,
        device: &DeviceId,
        uri: &ChannelUri,
        version: ProtocolVersion,
        now: i64,
    ) -> Result<(), StoreError> {
        let (device, uri) = (device.clone(), uri.clone());
        self.batcher.write(&self.conn, move |tx| {
            tx.prepare_cached(
                "INSERT INTO devices (device_id, channel_uri, version, created_at, updated_at, last_seen_at)
                 VALUES (?1, ?2, ?3, ?4, ?4, ?4)
                 ON CONFLICT (device_id) DO UPDATE SET
                   channel_uri = excluded.channel_uri, version = excluded.version,
                   updated_at = excluded.updated_at, last_seen_at = excluded.last_seen_at",
            )?
            .execute(params![device.as_str(), uri.as_str(), version.number(), now])?;
            Ok(())
        })
    }

    /// Replaces the device's account set in one transaction: accounts that stay keep their
    /// node and secret, new ones get fresh values, missing ones are deleted. Returns the
    /// records in the order asked, or `None` if the device is unknown (nothing changed).
    pub fn set_accounts(
        &self,
        device: &DeviceId,
        version: ProtocolVersion,
        form: Option<AccountForm>,
        accounts: &[AccountSpec],
        now: i64,
    ) -> Result<Option<Vec<AccountRecord>>, StoreError> {
        let device = device.clone();
        let accounts = accounts.to_vec();
        self.batcher.write(&self.conn, move |tx| {
            replace_accounts(tx, &device, version, form, &accounts, now)
        })
    }

    /// Loads one device.
    pub fn device(&self, device: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        let conn = self.reader();
        let row = conn
            .prepare_cached(
                "SELECT channel_uri, version, account_form, updated_at, last_seen_at
                 FROM devices WHERE device_id = +?1",
            )?
            .query_row([device.as_str()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })
            .optional()?;
        Ok(row.map(
            |(uri, version, form, updated_at, last_seen_at)| DeviceRecord {
                device_id: device.clone(),
                channel_uri: ChannelUri::from_stored(uri),
                version: stored_version(version),
                account_form: form.as_deref().and_then(AccountForm::from_json_key),
                updated_at,
                last_seen_at,
            },
        ))
    }

    /// The push target behind a node, if the node exists (the publish hot path: one
    /// indexed join).
    pub fn node_target(&self, node: &str) -> Result<Option<NodeTarget>, StoreError> {
        let conn = self.reader();
        let row = conn
            .prepare_cached(
                "SELECT a.device_id, a.account_key, a.domain, a.secret, d.channel_uri, d.version, d.account_form, d.last_seen_at
                 FROM accounts a JOIN devices d USING (device_id) WHERE a.node = +?1",
            )?
            .query_row([node], |r| {
                Ok(NodeTarget {
                    device_id: DeviceId::from_stored(r.get(0)?),
                    account_key: AccountKey::from_stored(r.get(1)?),
                    domain: r.get(2)?,
                    secret: Secret::from_stored(r.get(3)?),
                    channel_uri: ChannelUri::from_stored(r.get(4)?),
                    version: stored_version(r.get(5)?),
                    account_form: r
                        .get::<_, Option<String>>(6)?
                        .as_deref()
                        .and_then(AccountForm::from_json_key),
                    last_seen_at: r.get(7)?,
                })
            })
            .optional()?;
        Ok(row)
    }

    /// The accounts of one device, ordered by key.
    pub fn accounts(&self, device: &DeviceId) -> Result<Vec<AccountRecord>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT account_key, node, secret FROM accounts WHERE device_id = +?1 ORDER BY account_key",
        )?;
        let rows = stmt
            .query_map([device.as_str()], |r| {
                Ok(AccountRecord {
                    key: AccountKey::from_stored(r.get(0)?),
                    node: Node::from_stored(r.get(1)?),
                    secret: Secret::from_stored(r.get(2)?),
                    created: false,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Deletes the device and its accounts, but only if its channel is still `uri`: a
    /// device that re-registered a new channel after the push was sent keeps it.
    /// Returns whether it was deleted.
    pub fn delete_device_if_channel(
        &self,
        device: &DeviceId,
        uri: &ChannelUri,
    ) -> Result<bool, StoreError> {
        let (device, uri) = (device.clone(), uri.clone());
        self.batcher.write(&self.conn, move |tx| {
            let n = tx
                .prepare_cached("DELETE FROM devices WHERE device_id = +?1 AND channel_uri = ?2")?
                .execute(params![device.as_str(), uri.as_str()])?;
            Ok(n > 0)
        })
    }

    /// Records successful deliveries: `last_seen_at` moves forward, never back.
    pub fn touch_devices(&self, seen: &[(DeviceId, i64)]) -> Result<(), StoreError> {
        // In chunks, so one write transaction never holds the writer for long.
        for chunk in seen.chunks(500) {
            self.touch_chunk(chunk.to_vec())?;
        }
        Ok(())
    }

    fn touch_chunk(&self, seen: Vec<(DeviceId, i64)>) -> Result<(), StoreError> {
        self.batcher.write(&self.conn, move |tx| {
            let mut stmt = tx.prepare_cached(
                "UPDATE devices SET last_seen_at = max(last_seen_at, ?2) WHERE device_id = +?1",
            )?;
            for (device, at) in &seen {
                stmt.execute(params![device.as_str(), at])?;
            }
            Ok(())
        })
    }

    /// The persisted WNS token, if any.
    pub fn load_token(&self) -> Result<Option<StoredToken>, StoreError> {
        let conn = self.reader();
        let row = conn
            .prepare_cached("SELECT access_token, expires_at FROM wns_token WHERE id = 1")?
            .query_row([], |r| {
                Ok(StoredToken {
                    access_token: r.get(0)?,
                    expires_at: r.get(1)?,
                })
            })
            .optional()?;
        Ok(row)
    }

    /// Persists the WNS token so that a restart reuses it.
    pub fn save_token(&self, token: &StoredToken) -> Result<(), StoreError> {
        let token = token.clone();
        self.batcher.write(&self.conn, move |tx| {
            tx.prepare_cached(
                "INSERT INTO wns_token (id, access_token, token_type, expires_at) VALUES (1, ?1, 'bearer', ?2)
                 ON CONFLICT (id) DO UPDATE SET access_token = excluded.access_token,
                   expires_at = excluded.expires_at",
            )?
            .execute(params![token.access_token, token.expires_at])?;
            Ok(())
        })
    }

    /// Whether deleted accounts' nodes are recorded for PEP deletion. Only client mode
    /// has PEP nodes; elsewhere the record would only grow (and cost a write per deleted
    /// account), so the trigger is dropped and the list cleared. A later switch to client
    /// mode is covered by the reconciliation at connect, which deletes stray nodes.
    pub fn track_removed_nodes(&self, enabled: bool) -> Result<(), StoreError> {
        let conn = self.lock();
        if enabled {
            conn.execute_batch(
                "CREATE TRIGGER IF NOT EXISTS accounts_removed AFTER DELETE ON accounts BEGIN
                     INSERT OR IGNORE INTO removed_nodes (node) VALUES (old.node);
                 END;",
            )?;
        } else {
            conn.execute_batch(
                "DROP TRIGGER IF EXISTS accounts_removed; DELETE FROM removed_nodes;",
            )?;
        }
        Ok(())
    }

    /// Every node in the database (client mode reconciles the push account against it).
    pub fn all_nodes(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached("SELECT node FROM accounts")?;
        let nodes = stmt
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(nodes)
    }

    /// Up to `limit` nodes whose accounts were deleted and whose PEP node may still
    /// exist on the push account.
    pub fn removed_nodes(&self, limit: usize) -> Result<Vec<String>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached("SELECT node FROM removed_nodes LIMIT ?1")?;
        let nodes = stmt
            .query_map([limit as i64], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(nodes)
    }

    /// Forgets nodes whose PEP node is gone (or that never had one: component mode).
    pub fn forget_removed_nodes(&self, nodes: &[String]) -> Result<(), StoreError> {
        let nodes = nodes.to_vec();
        self.batcher.write(&self.conn, move |tx| {
            let mut stmt = tx.prepare_cached("DELETE FROM removed_nodes WHERE node = +?1")?;
            for n in &nodes {
                stmt.execute([n])?;
            }
            Ok(())
        })
    }

    /// Deletes devices last seen before `cutoff` (unix seconds) with their accounts;
    /// returns how many. In chunks, so the writer is never held for long.
    pub fn expire_devices(&self, cutoff: i64) -> Result<usize, StoreError> {
        let mut total = 0;
        loop {
            let n = self.batcher.write(&self.conn, move |tx| {
                Ok(tx
                    .prepare_cached(
                        "DELETE FROM devices WHERE device_id IN
                           (SELECT device_id FROM devices WHERE last_seen_at < ?1 LIMIT 500)",
                    )?
                    .execute([cutoff])?)
            })?;
            total += n;
            if n < 500 {
                return Ok(total);
            }
        }
    }

    /// Deletes one device and its accounts (admin `remove-device`); false if unknown.
    pub fn remove_device(&self, device: &DeviceId) -> Result<bool, StoreError> {
        let device = device.clone();
        self.batcher.write(&self.conn, move |tx| {
            Ok(tx
                .prepare_cached("DELETE FROM devices WHERE device_id = +?1")?
                .execute([device.as_str()])?
                > 0)
        })
    }

    /// Whether the database answers (health check).
    pub fn ping(&self) -> Result<(), StoreError> {
        let conn = self.reader();
        conn.query_row("SELECT 1", [], |_| Ok(()))?;
        Ok(())
    }

    /// Unix seconds of the least and most recently seen devices (`stats`).
    pub fn seen_range(&self) -> Result<Option<(i64, i64)>, StoreError> {
        let conn = self.reader();
        let range = conn.query_row(
            "SELECT min(last_seen_at), max(last_seen_at) FROM devices",
            [],
            |r| Ok((r.get::<_, Option<i64>>(0)?, r.get::<_, Option<i64>>(1)?)),
        )?;
        Ok(match range {
            (Some(a), Some(b)) => Some((a, b)),
            _ => None,
        })
    }

    /// How many devices and accounts are stored.
    pub fn counts(&self) -> Result<Counts, StoreError> {
        let conn = self.reader();
        let (devices, accounts) = conn.query_row(
            "SELECT (SELECT count(*) FROM devices), (SELECT count(*) FROM accounts)",
            [],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
        )?;
        Ok(Counts {
            devices: devices as u64,
            accounts: accounts as u64,
        })
    }

    /// Checkpoints the WAL into the main file and closes the connection, so the file is
    /// complete on its own after a clean shutdown.
    pub fn close(mut self) -> Result<(), StoreError> {
        drop(self.read.take());
        let (batches, jobs) = (
            self.batcher
                .batches
                .load(std::sync::atomic::Ordering::Relaxed),
            self.batcher.jobs.load(std::sync::atomic::Ordering::Relaxed),
        );
        log::info!("store: {jobs} writes committed in {batches} transactions");
        let conn = Arc::try_unwrap(self.conn)
            .map_err(|_| StoreError::Sql("store still shared at close".into()))?
            .into_inner()
            .unwrap_or_else(|p| p.into_inner());
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
        conn.close().map_err(|(_, e)| StoreError::from(e))
    }
}

/// The stored protocol version (the schema only allows 1 and 2).
fn stored_version(n: i64) -> ProtocolVersion {
    if n == 2 {
        ProtocolVersion::V2
    } else {
        ProtocolVersion::V1
    }
}

/// Seconds since the Unix epoch (UTC), the unit of every stored timestamp; 0 if the
/// clock is before 1970.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn replace_accounts(
    tx: &rusqlite::Transaction<'_>,
    device: &DeviceId,
    version: ProtocolVersion,
    form: Option<AccountForm>,
    accounts: &[AccountSpec],
    now: i64,
) -> Result<Option<Vec<AccountRecord>>, StoreError> {
    let updated = tx
        .prepare_cached(
            "UPDATE devices SET version = ?2, account_form = coalesce(?3, account_form),
               updated_at = ?4, last_seen_at = ?4
             WHERE device_id = +?1",
        )?
        .execute(params![
            device.as_str(),
            version.number(),
            form.map(AccountForm::json_key),
            now
        ])?;
    if updated == 0 {
        return Ok(None);
    }
    let mut existing: HashMap<String, (String, String)> = tx
        .prepare_cached("SELECT account_key, node, secret FROM accounts WHERE device_id = +?1")?
        .query_map([device.as_str()], |r| {
            Ok((r.get(0)?, (r.get(1)?, r.get(2)?)))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = Vec::with_capacity(accounts.len());
    for spec in accounts {
        let (node, secret, created) = match existing.remove(spec.key.as_str()) {
            Some((node, secret)) => (Node::from_stored(node), Secret::from_stored(secret), false),
            None => {
                let (node, secret) = insert_account(tx, device, spec, now)?;
                (node, secret, true)
            }
        };
        out.push(AccountRecord {
            key: spec.key.clone(),
            node,
            secret,
            created,
        });
    }
    let mut delete =
        tx.prepare_cached("DELETE FROM accounts WHERE device_id = +?1 AND account_key = +?2")?;
    for key in existing.keys() {
        delete.execute(params![device.as_str(), key])?;
    }
    Ok(Some(out))
}

/// Inserts a new account with a fresh node and secret. A node collision (2^-128 odds,
/// but the column is UNIQUE) draws again instead of failing the registration.
fn insert_account(
    tx: &rusqlite::Transaction<'_>,
    device: &DeviceId,
    spec: &AccountSpec,
    now: i64,
) -> Result<(Node, Secret), StoreError> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO accounts (device_id, account_key, domain, node, secret, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    let mut attempts = 0;
    loop {
        let node = Node::generate().map_err(StoreError::Random)?;
        let secret = Secret::generate().map_err(StoreError::Random)?;
        match stmt.execute(params![
            device.as_str(),
            spec.key.as_str(),
            spec.domain,
            node.as_str(),
            secret.expose(),
            now
        ]) {
            Ok(_) => return Ok((node, secret)),
            Err(e)
                if attempts < 3
                    && e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) =>
            {
                attempts += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests;
