//! Reading a whole SQLite database for `migrate-db` (see `../migrate.rs`), without ever
//! writing it.
//!
//! The file is opened read-only (never created, never migrated: a file of an older
//! schema is read as that schema has it) and every read runs in one read transaction,
//! so the rows form one consistent snapshot. Rows are handed to a callback one by one
//! as they are read, so memory stays flat.
//!
//! After a clean stop the server leaves no `-wal` file, and the whole database is in
//! the one file. It is then read as an immutable file: a plain read-only connection to
//! a WAL database creates `-wal` and `-shm` files beside it, owned by whoever runs the
//! command, which a server running as another user could not open afterwards. An
//! immutable file takes no locks, so [`Export::unchanged`] checks at the end that no
//! server opened or wrote it meanwhile (no `-wal` appeared; size and modification time
//! are as they were), and the copy is rolled back if one did. If a `-wal` file exists
//! (a server runs, or did not stop cleanly), the file is read the ordinary way, which
//! sees the WAL's committed transactions, and [`Export::live`] says so for a warning.
//!
//! Threads: `main` of the admin process. Locks: for a live file, SQLite's read lock for
//! the snapshot; none for an immutable one.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, Row};

use super::BUSY_TIMEOUT;
use super::schema::CURRENT;
use crate::store::StoreError;
use crate::store::rows::{AccountRow, DeviceRow, TokenRow};

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
    live: bool,
    /// For an immutable read: the file, its `-wal` name, and its stamp at open.
    watch: Option<(PathBuf, PathBuf, Stamp)>,
}

/// Size and modification time of a file: what a writer would change.
type Stamp = (u64, Option<SystemTime>);

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let m = std::fs::metadata(path)?;
    Ok((m.len(), m.modified().ok()))
}

/// `file:` URI of `path` with `immutable=1`; every byte but unreserved ones and `/`
/// percent-encoded, so no `?`, `#` or `%` in a file name can change its meaning.
#[cfg(unix)]
fn immutable_uri(path: &Path) -> Result<String, ExportError> {
    use std::os::unix::ffi::OsStrExt;
    let abs = std::path::absolute(path)
        .map_err(|e| ExportError::Store(StoreError::Unavailable(e.to_string().into())))?;
    let mut uri = String::from("file:");
    for &b in abs.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            uri.push(char::from(b));
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri.push_str("?immutable=1");
    Ok(uri)
}

impl Export {
    /// Opens `path` read-only, starts the snapshot and checks the schema.
    pub fn open(path: &Path) -> Result<Self, ExportError> {
        if !path.is_file() {
            return Err(ExportError::Missing);
        }
        let mut wal = OsString::from(path.as_os_str());
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        let live = wal.exists();
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let (conn, watch) = if live {
            (Connection::open_with_flags(path, flags)?, None)
        } else {
            let at_open = stamp(path)
                .map_err(|e| ExportError::Store(StoreError::Unavailable(e.to_string().into())))?;
            let conn = Connection::open_with_flags(
                immutable_uri(path)?,
                flags | OpenFlags::SQLITE_OPEN_URI,
            )?;
            (conn, Some((path.to_owned(), wal, at_open)))
        };
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
        let export = Self {
            conn,
            version,
            live,
            watch,
        };
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

    /// Whether a `-wal` file was there: a server may still be writing the file, and
    /// what it writes after this snapshot is not copied.
    pub fn live(&self) -> bool {
        self.live
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

    /// For a file read as immutable: that nothing opened or wrote it since [`Export::open`]
    /// (no `-wal` appeared, size and modification time unchanged), so what was read is
    /// one consistent state. Always true for a live file (its read transaction is).
    pub fn unchanged(&self) -> bool {
        match &self.watch {
            None => true,
            Some((path, wal, at_open)) => {
                !wal.exists() && stamp(path).is_ok_and(|now| now == *at_open)
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Synchronous;
    use crate::store::Store;

    /// A fresh, cleanly closed database of ours with one device, in its own directory
    /// (with an awkward name for the URI).
    fn closed_db(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("uwpx-export-{tag}-{}-#%?", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("push.db");
        let store = Store::open_sqlite(&path, Synchronous::Normal).unwrap();
        store.close().unwrap();
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "INSERT INTO devices VALUES ('d1', 'https://x.notify.windows.com/?t', 2, NULL, 1, 2, 3)",
        )
        .unwrap();
        conn.close().unwrap();
        path
    }

    fn side_files(path: &Path) -> Vec<bool> {
        ["-wal", "-shm"]
            .iter()
            .map(|s| PathBuf::from(format!("{}{s}", path.display())).exists())
            .collect()
    }

    #[test]
    fn a_cleanly_closed_file_is_read_without_creating_files_beside_it() {
        let path = closed_db("clean");
        assert_eq!(side_files(&path), [false, false]);
        let export = Export::open(&path).ok().unwrap();
        assert!(!export.live());
        let n = export
            .devices(
                |e| e,
                |row| {
                    assert_eq!(row.device_id, "d1");
                    Ok(())
                },
            )
            .unwrap();
        assert_eq!(n, 1);
        assert!(export.unchanged());
        export.close();
        assert_eq!(side_files(&path), [false, false]);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    /// Files of schema 1 and 2 (a server that never ran this version) are read as
    /// they are: no list before 2; before 3, tracking is whether the trigger is there.
    #[test]
    fn older_schemas_are_read_without_migrating_them() {
        let path = closed_db("old");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "INSERT INTO removed_nodes VALUES ('gone');
             DROP TRIGGER accounts_removed; DROP TABLE settings;
             CREATE TRIGGER accounts_removed AFTER DELETE ON accounts BEGIN
                 INSERT OR IGNORE INTO removed_nodes (node) VALUES (old.node);
             END;
             PRAGMA user_version = 2",
        )
        .unwrap();
        conn.close().unwrap();
        let export = Export::open(&path).ok().unwrap();
        assert_eq!(export.schema_version(), 2);
        assert_eq!(export.removed_nodes().unwrap(), ["gone"]);
        assert!(export.track_removed_nodes().unwrap());
        export.close();

        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "DROP TRIGGER accounts_removed; DROP TABLE removed_nodes; PRAGMA user_version = 1",
        )
        .unwrap();
        conn.close().unwrap();
        let export = Export::open(&path).ok().unwrap();
        assert!(export.removed_nodes().unwrap().is_empty());
        assert!(!export.track_removed_nodes().unwrap());
        assert_eq!(export.devices(|e| e, |_| Ok(())).unwrap(), 1);
        export.close();
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn a_write_during_an_immutable_read_is_noticed() {
        let path = closed_db("written");
        let export = Export::open(&path).ok().unwrap();
        let writer = Connection::open(&path).unwrap();
        writer
            .execute_batch("UPDATE devices SET last_seen_at = 4")
            .unwrap();
        assert!(!export.unchanged(), "a -wal appeared");
        writer.close().unwrap();
        assert!(!export.unchanged(), "the file was written");
        export.close();
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
