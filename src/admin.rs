//! Admin commands: `stats`, `test-push`, `remove-device`. Each opens the same
//! configuration and database as the server; SQLite's WAL and busy timeout make that
//! safe while the server runs (a removed device's PEP nodes are then deleted by the
//! running server, from the store's removed-node list).
//!
//! Threads: `main` (and, for `test-push`, a one-worker WNS pool).

use std::sync::Arc;
use std::time::Duration;

use crate::app::StoreVault;
use crate::clock::Clock;
use crate::config::Config;
use crate::push::effects::{Effects, send_and_wait};
use crate::store::Store;
use crate::types::{ClientGeneration, DeviceId};
use crate::wns::{Outcome, WnsPool, payload};

fn open(config: &Config) -> Result<Store, String> {
    Store::open(&config.db).map_err(|e| format!("cannot open {}: {e}", config.db.path.display()))
}

fn device_id(id: &str) -> Result<DeviceId, String> {
    DeviceId::parse(id).map_err(|e| format!("{e}"))
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

/// Counts, the least and most recently seen device, and the WNS token's expiry.
pub fn stats(config: &Config) -> Result<(), String> {
    let store = open(config)?;
    let now = Clock::system().unix_now();
    let c = store.counts().map_err(|e| e.to_string())?;
    println!("devices:  {}", c.devices);
    println!("accounts: {}", c.accounts);
    match store.seen_range().map_err(|e| e.to_string())? {
        Some((oldest, newest)) => {
            println!("oldest device last seen: {}", ago(oldest, now));
            println!("newest device last seen: {}", ago(newest, now));
        }
        None => println!("no devices"),
    }
    match store.load_token().map_err(|e| e.to_string())? {
        Some(t) if t.expires_at > now => println!("WNS token: expires in {} s", t.expires_at - now),
        Some(_) => println!("WNS token: expired (a new one is fetched on the next push)"),
        None => println!("WNS token: none yet"),
    }
    Ok(())
}

/// Sends the device's test push and prints the WNS outcome.
pub fn test_push(config: &Config, id: &str) -> Result<(), String> {
    let device = device_id(id)?;
    if config.wns.credentials.is_none() {
        return Err("WNS delivery is not configured (wns.packet_id, wns.client_secret)".into());
    }
    let store = Arc::new(open(config)?);
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
    println!("test push to {}: {outcome}", device.short());
    match outcome {
        Outcome::Delivered => Ok(()),
        other => Err(format!("not delivered: {other}")),
    }
}

/// Deletes a device and its accounts.
pub fn remove_device(config: &Config, id: &str) -> Result<(), String> {
    let device = device_id(id)?;
    let store = open(config)?;
    if store.remove_device(&device).map_err(|e| e.to_string())? {
        println!("removed device {device} and its accounts");
        Ok(())
    } else {
        Err("Device id unknown.".into())
    }
}
