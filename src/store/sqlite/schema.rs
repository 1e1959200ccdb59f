//! Schema and migrations, keyed on `PRAGMA user_version`.
//!
//! Each entry of [`MIGRATIONS`] moves the database from version `i` to `i + 1` inside one
//! transaction, so a crash mid-migration leaves the old version intact. A database newer
//! than this binary is refused rather than guessed at.
//!
//! Threads: runs once on `main` while the store is opened.

use rusqlite::Connection;

use super::StoreError;

/// Migration `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1: devices, their accounts, and the cached WNS token.
    "CREATE TABLE devices (
        device_id    TEXT PRIMARY KEY NOT NULL,
        channel_uri  TEXT NOT NULL,
        version      INTEGER NOT NULL CHECK (version IN (1, 2)),
        account_form TEXT CHECK (account_form IN ('bare_jid', 'account_id')),
        created_at   INTEGER NOT NULL,
        updated_at   INTEGER NOT NULL,
        last_seen_at INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE accounts (
        device_id   TEXT NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
        account_key TEXT NOT NULL,
        domain      TEXT,
        node        TEXT NOT NULL UNIQUE,
        secret      TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        PRIMARY KEY (device_id, account_key)
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE wns_token (
        id           INTEGER PRIMARY KEY CHECK (id = 1),
        access_token TEXT NOT NULL,
        token_type   TEXT NOT NULL,
        expires_at   INTEGER NOT NULL
    ) STRICT;",
    // 1 -> 2: a durable to-do list of PEP nodes to delete on the push account (client
    // mode). Every way an account disappears (removed by the client, device gone,
    // expiry, admin) goes through a DELETE on accounts, cascaded deletes included, so
    // one trigger catches them all in the same transaction: nothing leaks even if the
    // process dies before the XMPP request.
    "CREATE TABLE removed_nodes (node TEXT PRIMARY KEY NOT NULL) STRICT, WITHOUT ROWID;
    CREATE TRIGGER accounts_removed AFTER DELETE ON accounts BEGIN
        INSERT OR IGNORE INTO removed_nodes (node) VALUES (old.node);
    END;",
    // 2 -> 3: whether the list is kept becomes a stored setting the trigger reads, so
    // the trigger lives only here (before, the server created or dropped it at start).
    // Tracking stays on, as version 2 had it, until the server says otherwise at start.
    "CREATE TABLE settings (key TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL) STRICT, WITHOUT ROWID;
    INSERT INTO settings (key, value) VALUES ('track_removed_nodes', 1);
    DROP TRIGGER IF EXISTS accounts_removed;
    CREATE TRIGGER accounts_removed AFTER DELETE ON accounts
    WHEN (SELECT value FROM settings WHERE key = 'track_removed_nodes') = 1
    BEGIN
        INSERT OR IGNORE INTO removed_nodes (node) VALUES (old.node);
    END;",
];

/// The schema version this binary writes.
pub const CURRENT: i64 = MIGRATIONS.len() as i64;

/// Brings the database up to [`CURRENT`].
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > CURRENT {
        return Err(StoreError::NewerSchema {
            found: version,
            known: CURRENT,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        log::info!("store: migrated schema to version {}", i + 1);
    }
    Ok(())
}
