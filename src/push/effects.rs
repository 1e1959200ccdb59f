//! The store side effects of a WNS outcome, and waiting for one push.
//!
//! WNS only reports what happened; what that means for our data is decided here
//! (style-anchors §5.2):
//! - `ChannelGone` (404/410) deletes the device, but only if its channel is still the
//!   one that was pushed to, so a device that re-registered meanwhile keeps its new
//!   channel;
//! - `Delivered` moves the device's last-seen time (expiry counts from it). These
//!   writes are batched and flushed at most every [`SEEN_FLUSH`], not one per push.
//!
//! Threads: [`Effects::apply`] runs on the `wns-worker-*` thread that got the outcome,
//! before the outcome travels on, so an IQ reply `item-not-found` is only sent once
//! the device is gone. A flush is a store write on whichever worker finds it due, and a
//! last one at shutdown (`app`). Locks: `seen` briefly (never across the store call).

use std::collections::HashMap;
use std::mem;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::clock::Clock;
use crate::store::Store;
use crate::types::{ChannelUri, DeviceId};
use crate::wns::{Finished, Job, Outcome, WnsPool};

/// How often successful deliveries are written to `devices.last_seen_at`.
pub const SEEN_FLUSH: Duration = Duration::from_secs(5);

/// Applies outcomes to the store. Shared as `Arc<Effects>` by every submitter.
pub struct Effects {
    store: Arc<Store>,
    clock: Clock,
    seen: Mutex<Seen>,
}

struct Seen {
    devices: HashMap<DeviceId, i64>,
    next_flush: Instant,
}

impl Effects {
    /// Effects on `store`, dated by `clock`.
    pub fn new(store: Arc<Store>, clock: Clock) -> Self {
        Self {
            store,
            clock,
            seen: Mutex::new(Seen {
                devices: HashMap::new(),
                next_flush: Instant::now() + SEEN_FLUSH,
            }),
        }
    }

    /// Applies `f`'s outcome; `touch` says whether a delivery should move last-seen
    /// (the dispatcher skips it for devices seen within the hour: a write per push
    /// would be wasted on a clock that counts in days).
    pub fn apply(&self, f: &Finished, touch: bool) {
        match &f.outcome {
            Outcome::Delivered if touch => self.seen(&f.device),
            Outcome::ChannelGone => self.channel_gone(&f.device, &f.channel),
            _ => {}
        }
    }

    fn seen(&self, device: &DeviceId) {
        let now = Instant::now();
        let due = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.devices.insert(device.clone(), self.clock.unix_now());
            if now >= seen.next_flush {
                seen.next_flush = now + SEEN_FLUSH;
                mem::take(&mut seen.devices)
            } else {
                HashMap::new()
            }
        };
        self.write_seen(due);
    }

    fn channel_gone(&self, device: &DeviceId, channel: &ChannelUri) {
        let who = device.short();
        match self.store.delete_device_if_channel(device, channel) {
            Ok(true) => log::info!("push: device {who}'s channel is gone; device removed"),
            Ok(false) => log::info!(
                "push: device {who}'s channel is gone, but the device re-registered meanwhile; kept"
            ),
            Err(e) => log::error!("push: device {who}'s channel is gone, removing it failed: {e}"),
        }
    }

    /// Writes every pending last-seen time now (at shutdown, once the pool stopped).
    pub fn flush(&self) {
        let all = mem::take(&mut self.seen.lock().unwrap_or_else(|p| p.into_inner()).devices);
        self.write_seen(all);
    }

    fn write_seen(&self, batch: HashMap<DeviceId, i64>) {
        if batch.is_empty() {
            return;
        }
        let batch: Vec<(DeviceId, i64)> = batch.into_iter().collect();
        if let Err(e) = self.store.touch_devices(&batch) {
            log::warn!(
                "push: could not record {} deliveries as last seen: {e}",
                batch.len()
            );
        }
    }
}

/// Sends one payload to one device and waits for the outcome, with its side effects
/// applied: the test push of the registration protocol and of the admin command.
pub fn send_and_wait(
    pool: &WnsPool,
    effects: &Arc<Effects>,
    device: DeviceId,
    channel: ChannelUri,
    payload: Vec<u8>,
    deadline: Duration,
) -> Outcome {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let fx = effects.clone();
    pool.submit(Job::new(
        device,
        channel,
        payload,
        Instant::now() + deadline,
        Box::new(move |f: Finished| {
            fx.apply(&f, true);
            let _ = tx.try_send(f.outcome);
        }),
    ));
    rx.recv_timeout(deadline + Duration::from_secs(2))
        .unwrap_or_else(|_| Outcome::Transient("no answer from WNS in time".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::AccountSpec;
    use crate::types::{AccountKey, ChannelHosts, ProtocolVersion};

    #[test]
    fn a_dead_channel_removes_its_device_unless_it_re_registered() {
        let store = Arc::new(Store::open_in_memory().unwrap());
        let fx = Effects::new(store.clone(), Clock::manual(100));
        let hosts = ChannelHosts::new(vec!["notify.windows.com".into()]);
        let d = DeviceId::parse("aa").unwrap();
        let old = ChannelUri::parse("https://a.notify.windows.com/?t=1", &hosts).unwrap();
        let new = ChannelUri::parse("https://a.notify.windows.com/?t=2", &hosts).unwrap();
        store.set_channel(&d, &new, ProtocolVersion::V2, 1).unwrap();
        let spec = AccountSpec {
            key: AccountKey::parse("k").unwrap(),
            domain: None,
        };
        store
            .set_accounts(&d, ProtocolVersion::V2, None, &[spec], 1)
            .unwrap();
        let gone = |channel: &ChannelUri| Finished {
            device: d.clone(),
            channel: channel.clone(),
            outcome: Outcome::ChannelGone,
        };
        fx.apply(&gone(&old), true);
        assert!(store.device(&d).unwrap().is_some(), "re-registered: kept");
        fx.apply(&gone(&new), true);
        assert!(store.device(&d).unwrap().is_none());
    }

    #[test]
    fn deliveries_move_last_seen_by_the_injected_clock_at_the_flush() {
        let store = Arc::new(Store::open_in_memory().unwrap());
        let clock = Clock::manual(1_000);
        let fx = Effects::new(store.clone(), clock.clone());
        let hosts = ChannelHosts::new(vec!["notify.windows.com".into()]);
        let d = DeviceId::parse("bb").unwrap();
        let c = ChannelUri::parse("https://a.notify.windows.com/?t=1", &hosts).unwrap();
        store.set_channel(&d, &c, ProtocolVersion::V2, 10).unwrap();
        clock.advance(500);
        let done = |outcome| Finished {
            device: d.clone(),
            channel: c.clone(),
            outcome,
        };
        fx.apply(&done(Outcome::Delivered), false);
        fx.flush();
        assert_eq!(
            store.device(&d).unwrap().unwrap().last_seen_at,
            10,
            "no touch"
        );
        fx.apply(&done(Outcome::Delivered), true);
        assert_eq!(
            store.device(&d).unwrap().unwrap().last_seen_at,
            10,
            "batched"
        );
        fx.flush();
        assert_eq!(store.device(&d).unwrap().unwrap().last_seen_at, 1_500);
    }
}
