//! Reading a whole SQLite database for `migrate-db` (see `../migrate.rs`), without ever
//! writing it.
//!
//! The file is opened read-only (never created, never migrated: a file of an older
//! schema is read as that schema has it) and every read runs in one read transaction,
//! so the rows form one consistent snapshot even if a server still writes the file.
//! Rows are handed to a callback one by one as they are read, so memory stays flat.
//!
//! Threads: `main` of the admin process. Locks: SQLite's shared lock, for the snapshot.

use std::path::Path;

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, Row};

use super::BUSY_TIMEOUT;
use super::schema::CURRENT;
use crate::store::StoreError;
use crate::store::migrate::{AccountRow, DeviceRow, TokenRow};

/// Why a file cannot be exported.
pub enum ExportError {
    /// No file at the path.
    Missing,
    /// Not an SQLite file, or not one of ours: why.
    NotOurs(String),
    /// Written by a newer server.
    Newer {
        /// Its schema version.
        found: i64,
        /// The newest this binary reads.
        known: i64,
    },
    /// Any other failure.
    Store(StoreError),
}

impl From<rusqlite::Error> for ExportError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(ErrorCode::NotADatabase) => Self::NotOurs("not an SQLite database".into()),
            _ => Self::Store(e.into()),
        }
    }
}

/// A read-only snapshot of one SQLite database.
pub struct Export {
    conn: Connection,
    version: i64,
}

impl Export {
    /// Opens `path` read-only, starts the snapshot and checks the schema.
    pub fn open(path: &Path) -> Result<Self, ExportError> {
        if !path.is_file() {
            return Err(ExportError::Missing);
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Deferred: the snapshot starts at the first read, which is the next one.
        conn.execute_batch("BEGIN DEFERRED")?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > CURRENT {
            return Err(ExportError::Newer {
                found: version,
                known: CURRENT,
            });
        }
        let export = Self { conn, version };
        if version == 0 || !export.has("table", "devices")? || !export.has("table", "accounts")? {
            return Err(ExportError::NotOurs(
                "no devices and accounts tables of this server".into(),
            ));
        }
        Ok(export)
    }

    /// The source's schema version.
    pub fn schema_version(&self) -> i64 {
        self.version
    }

    fn has(&self, kind: &str, name: &str) -> Result<bool, rusqlite::Error> {
        self.conn
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = ?1 AND name = ?2",
                [kind, name],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
    }

    /// Calls `f` with every device, in id order; returns how many were read. A read
    /// failure is turned into the caller's error by `read_err`.
    pub fn devices<E>(
        &self,
        read_err: impl Fn(StoreError) -> E,
        mut f: impl FnMut(DeviceRow) -> Result<(), E>,
    ) -> Result<u64, E> {
        let err = |e: rusqlite::Error| read_err(e.into());
        let mut stmt = self
            .conn
            .prepare(
                "SELECT device_id, channel_uri, version, account_form, created_at, updated_at,
                        last_seen_at
                 FROM devices ORDER BY device_id",
            )
            .map_err(err)?;
        let mut rows = stmt.query([]).map_err(err)?;
        let mut n = 0;
        while let Some(r) = rows.next().map_err(err)? {
            f(device_row(r).map_err(err)?)?;
            n += 1;
        }
        Ok(n)
    }

    /// Calls `f` with every account, in (device, key) order; returns how many were read.
    pub fn accounts<E>(
        &self,
        read_err: impl Fn(StoreError) -> E,
        mut f: impl FnMut(AccountRow) -> Result<(), E>,
    ) -> Result<u64, E> {
        let err = |e: rusqlite::Error| read_err(e.into());
        let mut stmt = self
            .conn
            .prepare(
                "SELECT device_id, account_key, domain, node, secret, created_at
                 FROM accounts ORDER BY device_id, account_key",
            )
            .map_err(err)?;
        let mut rows = stmt.query([]).map_err(err)?;
        let mut n = 0;
        while let Some(r) = rows.next().map_err(err)? {
            f(account_row(r).map_err(err)?)?;
            n += 1;
        }
        Ok(n)
    }

    /// The removed-node list (schema 2 on; none before).
    pub fn removed_nodes(&self) -> Result<Vec<String>, StoreError> {
        if self.version < 2 {
            return Ok(Vec::new());
        }
        let mut stmt = self
            .conn
            .prepare("SELECT node FROM removed_nodes ORDER BY node")?;
        let nodes = stmt
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(nodes)
    }

    /// The stored WNS token, if any.
    pub fn token(&self) -> Result<Option<TokenRow>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT access_token, token_type, expires_at FROM wns_token WHERE id = 1",
                [],
                |r| {
                    Ok(TokenRow {
                        access_token: r.get(0)?,
                        token_type: r.get(1)?,
                        expires_at: r.get(2)?,
                    })
                },
            )
            .optional()?)
    }

    /// Whether removed nodes were being recorded: the setting from schema 3 on; before,
    /// whether the server had left its trigger in place.
    pub fn track_removed_nodes(&self) -> Result<bool, StoreError> {
        if self.version < 3 {
            return Ok(self.has("trigger", "accounts_removed")?);
        }
        let value: Option<i64> = self
            .conn
            .query_row(
                "SELECT value FROM settings WHERE key = 'track_removed_nodes'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        Ok(value != Some(0))
    }

    /// Ends the snapshot and closes the file (read-only: nothing to write back).
    pub fn close(self) {
        let _ = self.conn.execute_batch("COMMIT");
        let _ = self.conn.close();
    }
}

fn device_row(r: &Row<'_>) -> rusqlite::Result<DeviceRow> {
    Ok(DeviceRow {
        device_id: r.get(0)?,
        channel_uri: r.get(1)?,
        version: r.get(2)?,
        account_form: r.get(3)?,
        created_at: r.get(4)?,
        updated_at: r.get(5)?,
        last_seen_at: r.get(6)?,
    })
}

fn account_row(r: &Row<'_>) -> rusqlite::Result<AccountRow> {
    Ok(AccountRow {
        device_id: r.get(0)?,
        account_key: r.get(1)?,
        domain: r.get(2)?,
        node: r.get(3)?,
        secret: r.get(4)?,
        created_at: r.get(5)?,
    })
}
