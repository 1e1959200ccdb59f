//! Durable state: devices, their push accounts (node + secret), the WNS token, and
//! client mode's list of removed nodes. This is the storage boundary.
//!
//! [`Store`] is the one type the rest of the server calls. Its backend is chosen at
//! open from the `db.*` configuration: SQLite (`sqlite/`, one file, the default) or
//! PostgreSQL (`postgres/`, shared by several instances). Both implement the same
//! methods; `Backend` is an enum, so the choice costs one branch per call. Nothing outside this module sees SQL, a
//! driver type or a driver error code: failures arrive as a [`StoreError`], a small
//! enum that `registration/wire.rs` and `xmpp/reply.rs` each map to their wire once.
//!
//! Contract every backend keeps:
//! - a write method returns only after the transaction that holds it committed, so an
//!   answer built from its result describes durable data;
//! - no lock is held across network I/O; reads never wait for a write transaction;
//! - timestamps are unix seconds (UTC), nodes and secrets are stored as generated.
//!
//! Threads: `reg-conn-*` (registrations), `xmpp-io` (node lookups, removed nodes),
//! `wns-worker-*` (outcome side effects, the token), `ops-expiry`, `main` (open/close).
//! Locks: the backend's own, never across I/O.

mod migrate;
mod postgres;
mod rows;
mod sqlite;

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use migrate::{MigrateError, MigrationReport, migrate_sqlite_to_postgres};

use crate::config::{DbConfig, Synchronous};
use crate::types::{
    AccountForm, AccountKey, ChannelUri, DeviceId, Node, ProtocolVersion, SavedToken, Secret,
    Summary,
};

/// A storage failure, independent of the backend. Callers decide what the wire sees
/// (`registration/wire.rs`, `xmpp/reply.rs`); nothing here is shown to a client
/// verbatim.
#[derive(Debug, Clone)]
pub enum StoreError {
    /// The database stayed locked past the busy timeout (another writer or process
    /// holds it). Transient: the client is told to try again later.
    Busy,
    /// The database cannot be reached or opened (I/O error, server gone). Transient.
    Unavailable(Arc<str>),
    /// The disk is full: nothing more can be written until an operator acts.
    Full,
    /// The database file is damaged or not a database.
    Corrupt(Arc<str>),
    /// Any other failure, as its message: the same failure may have to be reported to
    /// every write of a failed batch, hence the shared string.
    Internal(Arc<str>),
    /// The operating system's random source failed, so no node or secret could be drawn.
    Random(getrandom::Error),
    /// The database was written by a newer version of this server; it is left untouched.
    NewerSchema {
        /// The version found.
        found: i64,
        /// The newest this binary knows.
        known: i64,
    },
}

impl StoreError {
    /// True for failures that may succeed on a retry without an operator (a lock held
    /// elsewhere, a database that is briefly unreachable).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Busy | Self::Unavailable(_))
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Busy => f.write_str("database is busy (locked by another writer)"),
            Self::Unavailable(e) => write!(f, "database unavailable: {e}"),
            Self::Full => f.write_str("database or disk is full"),
            Self::Corrupt(e) => write!(f, "database is corrupt: {e}"),
            Self::Internal(e) => write!(f, "database error: {e}"),
            Self::Random(e) => write!(f, "random source failed: {e}"),
            Self::NewerSchema { found, known } => write!(
                f,
                "schema version {found} is newer than this server's ({known}); refusing to touch it"
            ),
        }
    }
}

impl std::error::Error for StoreError {}

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

/// One line of `stats --devices`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSummary {
    /// The whole device id.
    pub device_id: DeviceId,
    /// The protocol version of its last request.
    pub version: ProtocolVersion,
    /// How its accounts are named, if it ever sent any.
    pub account_form: Option<AccountForm>,
    /// How many push accounts it has.
    pub accounts: u64,
    /// Unix seconds of its last registration or recorded delivery.
    pub last_seen_at: i64,
}

/// The devices whose id starts with a prefix: the first few, and how many in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixMatches {
    /// Up to the asked limit, ordered by id.
    pub first: Vec<DeviceId>,
    /// Every match, including those not in `first`.
    pub total: u64,
}

/// A publish's place in its node's coalescing window when several instances share the
/// database (see [`Store::admit_pushes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedAdmit {
    /// The window was closed: push now (a new window opens).
    Send,
    /// Inside the window, and another publish already owns the trailing push.
    Coalesced,
    /// Inside the window, and this instance now owns the trailing push: take it with
    /// [`Store::take_trailing`] after `due_in`.
    CoalescedTrailing {
        /// When the window ends, from now.
        due_in: Duration,
    },
}

/// The right to do something only one instance may do at a time (client mode's XMPP
/// login), held until dropped. On SQLite there is one instance, and it always holds.
pub struct Lease(LeaseKind);

enum LeaseKind {
    Local,
    Postgres(Box<::postgres::Client>),
}

impl Lease {
    fn postgres(client: ::postgres::Client) -> Self {
        Self(LeaseKind::Postgres(Box::new(client)))
    }

    /// Whether it is still held (one round trip on PostgreSQL: the lease is lost with
    /// its connection).
    pub fn is_held(&mut self) -> bool {
        match &mut self.0 {
            LeaseKind::Local => true,
            LeaseKind::Postgres(c) => !c.is_closed() && c.simple_query("SELECT 1").is_ok(),
        }
    }
}

/// The database handle: one type whatever the backend. Cheap to share as `Arc<Store>`.
pub struct Store {
    backend: Backend,
}

enum Backend {
    Sqlite(sqlite::Sqlite),
    Postgres(postgres::Postgres),
}

/// Delegates a method call to the backend.
macro_rules! backend {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match &$self.backend {
            Backend::Sqlite(b) => b.$method($($arg),*),
            Backend::Postgres(b) => b.$method($($arg),*),
        }
    };
}

impl Store {
    /// Opens the database the `db.*` configuration names, creating and migrating it as
    /// needed: the backend is chosen here and nowhere else.
    pub fn open(db: &DbConfig) -> Result<Self, StoreError> {
        match &db.url {
            Some(url) => Ok(Self {
                backend: Backend::Postgres(postgres::Postgres::open(db, url.expose())?),
            }),
            None => Ok(Self {
                backend: Backend::Sqlite(sqlite::Sqlite::open(db)?),
            }),
        }
    }

    /// Opens (creating if needed) the SQLite database at `path` with the configuration's
    /// default cache settings, and migrates it (benchmarks and tools).
    pub fn open_sqlite(path: &Path, sync: Synchronous) -> Result<Self, StoreError> {
        use crate::config::keys::{DB_CACHE_SIZE_MB, DB_MMAP_SIZE_MB};
        let (mmap, cache) = (DB_MMAP_SIZE_MB.spec.default, DB_CACHE_SIZE_MB.spec.default);
        Ok(Self {
            backend: Backend::Sqlite(sqlite::Sqlite::open_file(
                path,
                sync,
                mmap << 20,
                cache << 20,
            )?),
        })
    }

    /// An in-memory database with the same schema, for unit tests.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Ok(Self {
            backend: Backend::Sqlite(sqlite::Sqlite::open_in_memory()?),
        })
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
        backend!(self.set_channel(device, uri, version, now))
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
        backend!(self.set_accounts(device, version, form, accounts, now))
    }

    /// Loads one device.
    pub fn device(&self, device: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        backend!(self.device(device))
    }

    /// The push target behind a node, if the node exists (the publish hot path). On
    /// SQLite the lookups share one read snapshot for up to 100 ms, which ends early
    /// when this process writes; another process's changes show within that.
    pub fn node_target(&self, node: &Node) -> Result<Option<NodeTarget>, StoreError> {
        match &self.backend {
            Backend::Sqlite(b) => b.node_target(node),
            Backend::Postgres(b) => Ok(b.node_targets(&[node])?.pop().flatten()),
        }
    }

    /// The push targets behind `nodes`, in their order: on PostgreSQL in one round
    /// trip, on SQLite one local lookup each (microseconds: nothing to gain).
    pub fn node_targets(&self, nodes: &[&Node]) -> Result<Vec<Option<NodeTarget>>, StoreError> {
        match &self.backend {
            Backend::Sqlite(b) => nodes.iter().map(|n| b.node_target(n)).collect(),
            Backend::Postgres(b) => b.node_targets(nodes),
        }
    }

    /// Lets go of SQLite's lookup snapshot once it is stale, so an idle server keeps
    /// none open (the XMPP thread's timer calls this). Nothing to do on PostgreSQL.
    pub fn end_stale_read(&self) {
        if let Backend::Sqlite(b) = &self.backend {
            b.end_stale_read();
        }
    }

    /// Lets go of SQLite's lookup snapshot now (the XMPP stream ended: no lookups
    /// for a while).
    pub fn end_read(&self) {
        if let Backend::Sqlite(b) = &self.backend {
            b.end_read();
        }
    }

    /// The accounts of one device, ordered by key.
    pub fn accounts(&self, device: &DeviceId) -> Result<Vec<AccountRecord>, StoreError> {
        backend!(self.accounts(device))
    }

    /// Deletes the device and its accounts, but only if its channel is still `uri`: a
    /// device that re-registered a new channel after the push was sent keeps it.
    /// Returns whether it was deleted.
    pub fn delete_device_if_channel(
        &self,
        device: &DeviceId,
        uri: &ChannelUri,
    ) -> Result<bool, StoreError> {
        backend!(self.delete_device_if_channel(device, uri))
    }

    /// Records successful deliveries: `last_seen_at` moves forward, never back.
    pub fn touch_devices(&self, seen: &[(DeviceId, i64)]) -> Result<(), StoreError> {
        backend!(self.touch_devices(seen))
    }

    /// The persisted WNS token, if any.
    pub fn load_token(&self) -> Result<Option<SavedToken>, StoreError> {
        backend!(self.load_token())
    }

    /// Persists the WNS token so that a restart reuses it.
    pub fn save_token(&self, token: &SavedToken) -> Result<(), StoreError> {
        backend!(self.save_token(token))
    }

    /// Takes the lease `name` if no other instance holds it (`None`: another does; try
    /// again later). Dropping it lets it go.
    pub fn acquire_lease(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(Some(Lease(LeaseKind::Local))),
            Backend::Postgres(b) => b.acquire_lease(name),
        }
    }

    /// Whether several instances may share this database (PostgreSQL). Decisions that
    /// must hold across instances, such as coalescing, then go through it; a SQLite
    /// file serves one instance, which keeps them in memory.
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// Coalescing across instances, decided for several publishes in one statement
    /// (one more after each repeat of a node): where each falls in its node's
    /// `interval`-long window, keeping its summary as the latest for the trailing push.
    /// The answers are in `items`' order. Only for a shared store.
    pub fn admit_pushes(
        &self,
        items: &[(&Node, &Summary)],
        interval: Duration,
    ) -> Result<Vec<SharedAdmit>, StoreError> {
        match &self.backend {
            Backend::Postgres(b) => b.admit_pushes(items, interval),
            Backend::Sqlite(_) => Ok(vec![SharedAdmit::Send; items.len()]),
        }
    }

    /// Takes the trailing push of `node`'s window, if one is still owed (a publish after
    /// the window may have sent it already): its latest summary. Opens a new window.
    pub fn take_trailing(&self, node: &Node) -> Result<Option<Summary>, StoreError> {
        match &self.backend {
            Backend::Postgres(b) => b.take_trailing(node),
            Backend::Sqlite(_) => Ok(None),
        }
    }

    /// The WNS token refresh that instances sharing this database do once between them:
    /// `decide` runs under a lock they all share, sees the saved token, and returns a
    /// new one to save or `None` to keep the saved one. Returns the token now saved.
    /// (SQLite serves one instance: no lock is needed there.)
    pub fn refresh_token(
        &self,
        decide: &mut dyn FnMut(Option<&SavedToken>) -> Option<SavedToken>,
    ) -> Result<Option<SavedToken>, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => {
                let saved = self.load_token()?;
                match decide(saved.as_ref()) {
                    Some(new) => {
                        self.save_token(&new)?;
                        Ok(Some(new))
                    }
                    None => Ok(saved),
                }
            }
            Backend::Postgres(b) => b.refresh_token(decide),
        }
    }

    /// Whether deleted accounts' nodes are recorded for PEP deletion (a stored setting
    /// the schema's trigger reads). Only client mode has PEP nodes; elsewhere the record
    /// would only grow, so turning it off also clears the list. A later switch to
    /// client mode is covered by the reconciliation at connect.
    pub fn track_removed_nodes(&self, enabled: bool) -> Result<(), StoreError> {
        backend!(self.track_removed_nodes(enabled))
    }

    /// Every node in the database (client mode reconciles the push account against it).
    pub fn all_nodes(&self) -> Result<Vec<Node>, StoreError> {
        backend!(self.all_nodes())
    }

    /// Up to `limit` nodes whose accounts were deleted and whose PEP node may still
    /// exist on the push account.
    pub fn removed_nodes(&self, limit: usize) -> Result<Vec<Node>, StoreError> {
        backend!(self.removed_nodes(limit))
    }

    /// Forgets nodes whose PEP node is gone (or that never had one: component mode).
    pub fn forget_removed_nodes(&self, nodes: &[Node]) -> Result<(), StoreError> {
        backend!(self.forget_removed_nodes(nodes))
    }

    /// Deletes devices last seen before `cutoff` (unix seconds) with their accounts;
    /// returns how many. In chunks, so the writer is never held for long.
    pub fn expire_devices(&self, cutoff: i64) -> Result<usize, StoreError> {
        backend!(self.expire_devices(cutoff))
    }

    /// Deletes one device and its accounts (admin `remove-device`); false if unknown.
    pub fn remove_device(&self, device: &DeviceId) -> Result<bool, StoreError> {
        backend!(self.remove_device(device))
    }

    /// Whether the database answers (health check).
    pub fn ping(&self) -> Result<(), StoreError> {
        backend!(self.ping())
    }

    /// Up to `limit` stored channel URIs (SQLite: the newest devices; PostgreSQL: any),
    /// read without a scan: at start, their hosts get WNS connections before the first
    /// push needs one.
    pub fn sample_channels(&self, limit: usize) -> Result<Vec<ChannelUri>, StoreError> {
        backend!(self.sample_channels(limit))
    }

    /// Unix seconds of the least and most recently seen devices (`stats`).
    pub fn seen_range(&self) -> Result<Option<(i64, i64)>, StoreError> {
        backend!(self.seen_range())
    }

    /// How many devices and accounts are stored.
    pub fn counts(&self) -> Result<Counts, StoreError> {
        backend!(self.counts())
    }

    /// Devices whose id starts with `prefix`, compared without regard to ASCII case (ids
    /// are hex; old clients' may be upper case): the first `limit` by id, and how many
    /// in all. For the operator's commands (a full scan).
    pub fn devices_with_prefix(
        &self,
        prefix: &DeviceId,
        limit: usize,
    ) -> Result<PrefixMatches, StoreError> {
        backend!(self.devices_with_prefix(prefix, limit))
    }

    /// Every device with its account count, most recently seen first (`stats
    /// --devices`; never a JID, a node or a secret).
    pub fn device_summaries(&self) -> Result<Vec<DeviceSummary>, StoreError> {
        backend!(self.device_summaries())
    }

    /// What the backend is, for the start-up log line (`sqlite /path/to/file`).
    pub fn describe(&self) -> String {
        backend!(self.describe())
    }

    /// Flushes and closes: after a clean shutdown the database is complete on its own
    /// (SQLite: the WAL is checkpointed into the main file).
    pub fn close(self) -> Result<(), StoreError> {
        match self.backend {
            Backend::Sqlite(b) => b.close(),
            Backend::Postgres(b) => b.close(),
        }
    }
}

#[cfg(test)]
mod tests;
