//! Admin commands: `stats [--devices]`, `test-push`, `remove-device`, `migrate-db`. The
//! first three open the same configuration and database as the server; SQLite's WAL and
//! busy timeout make that safe while the server runs (a removed device's PEP nodes are
//! then deleted by the running server, from the store's removed-node list).
//! `migrate-db` copies an SQLite file into the PostgreSQL database of `db.url`.
//!
//! A device is named by its whole id or by a unique prefix of at least [`MIN_PREFIX`]
//! characters ([`resolve_device`]): the log prints 12.
//!
//! Threads: `main` (and, for `test-push`, a one-worker WNS pool).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::app::StoreVault;
use crate::clock::Clock;
use crate::config::Config;
use crate::push::effects::{Effects, send_and_wait};
use crate::store::{MigrationReport, Store, migrate_sqlite_to_postgres};
use crate::types::{ClientGeneration, DeviceId};
use crate::wns::{Outcome, WnsPool, payload};

/// Prints a line to stdout; a reader that went away (`stats | head`) is not an error.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

fn open(config: &Config) -> Result<Store, String> {
    Store::open(&config.db).map_err(|e| format!("cannot open {}: {e}", config.db.path.display()))
}

/// The shortest prefix a command accepts in place of a whole device id (issue 10 item
/// 14). Six hex characters are 16.7 million values, so a prefix that long is almost
/// always unique among thousands of devices; a shorter one is more likely a slip than a
/// choice, and `remove-device` deletes.
pub const MIN_PREFIX: usize = 6;

/// How many matches an ambiguous prefix names.
const NAMED_MATCHES: usize = 10;

/// The device an operator means by `arg`: its whole id, or a unique prefix of at least
/// [`MIN_PREFIX`] characters (as git takes a commit id), compared without regard to
/// case. An ambiguous prefix names its matches by their short ids, as the log shows them.
pub fn resolve_device(store: &Store, arg: &str) -> Result<DeviceId, String> {
    let id = DeviceId::parse(arg).map_err(|e| format!("`{arg}`: {e}"))?;
    if store.device(&id).map_err(|e| e.to_string())?.is_some() {
        return Ok(id);
    }
    if arg.len() < MIN_PREFIX {
        return Err(format!(
            "Device id unknown. `{arg}` is not a whole device id, and a prefix needs at least \
             {MIN_PREFIX} characters (the log shows 12)."
        ));
    }
    let found = store
        .devices_with_prefix(&id, NAMED_MATCHES)
        .map_err(|e| e.to_string())?;
    match found.total {
        0 => Err(format!(
            "Device id unknown. No device id starts with `{arg}`."
        )),
        1 => found
            .first
            .into_iter()
            .next()
            .ok_or_else(|| "the device disappeared while it was looked up".into()),
        n => {
            let names = distinct_prefixes(&found.first).join(", ");
            let more = match n as usize - found.first.len() {
                0 => String::new(),
                rest => format!(" and {rest} more"),
            };
            Err(format!(
                "`{arg}` is ambiguous: {n} devices start with it ({names}{more}); give more characters."
            ))
        }
    }
}

/// The ids cut to the log's 12 characters, or longer where 12 do not tell them apart.
fn distinct_prefixes(ids: &[DeviceId]) -> Vec<String> {
    let longest = ids.iter().map(|d| d.as_str().len()).max().unwrap_or(0);
    let mut len = 12;
    while len < longest {
        let shown: std::collections::HashSet<String> = ids
            .iter()
            .map(|d| cut(d.as_str(), len).to_ascii_lowercase())
            .collect();
        if shown.len() == ids.len() {
            break;
        }
        len += 4;
    }
    ids.iter()
        .map(|d| cut(d.as_str(), len).to_owned())
        .collect()
}

/// The first `len` bytes of an id (ids are ASCII hex, so any cut is a char boundary).
fn cut(s: &str, len: usize) -> &str {
    &s[..s.len().min(len)]
}

/// When a unix time was, in words.
fn ago(t: i64, now: i64) -> String {
    let d = now - t;
    match d {
        d if d < 120 => format!("{d} s ago"),
        d if d < 7200 => format!("{} min ago", d / 60),
        d if d < 172_800 => format!("{} h ago", d / 3600),
        d => format!("{} days ago", d / 86_400),
    }
}

/// Counts, the least and most recently seen device, and the WNS token's expiry; with
/// `devices`, one line per device too (id, generation, accounts, last seen: no JIDs).
pub fn stats(config: &Config, devices: bool) -> Result<(), String> {
    let store = open(config)?;
    let now = Clock::system().unix_now();
    let c = store.counts().map_err(|e| e.to_string())?;
    say!("devices:  {}", c.devices);
    say!("accounts: {}", c.accounts);
    match store.seen_range().map_err(|e| e.to_string())? {
        Some((oldest, newest)) => {
            say!("oldest device last seen: {}", ago(oldest, now));
            say!("newest device last seen: {}", ago(newest, now));
        }
        None => say!("no devices"),
    }
    match store.load_token().map_err(|e| e.to_string())? {
        Some(t) if t.expires_at > now => say!("WNS token: expires in {} s", t.expires_at - now),
        Some(_) => say!("WNS token: expired (a new one is fetched on the next push)"),
        None => say!("WNS token: none yet"),
    }
    if devices {
        let list = store.device_summaries().map_err(|e| e.to_string())?;
        let width = list
            .iter()
            .map(|d| d.device_id.as_str().len())
            .max()
            .unwrap_or(0)
            .max("device id".len());
        if !list.is_empty() {
            say!();
            say!(
                "{:<width$}  {:<25}  {:>8}  last seen",
                "device id",
                "generation",
                "accounts"
            );
        }
        for d in list {
            say!(
                "{:<width$}  {:<25}  {:>8}  {}",
                d.device_id.as_str(),
                generation_label(ClientGeneration::of(d.version, d.account_form)),
                d.accounts,
                ago(d.last_seen_at, now)
            );
        }
    }
    Ok(())
}

/// The generation as the README names it, with the client releases it stands for.
fn generation_label(g: ClientGeneration) -> &'static str {
    match g {
        ClientGeneration::V2 => "v2 (0.39+)",
        ClientGeneration::V1AccountId => "v1 account_id (0.35-0.38)",
        ClientGeneration::V1BareJid => "v1 bare_jid (0.25-0.34)",
    }
}

/// Sends the device's test push and prints the WNS outcome. Rejected WNS credentials
/// are named as a configuration error, not a failure to retry (issue 10 item 16).
pub fn test_push(config: &Config, id: &str) -> Result<(), String> {
    if config.wns.credentials.is_none() {
        return Err("WNS delivery is not configured (wns.packet_id, wns.client_secret)".into());
    }
    let store = Arc::new(open(config)?);
    let device = resolve_device(&store, id)?;
    let record = store
        .device(&device)
        .map_err(|e| e.to_string())?
        .ok_or("Device id unknown.")?;
    let mut wns = config.wns.clone();
    wns.workers = 1;
    let clock = Clock::system();
    let vault = Arc::new(StoreVault(store.clone()));
    let pool = WnsPool::from_config(&wns, Some(vault), clock.clone()).map_err(|e| e.to_string())?;
    let effects = Arc::new(Effects::new(store.clone(), clock));
    let generation = ClientGeneration::of(record.version, record.account_form);
    let outcome = send_and_wait(
        &pool,
        &effects,
        record.device_id,
        record.channel_uri,
        payload::test_push(generation),
        wns.deadline,
    );
    pool.stop(Duration::from_secs(2));
    effects.flush();
    say!("test push to {}: {outcome}", device.short());
    match outcome {
        Outcome::Delivered => Ok(()),
        Outcome::Misconfigured(why) => Err(format!("not delivered: configuration error: {why}")),
        other => Err(format!("not delivered: {other}")),
    }
}

/// Deletes a device and its accounts.
pub fn remove_device(config: &Config, id: &str) -> Result<(), String> {
    let store = open(config)?;
    let device = resolve_device(&store, id)?;
    if store.remove_device(&device).map_err(|e| e.to_string())? {
        say!("removed device {device} and its accounts");
        Ok(())
    } else {
        Err("Device id unknown.".into())
    }
}

/// Copies the SQLite database at `sqlite` into the (empty) PostgreSQL database of
/// `db.url`, in one transaction, and prints what it copied. The file is only read.
pub fn migrate_db(config: &Config, sqlite: &Path) -> Result<(), String> {
    let report = migrate_sqlite_to_postgres(sqlite, &config.db).map_err(|e| e.to_string())?;
    if report.source_live {
        eprintln!(
            "uwpx-push-server: warning: {}-wal exists: if a server still runs on this file, what \
             it stored after the copy is not in PostgreSQL; stop it and migrate again into an \
             empty database",
            sqlite.display()
        );
    }
    print!("{}", migration_summary(&report, Clock::system().unix_now()));
    Ok(())
}

/// The lines `migrate-db` prints.
fn migration_summary(r: &MigrationReport, now: i64) -> String {
    let token = match r.token_expires_at {
        Some(t) if t > now => format!("copied (expires in {} s)", t - now),
        Some(_) => "copied (expired; a new one is fetched on the next push)".into(),
        None => "none".into(),
    };
    format!(
        "copied {} (schema {}) to {} in one transaction, {:.1} s:\n\
         devices:             {}\n\
         accounts:            {}\n\
         removed nodes:       {}\n\
         WNS token:           {token}\n\
         track_removed_nodes: {}\n",
        r.source.display(),
        r.source_schema,
        r.target,
        r.elapsed.as_secs_f64(),
        r.devices,
        r.accounts,
        r.removed_nodes,
        if r.track_removed_nodes { "on" } else { "off" },
    )
}
