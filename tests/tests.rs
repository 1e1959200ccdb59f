//! Integration tests: each starts the real `uwpx-push-server` binary on a free port with
//! a temporary database and talks to it over real sockets (plain TCP and TLS).

/// Spawning the binary, temp dirs, test certificates, protocol clients.
mod util;

/// The wire protocol as real UWPX clients speak it, for all three generations.
mod registration;

/// Bad input, slow and idle clients, floods, connection caps: clear errors, nothing stored.
mod hostile;

/// WNS delivery against the fake WNS: outcomes, tokens, payloads, guards.
mod wns;

/// The WNS notify client against real nginx (TLS, keep-alive, chunked, 410).
mod nginx;

/// Component mode against a stand-in XMPP server: publish → WNS → IQ reply.
mod component;

/// Against real Prosody and ejabberd (run by scripts/test.sh after setup).
mod e2e;

/// migrate-db: an SQLite deployment moved onto PostgreSQL keeps its nodes and secrets.
mod migrate;

/// Operations: health and metrics, expiry, admin commands, graceful shutdown.
mod ops;

/// Randomised robustness of the codec, the stanza reader and the publish parser.
mod robustness;

/// Configuration loading and the command line.
mod cli;

/// Storage on both backends: concurrency, kill -9, PostgreSQL's faults.
mod storage;

/// Several instances on one PostgreSQL database: one truth, global coalescing, the
/// dead-channel guard, one WNS token.
mod instances;

/// docs/PROTOCOL.md: every example request sent to the real binary, every answer checked;
/// the README's first screen and its pointer to the document.
mod protocol_doc;
