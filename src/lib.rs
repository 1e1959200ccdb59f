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
//! Thread map:
//! ```text
//! main ─┬─ reg-accept ─┬─ reg-conn (one per client, up to tcp.max_connections)
//!       │              └─ reg-reject (≤ 64, answer "busy" over the cap, then close)
//!       ├─ xmpp-io         (owns the XMPP socket; reads with a short timeout, drains
//!       │                   WNS outcomes in between, pings, reconnects with backoff)
//!       ├─ wns-worker-1..K (bounded job channel; blocking HTTPS POST; shared ureq Agent)
//!       ├─ wns-timer       (retries after backoff; batched last-seen writes)
//!       ├─ ops-expiry      (hourly sweep of devices unseen for db.device_ttl_days)
//!       ├─ ops-http        (optional: /health, /metrics)
//!       └─ signals         (SIGINT/SIGTERM → main stops the app; SIGHUP → reopen log.file)
//! Shared: Arc<Store> (Mutex held for one statement or one transaction, never across
//!         I/O), Arc<ConnContext> (read-only), Arc<WnsPool>, Arc<TokenCache>,
//!         Shutdown (AtomicBool).
//! ```
//!
//! Modules:
//! - [`config`]: `configuration.json` → typed, validated [`config::Config`].
//! - [`types`]: DeviceId, AccountKey, Node, Secret, ChannelUri and friends.
//! - [`store`]: SQLite (WAL) behind a mutex; the only place with SQL.
//! - [`registration`]: the TCP/TLS protocol UWPX clients speak.
//! - [`wns`]: the WNS token, the worker pool and the payloads.
//! - [`xmpp`]: the XMPP I/O thread (component mode), publish parsing, IQ replies.
//! - [`push`]: publish → node → device → WNS job → outcome; burst coalescing.
//! - [`ops`]: expiry, health and metrics.
//! - [`app`]: wiring and ordered shutdown.
//! - [`admin`]: the `stats`, `test-push` and `remove-device` commands.
//! - [`shutdown`]: the stop flag.
//! - [`logging`]: log setup, `log.file` reopened on SIGHUP, a throttle for noisy lines.
//! - [`net`]: plain-or-TLS sockets.
//! - [`xml`]: XML escaping.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
// Panics on input are bugs: no unwrap or expect outside tests.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod admin;
pub mod app;
pub mod config;
pub mod logging;
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
