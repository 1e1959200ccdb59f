//! `migrate-db`: moves a deployment from its SQLite file onto PostgreSQL.
//!
//! Clients from 0.40 on never register again unless their channel or accounts change,
//! so a device whose node or secret changed in the move would never get a push again.
//! Everything is therefore copied exactly as stored: devices with their channel,
//! version, account form and timestamps; accounts with their key (already a hash for
//! bare_jid clients), domain, node and secret; the WNS token; the removed-node list and
//! its `track_removed_nodes` setting. Nothing is re-derived or regenerated.
//!
//! The source is opened read-only (`sqlite/export.rs`) and read as one consistent
//! snapshot; the file is never written, and a file that someone else wrote during the
//! copy is noticed before the COMMIT and the copy rolled back. The target
//! (`postgres/import.rs`) is written in ONE transaction that first locks the tables and
//! refuses a target that already holds devices: a failure anywhere leaves the target as
//! it was. Rows stream from SQLite straight into binary `COPY`, so memory stays flat
//! however many devices there are.
//!
//! Threads: `main` of the admin process. Locks: PostgreSQL's table locks, for the one
//! transaction; on the SQLite side see `sqlite/export.rs`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::StoreError;
use super::postgres::Postgres;
use super::sqlite::export::{Export, ExportError};
use crate::config::DbConfig;

/// Why a migration did not happen. In every case the target is unchanged.
#[derive(Debug)]
pub enum MigrateError {
    /// The configuration names no PostgreSQL database.
    NoTarget,
    /// The SQLite file does not exist.
    SourceMissing(PathBuf),
    /// The file is not an SQLite database, or not one of this server's.
    NotOurs(PathBuf, String),
    /// The file was written by a newer server.
    SourceNewer {
        /// The file.
        path: PathBuf,
        /// Its schema version.
        found: i64,
        /// The newest this binary reads.
        known: i64,
    },
    /// Reading the SQLite file failed.
    Source(PathBuf, StoreError),
    /// The SQLite file was opened or written by someone else during the copy.
    SourceChanged(PathBuf),
    /// PostgreSQL could not be opened or refused a statement.
    Target(String, StoreError),
    /// The target already holds devices.
    TargetNotEmpty {
        /// `postgresql host:port/dbname`.
        target: String,
        /// How many.
        devices: u64,
    },
    /// Fewer or more rows arrived than were read: nothing was committed.
    Mismatch {
        /// Which table.
        what: &'static str,
        /// Rows read from SQLite.
        read: u64,
        /// Rows PostgreSQL took.
        written: u64,
    },
}

impl fmt::Display for MigrateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoTarget => f.write_str(
                "the configuration has no db.url: set it to the PostgreSQL database to copy into \
                 (postgres://USER:PASSWORD@HOST:PORT/DBNAME)",
            ),
            Self::SourceMissing(p) => write!(f, "{}: no such file", p.display()),
            Self::NotOurs(p, why) => write!(
                f,
                "{}: not a uwpx-push-server SQLite database ({why})",
                p.display()
            ),
            Self::SourceNewer { path, found, known } => write!(
                f,
                "{}: schema version {found} is newer than this server's ({known}); use the \
                 newer server's migrate-db",
                path.display()
            ),
            Self::Source(p, e) => write!(f, "reading {}: {e}", p.display()),
            Self::SourceChanged(p) => write!(
                f,
                "{} changed during the copy (is a server running on it?); rolled back, nothing \
                 was copied",
                p.display()
            ),
            Self::Target(t, e) => write!(f, "{t}: {e}"),
            Self::TargetNotEmpty { target, devices } => write!(
                f,
                "{target} already holds {devices} device(s); migrate-db only fills an empty \
                 database, so nothing was copied"
            ),
            Self::Mismatch {
                what,
                read,
                written,
            } => write!(
                f,
                "{what}: read {read} rows but PostgreSQL took {written}; rolled back, nothing was copied"
            ),
        }
    }
}

impl std::error::Error for MigrateError {}

/// What was copied.
#[derive(Debug, Clone)]
pub struct MigrationReport {
    /// The SQLite file.
    pub source: PathBuf,
    /// Its schema version.
    pub source_schema: i64,
    /// `postgresql host:port/dbname`: the target.
    pub target: String,
    /// Devices copied.
    pub devices: u64,
    /// Accounts copied.
    pub accounts: u64,
    /// Entries of the removed-node list copied.
    pub removed_nodes: u64,
    /// Expiry (unix seconds) of the WNS token copied, if there was one.
    pub token_expires_at: Option<i64>,
    /// The `track_removed_nodes` setting copied.
    pub track_removed_nodes: bool,
    /// A `-wal` file lay beside the SQLite file: a server may still have been running
    /// (what it stored after the snapshot is not in the copy), or it did not stop
    /// cleanly (harmless: the WAL was read).
    pub source_live: bool,
    /// Wall time of the whole copy, commit included.
    pub elapsed: Duration,
}

/// Copies the SQLite database at `sqlite` into the (empty) PostgreSQL database that
/// `db.url` names, in one transaction. The source file is only read.
pub fn migrate_sqlite_to_postgres(
    sqlite: &Path,
    db: &DbConfig,
) -> Result<MigrationReport, MigrateError> {
    let started = Instant::now();
    let url = db.url.as_ref().ok_or(MigrateError::NoTarget)?;
    // The source first: a wrong file name is the likeliest slip, and needs no server.
    let source = Export::open(sqlite).map_err(|e| match e {
        ExportError::Missing => MigrateError::SourceMissing(sqlite.to_owned()),
        ExportError::NotOurs(why) => MigrateError::NotOurs(sqlite.to_owned(), why),
        ExportError::Newer { found, known } => MigrateError::SourceNewer {
            path: sqlite.to_owned(),
            found,
            known,
        },
        ExportError::Store(e) => MigrateError::Source(sqlite.to_owned(), e),
    })?;
    let src = |e: StoreError| MigrateError::Source(sqlite.to_owned(), e);
    let pg = Postgres::open(db, url.expose()).map_err(|e| MigrateError::Target(url.masked(), e))?;
    let target = pg.describe();
    let tgt = |e: StoreError| MigrateError::Target(target.clone(), e);

    let report = pg
        .import(|imp| {
            let existing = imp.device_count().map_err(tgt)?;
            if existing > 0 {
                return Err(MigrateError::TargetNotEmpty {
                    target: target.clone(),
                    devices: existing,
                }
                .into());
            }
            let mut sink = imp.devices().map_err(tgt)?;
            let read = source.devices(src, |row| sink.put(&row).map_err(tgt))?;
            let devices = sink.finish().map_err(tgt)?;
            check("devices", read, devices)?;

            let mut sink = imp.accounts().map_err(tgt)?;
            let read = source.accounts(src, |row| sink.put(&row).map_err(tgt))?;
            let accounts = sink.finish().map_err(tgt)?;
            check("accounts", read, accounts)?;

            let removed = source.removed_nodes().map_err(src)?;
            imp.removed_nodes(&removed).map_err(tgt)?;
            let token = source.token().map_err(src)?;
            if let Some(t) = &token {
                imp.token(t).map_err(tgt)?;
            }
            let track = source.track_removed_nodes().map_err(src)?;
            imp.track_removed_nodes(track).map_err(tgt)?;
            if !source.unchanged() {
                return Err(MigrateError::SourceChanged(sqlite.to_owned()).into());
            }
            Ok::<_, ImportFailed>(MigrationReport {
                source: sqlite.to_owned(),
                source_schema: source.schema_version(),
                target: target.clone(),
                devices,
                accounts,
                removed_nodes: removed.len() as u64,
                token_expires_at: token.map(|t| t.expires_at),
                track_removed_nodes: track,
                source_live: source.live(),
                elapsed: Duration::ZERO,
            })
        })
        .map_err(|e| match e {
            ImportFailed::Migrate(e) => e,
            ImportFailed::Store(e) => tgt(e),
        })?;
    source.close();
    pg.close().map_err(tgt)?;
    Ok(MigrationReport {
        elapsed: started.elapsed(),
        ..report
    })
}

fn check(what: &'static str, read: u64, written: u64) -> Result<(), MigrateError> {
    if read == written {
        Ok(())
    } else {
        Err(MigrateError::Mismatch {
            what,
            read,
            written,
        })
    }
}

/// The error of the import transaction: ours from inside it, or the store's from
/// around it (BEGIN, the table locks, COMMIT).
pub(super) enum ImportFailed {
    Migrate(MigrateError),
    Store(StoreError),
}

impl From<MigrateError> for ImportFailed {
    fn from(e: MigrateError) -> Self {
        Self::Migrate(e)
    }
}

impl From<StoreError> for ImportFailed {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}
