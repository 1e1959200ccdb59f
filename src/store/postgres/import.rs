//! Filling an empty PostgreSQL database for `migrate-db` (see `../migrate.rs`).
//!
//! Everything happens in ONE transaction on one connection ([`Postgres::import`]): it
//! first takes the tables' locks, so no server writing the same database can slip a
//! device in between the emptiness check and the COMMIT, and lifts this session's
//! statement and idle timeouts for the transaction (a million rows take longer than a
//! request may). Devices and accounts go in by binary `COPY`, row by row as the source
//! reads them; the few other rows by plain statements. Values are written as stored.
//!
//! Threads: `main` of the admin process. Locks: the tables' `SHARE ROW EXCLUSIVE` locks
//! (readers go on; writers wait) until the transaction ends.

use postgres::Transaction;
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::Type;

use super::Postgres;
use crate::store::StoreError;
use crate::store::rows::{AccountRow, DeviceRow, TokenRow};

/// The transaction an import runs in.
pub struct Import<'c> {
    tx: Transaction<'c>,
}

impl Postgres {
    /// Runs `f` in one transaction and commits it if `f` succeeds; on any error the
    /// transaction is rolled back and the database is as it was.
    pub fn import<R, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&mut Import<'_>) -> Result<R, E>,
    ) -> Result<R, E> {
        let mut conn = self
            .pool
            .get()
            .map_err(|e| StoreError::Unavailable(e.to_string().into()))?;
        let mut tx = conn.client.transaction().map_err(StoreError::from)?;
        // The lock waits at most the session's lock_timeout (a running server's
        // transactions are short); what follows may take minutes.
        tx.batch_execute(
            "LOCK TABLE devices, accounts, removed_nodes, wns_token, settings
               IN SHARE ROW EXCLUSIVE MODE;
             SET LOCAL statement_timeout = 0;
             SET LOCAL idle_in_transaction_session_timeout = 0;",
        )
        .map_err(StoreError::from)?;
        let mut import = Import { tx };
        let out = f(&mut import)?;
        import.tx.commit().map_err(StoreError::from)?;
        Ok(out)
    }
}

impl Import<'_> {
    /// How many devices the target already holds.
    pub fn device_count(&mut self) -> Result<u64, StoreError> {
        let n: i64 = self
            .tx
            .query_one("SELECT count(*) FROM devices", &[])?
            .get(0);
        Ok(n as u64)
    }

    /// A `COPY` into `devices`.
    pub fn devices(&mut self) -> Result<Sink<'_>, StoreError> {
        Sink::open(
            &mut self.tx,
            "COPY devices (device_id, channel_uri, version, account_form, created_at,
                           updated_at, last_seen_at) FROM STDIN (FORMAT binary)",
            &[
                Type::TEXT,
                Type::TEXT,
                Type::INT2,
                Type::TEXT,
                Type::INT8,
                Type::INT8,
                Type::INT8,
            ],
        )
    }

    /// A `COPY` into `accounts`.
    pub fn accounts(&mut self) -> Result<Sink<'_>, StoreError> {
        Sink::open(
            &mut self.tx,
            "COPY accounts (device_id, account_key, domain, node, secret, created_at)
             FROM STDIN (FORMAT binary)",
            &[
                Type::TEXT,
                Type::TEXT,
                Type::TEXT,
                Type::TEXT,
                Type::TEXT,
                Type::INT8,
            ],
        )
    }

    /// Adds nodes to the removed-node list (keeping any already there), 10,000 per
    /// statement.
    pub fn removed_nodes(&mut self, nodes: &[String]) -> Result<(), StoreError> {
        for chunk in nodes.chunks(10_000) {
            self.tx.execute(
                "INSERT INTO removed_nodes (node) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
                &[&chunk],
            )?;
        }
        Ok(())
    }

    /// Stores the WNS token, unless the target holds one that lasts longer.
    pub fn token(&mut self, t: &TokenRow) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT INTO wns_token (id, access_token, token_type, expires_at) VALUES (1, $1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET access_token = excluded.access_token,
               token_type = excluded.token_type, expires_at = excluded.expires_at
             WHERE wns_token.expires_at < excluded.expires_at",
            &[&t.access_token, &t.token_type, &t.expires_at],
        )?;
        Ok(())
    }

    /// Sets the `track_removed_nodes` setting.
    pub fn track_removed_nodes(&mut self, enabled: bool) -> Result<(), StoreError> {
        self.tx.execute(
            "UPDATE settings SET value = $1 WHERE key = 'track_removed_nodes'",
            &[&i64::from(enabled)],
        )?;
        Ok(())
    }
}

/// One running binary `COPY`. Dropped without [`Sink::finish`], it is aborted (and the
/// transaction with it).
pub struct Sink<'t> {
    writer: BinaryCopyInWriter<'t>,
}

impl<'t> Sink<'t> {
    fn open(
        tx: &'t mut Transaction<'_>,
        sql: &str,
        types: &[Type],
    ) -> Result<Sink<'t>, StoreError> {
        let raw = tx.copy_in(sql)?;
        Ok(Self {
            writer: BinaryCopyInWriter::new(raw, types),
        })
    }

    /// Ends the `COPY`; returns how many rows PostgreSQL took.
    pub fn finish(self) -> Result<u64, StoreError> {
        Ok(self.writer.finish()?)
    }
}

/// A row a [`Sink`] takes.
pub trait CopyRow {
    /// Writes the row's columns in the order of the sink's `COPY`.
    fn write(&self, w: &mut BinaryCopyInWriter<'_>) -> Result<(), postgres::Error>;
}

impl Sink<'_> {
    /// Writes one row.
    pub fn put(&mut self, row: &impl CopyRow) -> Result<(), StoreError> {
        Ok(row.write(&mut self.writer)?)
    }
}

impl CopyRow for DeviceRow {
    fn write(&self, w: &mut BinaryCopyInWriter<'_>) -> Result<(), postgres::Error> {
        // The SQLite schema allows only 1 and 2, so the narrowing cannot fail there;
        // anything else is refused by the target's CHECK, as it should be.
        let version = i16::try_from(self.version).unwrap_or(i16::MAX);
        w.write(&[
            &self.device_id,
            &self.channel_uri,
            &version,
            &self.account_form,
            &self.created_at,
            &self.updated_at,
            &self.last_seen_at,
        ])
    }
}

impl CopyRow for AccountRow {
    fn write(&self, w: &mut BinaryCopyInWriter<'_>) -> Result<(), postgres::Error> {
        w.write(&[
            &self.device_id,
            &self.account_key,
            &self.domain,
            &self.node,
            &self.secret,
            &self.created_at,
        ])
    }
}
