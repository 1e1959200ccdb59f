//! uwpx-push-server: the XEP-0357 app server for UWPX.
//!
//! A UWPX device registers its WNS channel and its XMPP accounts over a NUL-framed JSON
//! protocol on TCP/TLS; it gets a node and a secret per account and hands them to its
//! own XMPP server, which publishes to us when the device sleeps.
//!
//! Data flow (registration): socket → [`registration::codec`] (frame, decode,
//! validate into [`types`]) → [`registration::handler`] → [`store`] (commit) →
//! [`registration::wire`] (answer) → socket.
//!
//! Data flow (publish): XMPP socket → [`xmpp`] (stanza reader, publish parsing into a
//! [`push::Publish`]) → [`push`] (node lookup in [`store`], checks, coalescing, a WNS
//! job) → [`wns`] (HTTPS POST, verdict) → [`push::effects`] (store side effects) →
//! [`xmpp`] (IQ reply) → socket.
//!
//! Layers. Each module imports only from layers below its own, and modules on one layer
//! do not import each other; an interface a lower layer needs from a higher one is
//! owned by the lower layer and plugged in by [`app`] (the WNS token vault, the
//! registration's node provisioner). A unit test (`layering.rs`) reads this table and
//! fails on any `crate::` path that points up or sideways.
//! ```text
//! LAYERS
//! 8  admin
//! 7  app
//! 6  ops
//! 5  registration | xmpp
//! 4  push
//! 3  wns
//! 2  store | logging
//! 1  config
//! 0  types | clock | metrics | shutdown | net | xml
//! END
//! ```
//!
//! Thread map:
//! ```text
//! main ─┬─ reg-accept ─┬─ reg-conn (one per client, up to tcp.max_connections)
//!       │              └─ reg-reject (≤ 64, answer "busy" over the cap, then close)
//!       ├─ xmpp-io         (owns the XMPP socket; sleeps in epoll on it and an eventfd
//!       │                   the workers and PEP requests wake, reads until it would
//!       │                   block, writes queued replies, pings, reconnects with backoff)
//!       ├─ wns-warm        (at start: the token and a connection per worker to each
//!       │                   stored WNS host; the start waits for it at most 2 s)
//!       ├─ wns-worker-1..K (bounded job channel; blocking HTTPS POST, one TLS record,
//!       │                   over a shared keep-alive pool; retries wait in a shared
//!       │                   heap, no timer thread; apply the outcome's store side effects
//!       │                   through push::effects, then write the IQ reply to the
//!       │                   component socket (xmpp::Answers); a DNS cache miss runs on a
//!       │                   short-lived wns-resolve thread, not joined)
//!       ├─ ops-expiry      (hourly sweep of devices unseen for db.device_ttl_days)
//!       ├─ ops-http        (optional: /health, /metrics)
//!       └─ signals         (SIGINT/SIGTERM → main stops the app; SIGHUP → reopen log.file)
//! Shared: Arc<Store> (a lock held for one statement or one transaction, never across
//!         I/O), Arc<ConnContext> (read-only), Arc<WnsPool> (owns the job sender: its
//!         drop ends the workers), Arc<TokenCache>, Arc<Effects>, Arc<net::Wake> (the
//!         XMPP thread's eventfd), Arc<xmpp::Answers> (publishes waiting for WNS, and
//!         the socket's write queue), Shutdown (a flag plus a channel that wakes sleepers).
//! ```
//! Every thread is joined at shutdown, in the order `app` documents, and a panic is
//! logged at its join.
//!
//! Modules:
//! - [`config`]: `configuration.json` → typed, validated [`config::Config`].
//! - [`types`]: DeviceId, AccountKey, Node, Secret, ChannelUri, Summary and friends.
//! - [`clock`]: the wall clock, injectable for tests.
//! - [`metrics`]: process-wide counters, rendered for `/metrics`.
//! - [`store`]: the storage boundary (SQLite or PostgreSQL); the only place with SQL.
//! - [`registration`]: the TCP/TLS protocol UWPX clients speak.
//! - [`wns`]: the WNS token, the worker pool, the payloads and the notify client.
//! - [`push`]: publish → node → device → WNS job → outcome; coalescing; side effects.
//! - [`xmpp`]: the XMPP I/O thread (component and client mode), publish parsing, IQ
//!   replies.
//! - [`ops`]: expiry, health and metrics over HTTP.
//! - [`app`]: wiring and ordered shutdown.
//! - [`admin`]: the `stats`, `test-push` and `remove-device` commands.
//! - [`shutdown`]: the stop signal and logged joins.
//! - [`logging`]: log setup, `log.file` reopened on SIGHUP, a throttle for noisy lines.
//! - [`net`]: plain-or-TLS sockets.
//! - [`xml`]: XML escaping.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
// Panics on input are bugs: no unwrap or expect outside tests.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod admin;
pub mod app;
pub mod clock;
pub mod config;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod ops;
pub mod push;
pub mod registration;
pub mod shutdown;
pub mod store;
pub mod types;
pub mod wns;
pub mod xml;
pub mod xmpp;

#[cfg(test)]
mod layering;
