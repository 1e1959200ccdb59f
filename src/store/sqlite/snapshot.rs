//! The lookup connection, and the read transaction it keeps open across node lookups.
//!
//! A lookup in a transaction of its own pays for beginning and ending it: two `fcntl`
//! locks on the WAL index, its header read, and every page on the way down checked
//! again. With one snapshot held across lookups a node lookup costs 28.5 – 29 µs
//! instead of 41 – 42 µs with cold CPU caches, and 6.4 instead of 8.8 µs warm
//! (`cargo bench --bench stanza -- --fields 1 [--cold 1]`, 100,000 devices).
//!
//! A snapshot does not see later commits, so it is ended:
//! - at the next read after a write batch of this process ended: the batch is counted
//!   ([`super::commit::Batcher::ended`]) before any of its writers hears back, so a
//!   device that was told "registered" is found by the next publish;
//! - at the next read once it is [`MAX_AGE`] old: what another process changes (the
//!   admin commands) shows within that;
//! - by [`Reader::end_stale`], which the XMPP thread's timer calls at least every
//!   200 ms, so an idle server holds no snapshot that keeps the WAL from being
//!   checkpointed.
//!
//! Threads: whoever holds the lock around the [`Reader`] (`xmpp-io` for lookups,
//! registration threads for their reads).

use std::ops::Deref;
use std::time::{Duration, Instant};

use rusqlite::Connection;

/// How long a held snapshot may be used: the staleness another process's writes may
/// see, and the longest a snapshot holds the WAL back.
pub const MAX_AGE: Duration = Duration::from_millis(100);

/// The read connection and the snapshot it holds, if any.
pub struct Reader {
    conn: Connection,
    held: Option<Held>,
}

struct Held {
    /// The writer's [`super::commit::Batcher::ended`] count read before the snapshot.
    writes: u64,
    since: Instant,
}

impl Reader {
    /// A reader holding no snapshot yet.
    pub fn new(conn: Connection) -> Self {
        Self { conn, held: None }
    }

    /// Ends the held snapshot if write batches ended since it began (`writes` is the
    /// count now) or it is [`MAX_AGE`] old.
    pub fn end_stale(&mut self, writes: u64, now: Instant) {
        if let Some(h) = &self.held
            && (h.writes != writes
                || now.saturating_duration_since(h.since) >= MAX_AGE
                || self.conn.is_autocommit())
        {
            self.end();
        }
    }

    /// Keeps the reads from here on in one transaction, if none is held. `writes` must
    /// be read before this call (and so before the snapshot is taken, at the next
    /// statement): a batch that ends in between is then seen and still ends the
    /// snapshot at the next read, which is harmless.
    pub fn hold(&mut self, writes: u64, now: Instant) {
        if self.held.is_none()
            && self.conn.is_autocommit()
            && self.conn.execute_batch("BEGIN").is_ok()
        {
            self.held = Some(Held { writes, since: now });
        }
    }

    /// Ends the held snapshot (after an error, a read that failed in it is not
    /// trusted to have left it usable).
    pub fn end(&mut self) {
        self.held = None;
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("COMMIT");
        }
    }

    /// Whether a snapshot is held.
    #[cfg(test)]
    pub fn holds(&self) -> bool {
        self.held.is_some()
    }
}

impl Deref for Reader {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.conn
    }
}
