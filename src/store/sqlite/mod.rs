//! The SQLite backend: one file, WAL mode, the default for a single instance.
//!
//! One `rusqlite::Connection` for writes behind a `Mutex`, and a second one for reads.
//! Reads take the lock for one statement; node lookups keep one read transaction open
//! across calls, ended by this process's next write or after 100 ms (`snapshot`).
//! Writes go through the `commit` module's group commit: concurrent writes share one transaction
//! and one fsync, and each write method returns only after the `COMMIT` that holds it,
//! which is what lets the registration code answer "success" knowing the data is on
//! disk. The lock is never held across network I/O.
//!
//! Threads: whichever thread calls [`super::Store`] (see there). Together with
//! `schema.rs` and `commit.rs` this is the only place with SQLite SQL in it; it never
//! touches a socket. rusqlite errors become [`StoreError`]s here and go no further.
//!
//! Parameters compared to an indexed column are written `+?N`. With SQLite's STAT4
//! (compiled in by the bundled build) a bare `?N` there marks the statement to be
//! recompiled whenever its bindings are cleared, which rusqlite's statement cache does
//! on every use: a full re-prepare per query. The unary `+` keeps the index and the
//! cached plan.

mod commit;
pub mod export;
mod listing;
mod schema;
mod snapshot;

use std::collections::HashMap;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode, OptionalExtension, params};

use snapshot::Reader;

use super::{AccountRecord, AccountSpec, Counts, DeviceRecord, NodeTarget, StoreError};
use crate::config::{DbConfig, Synchronous};
use crate::types::{
    AccountForm, AccountKey, ChannelUri, DeviceId, Node, ProtocolVersion, SavedToken, Secret,
};

/// How long a write waits for a lock held by another connection or process before it
/// is answered [`StoreError::Busy`].
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => Self::Busy,
            Some(ErrorCode::DiskFull) => Self::Full,
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
                Self::Corrupt(e.to_string().into())
            }
            Some(
                ErrorCode::CannotOpen
                | ErrorCode::SystemIoFailure
                | ErrorCode::ReadOnly
                | ErrorCode::PermissionDenied,
            ) => Self::Unavailable(e.to_string().into()),
            _ => Self::Internal(e.to_string().into()),
        }
    }
}

/// The SQLite database.
pub struct Sqlite {
    /// Where the file is (`:memory:` for tests), for the log.
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
    /// A second connection for reads, so a lookup on the publish path never waits for a
    /// write transaction (WAL lets readers and the writer run at once); node lookups
    /// hold one read snapshot across calls (`snapshot`). `None` for the in-memory
    /// database, which a second connection could not see.
    read: Option<Mutex<Reader>>,
    batcher: commit::Batcher,
}

impl Sqlite {
    /// Opens the file `db.path` names, with its cache settings.
    pub fn open(db: &DbConfig) -> Result<Self, StoreError> {
        Self::open_file(&db.path, db.synchronous, db.mmap_size, db.cache_size)
    }

    /// Opens (creating if needed) the database at `path` in WAL mode and migrates it.
    /// The lookup connection maps `mmap_size` bytes of the file and keeps a page cache
    /// of `cache_size` bytes: node lookups hit random pages, and a mapped page costs no
    /// read syscall.
    pub fn open_file(
        path: &Path,
        sync: Synchronous,
        mmap_size: u64,
        cache_size: u64,
    ) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        let mut store = Self::setup(conn, sync, path)?;
        let read = Connection::open(path)?;
        read.busy_timeout(BUSY_TIMEOUT)?;
        read.pragma_update(None, "mmap_size", mmap_size as i64)?;
        read.pragma_update(None, "cache_size", -((cache_size / 1024) as i64))?;
        read.set_prepared_statement_cache_capacity(32);
        store.read = Some(Mutex::new(Reader::new(read)));
        Ok(store)
    }

    /// An in-memory database with the same schema, for unit tests.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::setup(
            Connection::open_in_memory()?,
            Synchronous::Normal,
            Path::new(":memory:"),
        )
    }

    fn setup(mut conn: Connection, sync: Synchronous, path: &Path) -> Result<Self, StoreError> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
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
            path: path.to_owned(),
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

    /// The read connection (or the only one, in memory), its snapshot ended if this
    /// process wrote since or it is too old.
    fn reader(&self) -> ReadGuard<'_> {
        self.read(false)
    }

    /// [`Self::reader`]; `hold`: and keep a snapshot from here on (node lookups). The
    /// write count is read once, before the lock and so before any snapshot is taken.
    fn read(&self, hold: bool) -> ReadGuard<'_> {
        match &self.read {
            Some(r) => {
                let (writes, now) = (self.writes(), Instant::now());
                let mut r = r.lock().unwrap_or_else(|p| p.into_inner());
                r.end_stale(writes, now);
                if hold {
                    r.hold(writes, now);
                }
                ReadGuard::Own(r)
            }
            None => ReadGuard::Shared(self.lock()),
        }
    }

    fn writes(&self) -> u64 {
        self.batcher.ended.load(Ordering::Acquire)
    }

    /// Ends the lookup connection's read snapshot if it is stale (the XMPP thread's
    /// timer, so an idle server holds none for long).
    pub fn end_stale_read(&self) {
        drop(self.reader());
    }

    /// Ends the lookup connection's read snapshot now.
    pub fn end_read(&self) {
        if let Some(r) = &self.read {
            r.lock().unwrap_or_else(|p| p.into_inner()).end();
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
    pub fn node_target(&self, node: &Node) -> Result<Option<NodeTarget>, StoreError> {
        let mut conn = self.read(true);
        let row = conn
            .prepare_cached(
                "SELECT a.device_id, a.account_key, a.domain, a.secret, d.channel_uri, d.version, d.account_form, d.last_seen_at
                 FROM accounts a JOIN devices d USING (device_id) WHERE a.node = +?1",
            )?
            .query_row([node.as_str()], |r| {
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
            .optional();
        if let (Err(_), ReadGuard::Own(r)) = (&row, &mut conn) {
            r.end();
        }
        Ok(row?)
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
    pub fn load_token(&self) -> Result<Option<SavedToken>, StoreError> {
        let conn = self.reader();
        let row = conn
            .prepare_cached("SELECT access_token, expires_at FROM wns_token WHERE id = 1")?
            .query_row([], |r| {
                Ok(SavedToken {
                    access_token: r.get(0)?,
                    expires_at: r.get(1)?,
                })
            })
            .optional()?;
        Ok(row)
    }

    /// Persists the WNS token so that a restart reuses it.
    pub fn save_token(&self, token: &SavedToken) -> Result<(), StoreError> {
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

    /// Sets the `track_removed_nodes` setting that the `accounts_removed` trigger reads
    /// (schema version 3); turning it off clears the list.
    pub fn track_removed_nodes(&self, enabled: bool) -> Result<(), StoreError> {
        self.batcher.write(&self.conn, move |tx| {
            tx.prepare_cached("UPDATE settings SET value = ?1 WHERE key = 'track_removed_nodes'")?
                .execute([i64::from(enabled)])?;
            if !enabled {
                tx.execute_batch("DELETE FROM removed_nodes")?;
            }
            Ok(())
        })
    }

    /// Every node in the database (client mode reconciles the push account against it).
    pub fn all_nodes(&self) -> Result<Vec<Node>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached("SELECT node FROM accounts")?;
        let nodes = stmt
            .query_map([], |r| r.get(0).map(Node::from_stored))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(nodes)
    }

    /// Up to `limit` nodes whose accounts were deleted and whose PEP node may still
    /// exist on the push account.
    pub fn removed_nodes(&self, limit: usize) -> Result<Vec<Node>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached("SELECT node FROM removed_nodes LIMIT ?1")?;
        let nodes = stmt
            .query_map([limit as i64], |r| r.get(0).map(Node::from_stored))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(nodes)
    }

    /// Forgets nodes whose PEP node is gone (or that never had one: component mode).
    pub fn forget_removed_nodes(&self, nodes: &[Node]) -> Result<(), StoreError> {
        let nodes = nodes.to_vec();
        self.batcher.write(&self.conn, move |tx| {
            let mut stmt = tx.prepare_cached("DELETE FROM removed_nodes WHERE node = +?1")?;
            for n in &nodes {
                stmt.execute([n.as_str()])?;
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

    /// Up to `limit` channel URIs of the newest devices (the end of the rowid tree).
    pub fn sample_channels(&self, limit: usize) -> Result<Vec<ChannelUri>, StoreError> {
        let conn = self.reader();
        let mut stmt =
            conn.prepare("SELECT channel_uri FROM devices ORDER BY rowid DESC LIMIT ?1")?;
        let rows = stmt
            .query_map([limit as i64], |r| Ok(ChannelUri::from_stored(r.get(0)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
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

    /// `sqlite <path>`.
    pub fn describe(&self) -> String {
        format!("sqlite {}", self.path.display())
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
            .map_err(|_| StoreError::Internal("store still shared at close".into()))?
            .into_inner()
            .unwrap_or_else(|p| p.into_inner());
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
        conn.close().map_err(|(_, e)| StoreError::from(e))
    }
}

/// The read connection as the read methods take it.
enum ReadGuard<'a> {
    /// The lookup connection of a file database.
    Own(MutexGuard<'a, Reader>),
    /// The only connection of an in-memory database.
    Shared(MutexGuard<'a, Connection>),
}

impl Deref for ReadGuard<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        match self {
            Self::Own(r) => r,
            Self::Shared(c) => c,
        }
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
