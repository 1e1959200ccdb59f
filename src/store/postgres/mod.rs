//! The PostgreSQL backend: the same data and contract as SQLite's, in a database that
//! several instances on several hosts can share.
//!
//! An r2d2 pool of `db.pool_size` connections. Each connection carries its own cache
//! of prepared statements, so a hot query is parsed once per connection, not once per
//! call (that cache is why the pool manages [`PgConn`] rather than r2d2_postgres's bare
//! client). Every write is one transaction on one connection, and a method returns only
//! after its COMMIT: PostgreSQL's own group commit batches the WAL flushes of
//! concurrent writers, so no batching of ours sits on top.
//!
//! Concurrent registrations for one device serialise on its row: `set_accounts` (one
//! call of a server-side function, one round trip) locks the device row first (its
//! `UPDATE`), then changes and reads the accounts, so two of them never both create the
//! same account or lose each other's change, and no two transactions take row locks in
//! opposite orders.
//!
//! Failures: a connection that breaks (the server restarted) is replaced, and a call
//! that failed on it is tried once more on a fresh one (every write here is
//! idempotent). An unreachable database is [`StoreError::Unavailable`]; a statement
//! that outlives the statement timeout or loses a lock wait is [`StoreError::Busy`].
//! The log says once that the database went away, and once that it is back.
//!
//! Threads: whichever thread calls [`super::Store`]; r2d2's own `r2d2-worker-*`
//! threads open connections in the background. Locks: the pool's, briefly; row locks
//! in PostgreSQL for the length of one transaction, never across our network I/O.

mod import;
mod listing;
mod schema;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use postgres::error::SqlState;
use postgres::{Client, Statement};
use postgres_native_tls::MakeTlsConnector;

use super::{
    AccountRecord, AccountSpec, Counts, DeviceRecord, NodeTarget, SharedAdmit, StoreError,
};
use crate::config::DbConfig;
use crate::types::{
    AccountForm, AccountKey, ChannelUri, DeviceId, Node, ProtocolVersion, SavedToken, Secret,
    Summary,
};

/// The timeouts that keep a request's answer within `tcp.read_timeout_ms` however slow
/// or absent the database is: a statement (or a wait for a row lock) may take half of
/// it, waiting for a connection a quarter (between 1 and 2 s: a login takes time).
fn timeouts(request: Duration) -> (Duration, Duration) {
    let statement = (request / 2).max(Duration::from_millis(100));
    let checkout = (request / 4).clamp(Duration::from_secs(1), Duration::from_secs(2));
    (statement, checkout)
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        let Some(db) = e.as_db_error() else {
            // No answer from the server at all: the connection is gone or never came.
            return Self::Unavailable(e.to_string().into());
        };
        let code = db.code();
        if [
            SqlState::QUERY_CANCELED,
            SqlState::LOCK_NOT_AVAILABLE,
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
        ]
        .contains(code)
        {
            Self::Busy
        } else if *code == SqlState::DISK_FULL {
            Self::Full
        } else if *code == SqlState::DATA_CORRUPTED || *code == SqlState::INDEX_CORRUPTED {
            Self::Corrupt(db.message().into())
        } else if code.code().starts_with("08")
            || code.code().starts_with("28")
            || code.code().starts_with("57P")
            || *code == SqlState::TOO_MANY_CONNECTIONS
        {
            Self::Unavailable(db.message().into())
        } else {
            Self::Internal(format!("{}: {}", code.code(), db.message()).into())
        }
    }
}

/// One pooled connection and its prepared statements.
pub struct PgConn {
    client: Client,
    statements: HashMap<&'static str, Statement>,
}

impl PgConn {
    /// The prepared statement for `sql`, prepared on first use on this connection.
    fn statement(&mut self, sql: &'static str) -> Result<Statement, postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }
}

/// Opens connections for the pool.
struct Manager {
    config: postgres::Config,
    tls: MakeTlsConnector,
    /// The connection `open` made (and migrated with): the pool's first, so a fresh
    /// instance does not wait for a second login before its first query.
    first: std::sync::Mutex<Option<PgConn>>,
}

impl r2d2::ManageConnection for Manager {
    type Connection = PgConn;
    type Error = postgres::Error;

    fn connect(&self) -> Result<PgConn, postgres::Error> {
        if let Some(first) = self.first.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Ok(first);
        }
        Ok(PgConn {
            client: self.config.connect(self.tls.clone())?,
            statements: HashMap::new(),
        })
    }

    fn is_valid(&self, conn: &mut PgConn) -> Result<(), postgres::Error> {
        conn.client.simple_query("").map(|_| ())
    }

    fn has_broken(&self, conn: &mut PgConn) -> bool {
        conn.client.is_closed()
    }
}

/// The advisory lock of the WNS token refresh ("uwpxtokn").
const TOKEN_LOCK: i64 = 0x7577_7078_746f_6b6e;
/// The advisory lock of the expiry sweep ("uwpxexpi").
const EXPIRY_LOCK: i64 = 0x7577_7078_6578_7069;

/// The PostgreSQL database.
pub struct Postgres {
    pool: r2d2::Pool<Manager>,
    /// How to open a connection outside the pool (a lease holds one of its own).
    config: postgres::Config,
    tls: MakeTlsConnector,
    /// `host:port/dbname`, for the log (never the password).
    label: String,
    /// False while the database is unreachable, so that is logged once.
    reachable: AtomicBool,
}

impl Postgres {
    /// Connects once (so wrong credentials or an unreachable host fail here, with the
    /// server's own words), migrates, and builds the pool.
    pub fn open(db: &DbConfig, url: &str) -> Result<Self, StoreError> {
        let mut config: postgres::Config = with_verified_tls(url)
            .parse()
            .map_err(|e| StoreError::Unavailable(format!("db.url: {e}").into()))?;
        let label = label(&config);
        let (statement, checkout) = timeouts(db.request_timeout);
        let ms = statement.as_millis();
        config
            .application_name("uwpx-push-server")
            .connect_timeout(checkout)
            .keepalives_idle(Duration::from_secs(30))
            .options(&format!(
                "-c statement_timeout={ms} -c lock_timeout={ms} -c idle_in_transaction_session_timeout={}",
                ms * 2
            ));
        let tls = tls_connector(db)?;
        let mut first = PgConn {
            client: config.connect(tls.clone()).map_err(|e| {
                StoreError::Unavailable(format!("PostgreSQL at {label}: {}", describe(&e)).into())
            })?,
            statements: HashMap::new(),
        };
        schema::migrate(&mut first.client)?;
        let manager = Manager {
            config: config.clone(),
            tls: tls.clone(),
            first: std::sync::Mutex::new(Some(first)),
        };
        let pool = r2d2::Pool::builder()
            .max_size(db.pool_size)
            .min_idle(Some(db.pool_size.min(2)))
            .connection_timeout(checkout)
            // A dead connection is found by `has_broken` or by the call that meets it
            // (and is retried); a test query per checkout would cost a round trip.
            .test_on_check_out(false)
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .build_unchecked(manager);
        Ok(Self {
            pool,
            config,
            tls,
            label,
            reachable: AtomicBool::new(true),
        })
    }

    /// `postgresql host:port/dbname`.
    pub fn describe(&self) -> String {
        format!("postgresql {}", self.label)
    }

    /// Runs `f` on a pooled connection; on a connection-level failure, once more on a
    /// fresh one. Logs the database going away and coming back, once each.
    fn with<R>(&self, f: impl Fn(&mut PgConn) -> Result<R, StoreError>) -> Result<R, StoreError> {
        let mut result = self.attempt(&f);
        if matches!(result, Err(StoreError::Unavailable(_))) {
            result = self.attempt(&f);
        }
        match &result {
            Err(StoreError::Unavailable(why)) => {
                if self.reachable.swap(false, Ordering::AcqRel) {
                    log::error!(
                        "store: PostgreSQL at {} is unavailable ({why}); requests are answered \"try again later\" until it is back",
                        self.label
                    );
                }
            }
            _ => {
                if !self.reachable.swap(true, Ordering::AcqRel) {
                    log::info!("store: PostgreSQL at {} is back", self.label);
                }
            }
        }
        result
    }

    fn attempt<R>(
        &self,
        f: &impl Fn(&mut PgConn) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut conn = self
            .pool
            .get()
            .map_err(|e| StoreError::Unavailable(e.to_string().into()))?;
        // A connection that broke during `f` reports `is_closed` and is dropped by the
        // pool when it comes back (`has_broken`).
        f(&mut conn)
    }

    /// Creates the device or updates its channel and version, keeping its accounts.
    pub fn set_channel(
        &self,
        device: &DeviceId,
        uri: &ChannelUri,
        version: ProtocolVersion,
        now: i64,
    ) -> Result<(), StoreError> {
        let version = i16::from(version.number());
        self.with(|c| {
            let s = c.statement(
                "INSERT INTO devices (device_id, channel_uri, version, created_at, updated_at, last_seen_at)
                 VALUES ($1, $2, $3, $4, $4, $4)
                 ON CONFLICT (device_id) DO UPDATE SET
                   channel_uri = excluded.channel_uri, version = excluded.version,
                   updated_at = excluded.updated_at, last_seen_at = excluded.last_seen_at",
            )?;
            c.client
                .execute(&s, &[&device.as_str(), &uri.as_str(), &version, &now])?;
            Ok(())
        })
    }

    /// Replaces the device's account set in one transaction (see the module docs for
    /// why it cannot race with itself).
    pub fn set_accounts(
        &self,
        device: &DeviceId,
        version: ProtocolVersion,
        form: Option<AccountForm>,
        accounts: &[AccountSpec],
        now: i64,
    ) -> Result<Option<Vec<AccountRecord>>, StoreError> {
        self.with(|c| replace_accounts(c, device, version, form, accounts, now))
    }

    /// Loads one device.
    pub fn device(&self, device: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        self.with(|c| {
            let s = c.statement(
                "SELECT channel_uri, version, account_form, updated_at, last_seen_at
                 FROM devices WHERE device_id = $1",
            )?;
            let row = c.client.query_opt(&s, &[&device.as_str()])?;
            Ok(row.map(|r| DeviceRecord {
                device_id: device.clone(),
                channel_uri: ChannelUri::from_stored(r.get(0)),
                version: stored_version(r.get(1)),
                account_form: form_of(r.get(2)),
                updated_at: r.get(3),
                last_seen_at: r.get(4),
            }))
        })
    }

    /// The push targets behind `nodes`, in their order, in one round trip: under load
    /// the XMPP thread reads publishes in batches, and a round trip per publish was
    /// what bounded it on PostgreSQL.
    pub fn node_targets(&self, nodes: &[&Node]) -> Result<Vec<Option<NodeTarget>>, StoreError> {
        let keys: Vec<&str> = nodes.iter().map(|n| n.as_str()).collect();
        let found = self.with(|c| {
            let s = c.statement(
                "SELECT a.node, a.device_id, a.account_key, a.domain, a.secret, d.channel_uri,
                        d.version, d.account_form, d.last_seen_at
                 FROM accounts a JOIN devices d USING (device_id) WHERE a.node = ANY($1)",
            )?;
            let rows = c.client.query(&s, &[&keys])?;
            Ok(rows
                .iter()
                .map(|r| {
                    let target = NodeTarget {
                        device_id: DeviceId::from_stored(r.get(1)),
                        account_key: AccountKey::from_stored(r.get(2)),
                        domain: r.get(3),
                        secret: Secret::from_stored(r.get(4)),
                        channel_uri: ChannelUri::from_stored(r.get(5)),
                        version: stored_version(r.get(6)),
                        account_form: form_of(r.get(7)),
                        last_seen_at: r.get(8),
                    };
                    (r.get::<_, String>(0), target)
                })
                .collect::<HashMap<_, _>>())
        })?;
        Ok(keys.iter().map(|k| found.get(*k).cloned()).collect())
    }

    /// The accounts of one device, ordered by key.
    pub fn accounts(&self, device: &DeviceId) -> Result<Vec<AccountRecord>, StoreError> {
        self.with(|c| {
            let s = c.statement(
                "SELECT account_key, node, secret FROM accounts WHERE device_id = $1 ORDER BY account_key",
            )?;
            let rows = c.client.query(&s, &[&device.as_str()])?;
            Ok(rows
                .iter()
                .map(|r| AccountRecord {
                    key: AccountKey::from_stored(r.get(0)),
                    node: Node::from_stored(r.get(1)),
                    secret: Secret::from_stored(r.get(2)),
                    created: false,
                })
                .collect())
        })
    }

    /// Deletes the device, but only if its channel is still `uri`.
    pub fn delete_device_if_channel(
        &self,
        device: &DeviceId,
        uri: &ChannelUri,
    ) -> Result<bool, StoreError> {
        self.with(|c| {
            let s = c.statement("DELETE FROM devices WHERE device_id = $1 AND channel_uri = $2")?;
            Ok(c.client.execute(&s, &[&device.as_str(), &uri.as_str()])? > 0)
        })
    }

    /// Moves `last_seen_at` forward for each device, in one statement. Sorted by id, so
    /// two flushes lock their rows in the same order and cannot deadlock.
    pub fn touch_devices(&self, seen: &[(DeviceId, i64)]) -> Result<(), StoreError> {
        let mut seen: Vec<&(DeviceId, i64)> = seen.iter().collect();
        seen.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        let ids: Vec<&str> = seen.iter().map(|(d, _)| d.as_str()).collect();
        let ats: Vec<i64> = seen.iter().map(|(_, at)| *at).collect();
        self.with(|c| {
            let s = c.statement(
                "UPDATE devices d SET last_seen_at = greatest(d.last_seen_at, v.at)
                 FROM unnest($1::text[], $2::bigint[]) AS v(id, at) WHERE d.device_id = v.id",
            )?;
            c.client.execute(&s, &[&ids, &ats])?;
            Ok(())
        })
    }

    /// The persisted WNS token, if any.
    pub fn load_token(&self) -> Result<Option<SavedToken>, StoreError> {
        self.with(|c| {
            let s = c.statement("SELECT access_token, expires_at FROM wns_token WHERE id = 1")?;
            Ok(c.client.query_opt(&s, &[])?.map(|r| SavedToken {
                access_token: r.get(0),
                expires_at: r.get(1),
            }))
        })
    }

    /// Persists the WNS token.
    pub fn save_token(&self, token: &SavedToken) -> Result<(), StoreError> {
        self.with(|c| {
            let s = c.statement(
                "INSERT INTO wns_token (id, access_token, token_type, expires_at) VALUES (1, $1, 'bearer', $2)
                 ON CONFLICT (id) DO UPDATE SET access_token = excluded.access_token,
                   expires_at = excluded.expires_at",
            )?;
            c.client
                .execute(&s, &[&token.access_token, &token.expires_at])?;
            Ok(())
        })
    }

    /// Coalescing for many publishes, in their order. A statement may change a row only
    /// once, so the publishes go in runs of distinct nodes, one statement each: a node
    /// that comes again is decided after its earlier publish, and the decisions are
    /// those of one publish at a time.
    pub fn admit_pushes(
        &self,
        items: &[(&Node, &Summary)],
        interval: Duration,
    ) -> Result<Vec<SharedAdmit>, StoreError> {
        let mut out = Vec::with_capacity(items.len());
        let mut rest = items;
        while !rest.is_empty() {
            let mut nodes = std::collections::HashSet::new();
            let run = rest
                .iter()
                .position(|(node, _)| !nodes.insert(node.as_str()))
                .unwrap_or(rest.len());
            out.extend(self.admit_distinct(&rest[..run], interval)?);
            rest = &rest[run..];
        }
        Ok(out)
    }

    /// One statement decides for publishes to distinct nodes: a closed window (or none)
    /// opens anew and says "send"; an open one keeps the latest summary and hands the
    /// trailing push to the first publish that finds it unowned. Times are the
    /// database's clock, the one all instances share.
    fn admit_distinct(
        &self,
        items: &[(&Node, &Summary)],
        interval: Duration,
    ) -> Result<Vec<SharedAdmit>, StoreError> {
        let interval = interval.as_millis() as i64;
        let nodes: Vec<&str> = items.iter().map(|(node, _)| node.as_str()).collect();
        let summaries = items
            .iter()
            .map(|(_, summary)| serde_json::to_string(summary))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::Internal(e.to_string().into()))?;
        let decided: HashMap<String, SharedAdmit> = self.with(|c| {
            let s = c.statement(
                "WITH input AS (SELECT * FROM unnest($1::text[], $3::text[]) AS t(node, summary))
                 INSERT INTO push_windows AS w (node, sent_at, owed, summary, decision)
                 SELECT node, (extract(epoch FROM now()) * 1000)::bigint, false, NULL, 0 FROM input
                 ON CONFLICT (node) DO UPDATE SET
                   decision = CASE WHEN w.sent_at <= excluded.sent_at - $2 THEN 0
                                   WHEN w.owed THEN 2 ELSE 1 END,
                   owed     = w.sent_at > excluded.sent_at - $2,
                   summary  = CASE WHEN w.sent_at <= excluded.sent_at - $2 THEN NULL
                                   ELSE (SELECT i.summary FROM input i WHERE i.node = excluded.node) END,
                   sent_at  = CASE WHEN w.sent_at <= excluded.sent_at - $2
                                   THEN excluded.sent_at ELSE w.sent_at END
                 RETURNING node, decision, sent_at + $2 - (extract(epoch FROM now()) * 1000)::bigint",
            )?;
            let rows = c.client.query(&s, &[&nodes, &interval, &summaries])?;
            Ok(rows
                .iter()
                .map(|row| {
                    let due_in = Duration::from_millis(row.get::<_, i64>(2).max(0) as u64);
                    let admit = match row.get::<_, i16>(1) {
                        0 => SharedAdmit::Send,
                        1 => SharedAdmit::CoalescedTrailing { due_in },
                        _ => SharedAdmit::Coalesced,
                    };
                    (row.get::<_, String>(0), admit)
                })
                .collect())
        })?;
        // Every node sent comes back; a missing one would be a bug of ours, and the push
        // goes out rather than being dropped.
        Ok(nodes
            .iter()
            .map(|n| decided.get(*n).copied().unwrap_or(SharedAdmit::Send))
            .collect())
    }

    /// Takes the owed trailing push of `node`, opening a new window.
    pub fn take_trailing(&self, node: &Node) -> Result<Option<Summary>, StoreError> {
        self.with(|c| {
            let s = c.statement(
                "UPDATE push_windows SET owed = false,
                   sent_at = (extract(epoch FROM now()) * 1000)::bigint
                 WHERE node = $1 AND owed RETURNING summary",
            )?;
            let row = c.client.query_opt(&s, &[&node.as_str()])?;
            Ok(row
                .and_then(|r| r.get::<_, Option<String>>(0))
                .and_then(|j| serde_json::from_str(&j).ok()))
        })
    }

    /// The token refresh under an advisory lock every instance takes (see
    /// [`super::Store::refresh_token`]). The lock is held while `decide` fetches over
    /// HTTP, so the others wait for its result instead of fetching too; the usual
    /// timeouts are lifted for this one transaction.
    pub fn refresh_token(
        &self,
        decide: &mut dyn FnMut(Option<&SavedToken>) -> Option<SavedToken>,
    ) -> Result<Option<SavedToken>, StoreError> {
        let mut conn = self
            .pool
            .get()
            .map_err(|e| StoreError::Unavailable(e.to_string().into()))?;
        let mut tx = conn.client.transaction()?;
        tx.batch_execute(
            "SET LOCAL lock_timeout = '60s'; SET LOCAL statement_timeout = '60s';
             SET LOCAL idle_in_transaction_session_timeout = '120s'",
        )?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&TOKEN_LOCK])?;
        let saved = tx
            .query_opt(
                "SELECT access_token, expires_at FROM wns_token WHERE id = 1",
                &[],
            )?
            .map(|r| SavedToken {
                access_token: r.get(0),
                expires_at: r.get(1),
            });
        let new = decide(saved.as_ref());
        if let Some(t) = &new {
            tx.execute(
                "INSERT INTO wns_token (id, access_token, token_type, expires_at) VALUES (1, $1, 'bearer', $2)
                 ON CONFLICT (id) DO UPDATE SET access_token = excluded.access_token,
                   expires_at = excluded.expires_at",
                &[&t.access_token, &t.expires_at],
            )?;
        }
        tx.commit()?;
        Ok(new.or(saved))
    }

    /// Sets the `track_removed_nodes` setting the trigger reads; off also clears the list.
    pub fn track_removed_nodes(&self, enabled: bool) -> Result<(), StoreError> {
        self.with(|c| {
            let mut tx = c.client.transaction()?;
            tx.execute(
                "UPDATE settings SET value = $1 WHERE key = 'track_removed_nodes'",
                &[&i64::from(enabled)],
            )?;
            if !enabled {
                tx.execute("DELETE FROM removed_nodes", &[])?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Every node in the database.
    pub fn all_nodes(&self) -> Result<Vec<Node>, StoreError> {
        self.nodes("SELECT node FROM accounts", None)
    }

    /// Up to `limit` nodes whose accounts were deleted.
    pub fn removed_nodes(&self, limit: usize) -> Result<Vec<Node>, StoreError> {
        self.nodes(
            "SELECT node FROM removed_nodes LIMIT $1",
            Some(limit as i64),
        )
    }

    fn nodes(&self, sql: &'static str, limit: Option<i64>) -> Result<Vec<Node>, StoreError> {
        self.with(|c| {
            let s = c.statement(sql)?;
            let rows = match limit {
                Some(l) => c.client.query(&s, &[&l])?,
                None => c.client.query(&s, &[])?,
            };
            Ok(rows.iter().map(|r| Node::from_stored(r.get(0))).collect())
        })
    }

    /// Forgets nodes whose PEP node is gone.
    pub fn forget_removed_nodes(&self, nodes: &[Node]) -> Result<(), StoreError> {
        let nodes: Vec<&str> = nodes.iter().map(Node::as_str).collect();
        self.with(|c| {
            let s = c.statement("DELETE FROM removed_nodes WHERE node = ANY($1)")?;
            c.client.execute(&s, &[&nodes])?;
            Ok(())
        })
    }

    /// Deletes devices last seen before `cutoff`, 500 per transaction, on one instance
    /// at a time: the sweep holds an advisory lock, and an instance that finds it taken
    /// leaves the sweep to the holder. Also forgets coalescing windows idle for an hour.
    pub fn expire_devices(&self, cutoff: i64) -> Result<usize, StoreError> {
        self.with(|c| {
            let got: bool = c
                .client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&EXPIRY_LOCK])?
                .get(0);
            if !got {
                log::debug!("expiry: another instance is sweeping");
                return Ok(0);
            }
            let swept = sweep(c, cutoff);
            c.client
                .execute("SELECT pg_advisory_unlock($1)", &[&EXPIRY_LOCK])?;
            swept
        })
    }

    /// Takes the lease `name` if no other instance holds it: a connection of its own
    /// holding a session advisory lock, released by PostgreSQL the moment that
    /// connection ends (this process stops or dies, or the network breaks).
    pub fn acquire_lease(&self, name: &str) -> Result<Option<super::Lease>, StoreError> {
        let mut client = self.config.connect(self.tls.clone())?;
        let got: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&lease_key(name)])?
            .get(0);
        Ok(got.then(|| super::Lease::postgres(client)))
    }

    /// Deletes one device and its accounts; false if unknown.
    pub fn remove_device(&self, device: &DeviceId) -> Result<bool, StoreError> {
        self.with(|c| {
            let s = c.statement("DELETE FROM devices WHERE device_id = $1")?;
            Ok(c.client.execute(&s, &[&device.as_str()])? > 0)
        })
    }

    /// Whether the database answers.
    pub fn ping(&self) -> Result<(), StoreError> {
        self.with(|c| {
            c.client.simple_query("SELECT 1")?;
            Ok(())
        })
    }

    /// Up to `limit` stored channel URIs, whichever come first (no scan, no order).
    pub fn sample_channels(&self, limit: usize) -> Result<Vec<ChannelUri>, StoreError> {
        self.with(|c| {
            let rows = c.client.query(
                "SELECT channel_uri FROM devices LIMIT $1",
                &[&(limit as i64)],
            )?;
            Ok(rows
                .iter()
                .map(|r| ChannelUri::from_stored(r.get(0)))
                .collect())
        })
    }

    /// Unix seconds of the least and most recently seen devices.
    pub fn seen_range(&self) -> Result<Option<(i64, i64)>, StoreError> {
        self.with(|c| {
            let row = c.client.query_one(
                "SELECT min(last_seen_at), max(last_seen_at) FROM devices",
                &[],
            )?;
            Ok(match (row.get(0), row.get(1)) {
                (Some(a), Some(b)) => Some((a, b)),
                _ => None,
            })
        })
    }

    /// How many devices and accounts are stored.
    pub fn counts(&self) -> Result<Counts, StoreError> {
        self.with(|c| {
            let row = c.client.query_one(
                "SELECT (SELECT count(*) FROM devices), (SELECT count(*) FROM accounts)",
                &[],
            )?;
            Ok(Counts {
                devices: row.get::<_, i64>(0) as u64,
                accounts: row.get::<_, i64>(1) as u64,
            })
        })
    }

    /// Closes every connection.
    pub fn close(self) -> Result<(), StoreError> {
        drop(self.pool);
        Ok(())
    }
}

/// The expiry sweep's chunks, on the connection that holds the sweep's lock.
fn sweep(c: &mut PgConn, cutoff: i64) -> Result<usize, StoreError> {
    let s = c.statement(
        "DELETE FROM devices WHERE device_id IN
           (SELECT device_id FROM devices WHERE last_seen_at < $1 LIMIT 500)",
    )?;
    let mut total = 0;
    loop {
        let n = c.client.execute(&s, &[&cutoff])? as usize;
        total += n;
        if n < 500 {
            break;
        }
    }
    c.client.execute(
        "DELETE FROM push_windows WHERE sent_at < (extract(epoch FROM now()) * 1000)::bigint - 3600000",
        &[],
    )?;
    Ok(total)
}

/// A lease name's advisory lock key (FNV-1a), apart from the fixed keys above.
fn lease_key(name: &str) -> i64 {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    hash as i64
}

/// `set_accounts` in one round trip: `uwpx_set_accounts` (schema version 5) locks the
/// device row, deletes the accounts not asked for, inserts the new ones with the node
/// and secret drawn here, and returns the device's accounts, all in the one implicit
/// transaction of its statement. A node drawn here and stored means "created". A node
/// collision (2^-128 odds; the column is UNIQUE) fails the statement, and it is tried
/// again with fresh draws.
fn replace_accounts(
    c: &mut PgConn,
    device: &DeviceId,
    version: ProtocolVersion,
    form: Option<AccountForm>,
    accounts: &[AccountSpec],
    now: i64,
) -> Result<Option<Vec<AccountRecord>>, StoreError> {
    let s = c.statement(
        "SELECT account_key, node, secret FROM uwpx_set_accounts($1, $2, $3, $4, $5, $6, $7, $8)",
    )?;
    let version = i16::from(version.number());
    let form = form.map(AccountForm::json_key);
    let keys: Vec<&str> = accounts.iter().map(|a| a.key.as_str()).collect();
    let domains: Vec<Option<&str>> = accounts.iter().map(|a| a.domain.as_deref()).collect();
    let mut attempt = 0;
    loop {
        let drawn = accounts
            .iter()
            .map(|_| Ok((Node::generate()?, Secret::generate()?)))
            .collect::<Result<Vec<_>, getrandom::Error>>()
            .map_err(StoreError::Random)?;
        let nodes: Vec<&str> = drawn.iter().map(|(n, _)| n.as_str()).collect();
        let secrets: Vec<&str> = drawn.iter().map(|(_, s)| s.expose()).collect();
        let params: [&(dyn postgres::types::ToSql + Sync); 8] = [
            &device.as_str(),
            &version,
            &form,
            &now,
            &keys,
            &domains,
            &nodes,
            &secrets,
        ];
        let rows = match c.client.query(&s, &params) {
            Err(e) if attempt < 3 && e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                attempt += 1;
                continue;
            }
            other => other?,
        };
        let mut stored: HashMap<String, (String, String)> = HashMap::new();
        for r in &rows {
            let Some(key) = r.get::<_, Option<String>>(0) else {
                return Ok(None); // the device is unknown: nothing changed
            };
            stored.insert(key, (r.get(1), r.get(2)));
        }
        return accounts
            .iter()
            .zip(drawn)
            .map(|(spec, (candidate, _))| {
                let (node, secret) = stored.remove(spec.key.as_str()).ok_or_else(|| {
                    StoreError::Internal("an account asked for was not stored".into())
                })?;
                Ok(AccountRecord {
                    key: spec.key.clone(),
                    created: node == candidate.as_str(),
                    node: Node::from_stored(node),
                    secret: Secret::from_stored(secret),
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some);
    }
}

/// The stored protocol version (the schema only allows 1 and 2).
fn stored_version(n: i16) -> ProtocolVersion {
    if n == 2 {
        ProtocolVersion::V2
    } else {
        ProtocolVersion::V1
    }
}

fn form_of(stored: Option<String>) -> Option<AccountForm> {
    stored.as_deref().and_then(AccountForm::from_json_key)
}

/// `host:port/dbname` of a connection config, for logs.
fn label(config: &postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    format!("{host}:{port}/{db}")
}

/// The most telling text of a connection error: the server's own message if it sent
/// one, else the cause (connection refused, timed out, TLS).
fn describe(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return db.message().to_owned();
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

/// libpq's `sslmode=verify-full` and `verify-ca`, which the `postgres` crate's parser
/// does not know, as `require`: with native-tls, `require` already verifies the
/// certificate chain (system roots plus `db.ca_file`) and the host name.
fn with_verified_tls(url: &str) -> String {
    url.replace("sslmode=verify-full", "sslmode=require")
        .replace("sslmode=verify-ca", "sslmode=require")
}

/// TLS with the system's roots plus `db.ca_file`; whether it is used is the URL's
/// `sslmode` (`prefer` by default, `require` to insist).
fn tls_connector(db: &DbConfig) -> Result<MakeTlsConnector, StoreError> {
    let mut builder = native_tls::TlsConnector::builder();
    if let Some(pem) = &db.ca_pem {
        let cert = native_tls::Certificate::from_pem(&pem.0)
            .map_err(|e| StoreError::Unavailable(format!("db.ca_file: {e}").into()))?;
        builder.add_root_certificate(cert);
    }
    let connector = builder
        .build()
        .map_err(|e| StoreError::Unavailable(format!("TLS setup: {e}").into()))?;
    Ok(MakeTlsConnector::new(connector))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_verifying_ssl_modes_are_read_as_require_which_verifies() {
        for mode in ["verify-full", "verify-ca", "require"] {
            let url = format!("postgresql://u:p@db.example.org:5433/push?sslmode={mode}");
            let config: postgres::Config = with_verified_tls(&url).parse().unwrap();
            assert_eq!(config.get_ssl_mode(), postgres::config::SslMode::Require);
            assert_eq!(label(&config), "db.example.org:5433/push");
        }
        assert!(
            "postgres://u@h/d?sslmode=verify-full"
                .parse::<postgres::Config>()
                .is_err(),
            "if the crate learns verify-full, this mapping can go"
        );
    }
}
