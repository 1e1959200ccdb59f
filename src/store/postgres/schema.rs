//! PostgreSQL schema and migrations, keyed on the one row of `uwpx_schema`.
//!
//! The same tables as SQLite's (`../sqlite/schema.rs`), with the same meaning: unix
//! seconds in BIGINT columns, nodes and secrets as generated, the removed-node list
//! kept by a trigger that reads the `track_removed_nodes` setting. Migrations run in
//! one transaction under an advisory lock, so instances that start together on an
//! empty database migrate it once, and a crash mid-migration leaves the old version.
//! A database newer than this binary is refused rather than guessed at.
//!
//! Threads: runs once on `main` while the store is opened.

use postgres::Client;

use crate::store::StoreError;

/// Migration `i` takes the schema from version `i` to `i + 1`. Versions 1 to 3 hold what
/// SQLite's do; 4 (coalescing windows) exists only here, where instances share it.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE devices (
        device_id    TEXT PRIMARY KEY,
        channel_uri  TEXT NOT NULL,
        version      SMALLINT NOT NULL CHECK (version IN (1, 2)),
        account_form TEXT CHECK (account_form IN ('bare_jid', 'account_id')),
        created_at   BIGINT NOT NULL,
        updated_at   BIGINT NOT NULL,
        last_seen_at BIGINT NOT NULL
    );
    CREATE TABLE accounts (
        device_id   TEXT NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
        account_key TEXT NOT NULL,
        domain      TEXT,
        node        TEXT NOT NULL UNIQUE,
        secret      TEXT NOT NULL,
        created_at  BIGINT NOT NULL,
        PRIMARY KEY (device_id, account_key)
    );
    CREATE TABLE wns_token (
        id           INTEGER PRIMARY KEY CHECK (id = 1),
        access_token TEXT NOT NULL,
        token_type   TEXT NOT NULL,
        expires_at   BIGINT NOT NULL
    );",
    "CREATE TABLE removed_nodes (node TEXT PRIMARY KEY);",
    "CREATE TABLE settings (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
    INSERT INTO settings (key, value) VALUES ('track_removed_nodes', 1);
    CREATE FUNCTION uwpx_accounts_removed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF (SELECT value FROM settings WHERE key = 'track_removed_nodes') = 1 THEN
            INSERT INTO removed_nodes (node) VALUES (OLD.node) ON CONFLICT DO NOTHING;
        END IF;
        RETURN OLD;
    END $$;
    CREATE TRIGGER accounts_removed AFTER DELETE ON accounts
        FOR EACH ROW EXECUTE FUNCTION uwpx_accounts_removed();",
    // 3 -> 4: coalescing windows shared by every instance. UNLOGGED: they are worth
    // nothing after a database crash (the worst is one push too many), so no WAL, no
    // fsync, on the publish path.
    "CREATE UNLOGGED TABLE push_windows (
        node     TEXT PRIMARY KEY,
        sent_at  BIGINT NOT NULL,
        owed     BOOLEAN NOT NULL,
        summary  TEXT,
        decision SMALLINT NOT NULL
    );",
    // 4 -> 5: set_accounts in one round trip (see mod.rs `replace_accounts`). Each
    // statement inside reads what is committed once the device row is locked.
    "CREATE FUNCTION uwpx_set_accounts(p_device TEXT, p_version SMALLINT, p_form TEXT,
        p_now BIGINT, p_keys TEXT[], p_domains TEXT[], p_nodes TEXT[], p_secrets TEXT[])
    RETURNS TABLE (account_key TEXT, node TEXT, secret TEXT) LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE devices SET version = p_version,
            account_form = coalesce(p_form, devices.account_form),
            updated_at = p_now, last_seen_at = p_now
        WHERE device_id = p_device;
        IF NOT FOUND THEN
            RETURN QUERY SELECT NULL::TEXT, NULL::TEXT, NULL::TEXT;
            RETURN;
        END IF;
        DELETE FROM accounts a WHERE a.device_id = p_device
            AND NOT (a.account_key = ANY (p_keys));
        INSERT INTO accounts (device_id, account_key, domain, node, secret, created_at)
            SELECT p_device, k, d, n, s, p_now
            FROM unnest(p_keys, p_domains, p_nodes, p_secrets) AS x(k, d, n, s)
            ON CONFLICT ON CONSTRAINT accounts_pkey DO NOTHING;
        RETURN QUERY SELECT a.account_key, a.node, a.secret FROM accounts a
            WHERE a.device_id = p_device;
    END $$;",
];

/// The schema version this binary writes.
pub const CURRENT: i64 = MIGRATIONS.len() as i64;

/// Any 64-bit number, the same in every instance: the advisory lock of migrations.
const MIGRATION_LOCK: i64 = 0x7577_7078_6d69_6772; // "uwpxmigr"

/// Brings the database up to [`CURRENT`].
pub fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS uwpx_schema (version BIGINT NOT NULL)")?;
    let version: i64 = match tx.query_opt("SELECT version FROM uwpx_schema", &[])? {
        Some(row) => row.get(0),
        None => {
            tx.execute("INSERT INTO uwpx_schema (version) VALUES (0)", &[])?;
            0
        }
    };
    if version > CURRENT {
        return Err(StoreError::NewerSchema {
            found: version,
            known: CURRENT,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.batch_execute(sql)?;
        tx.execute("UPDATE uwpx_schema SET version = $1", &[&(i as i64 + 1)])?;
        log::info!("store: migrated schema to version {}", i + 1);
    }
    tx.commit()?;
    Ok(())
}
