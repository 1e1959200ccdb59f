//! Device expiry: a device whose channel was neither registered nor successfully pushed
//! to within `db.device_ttl_days` is removed with its accounts (and, in client mode,
//! its PEP nodes, through the store's removed-node list).
//!
//! "Last seen" moves on registration and on delivery: clients from 0.40 on re-register
//! only when their channel or accounts change, so an active device may not register for
//! months and must not be expired.
//!
//! Threads: `ops-expiry` sweeps at start and then hourly, sleeping on the shutdown
//! signal in between. Locks: the store's.

use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::clock::Clock;
use crate::shutdown::Shutdown;
use crate::store::{Store, StoreError};

/// How often the sweeper runs.
pub const INTERVAL: Duration = Duration::from_secs(3600);

/// Removes devices not seen since `now - ttl_days`; returns how many.
pub fn sweep(store: &Store, now: i64, ttl_days: u32) -> Result<usize, StoreError> {
    store.expire_devices(now - i64::from(ttl_days) * 86_400)
}

/// Starts the `ops-expiry` thread.
pub fn start(
    store: Arc<Store>,
    ttl_days: u32,
    clock: Clock,
    shutdown: Shutdown,
) -> std::io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name("ops-expiry".into())
        .spawn(move || {
            loop {
                match sweep(&store, clock.unix_now(), ttl_days) {
                    Ok(0) => log::debug!("expiry: no device older than {ttl_days} days"),
                    Ok(n) => log::info!("expiry: removed {n} devices not seen for {ttl_days} days"),
                    Err(e) => log::warn!("expiry: sweep failed: {e}"),
                }
                if shutdown.wait_timeout(INTERVAL) {
                    return;
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::AccountSpec;
    use crate::types::{AccountKey, ChannelHosts, ChannelUri, DeviceId, ProtocolVersion};

    #[test]
    fn only_devices_unseen_for_the_ttl_go() {
        let store = Store::open_in_memory().unwrap();
        let uri = ChannelUri::parse(
            "https://a.notify.windows.com/?t=1",
            &ChannelHosts::new(vec!["notify.windows.com".into()]),
        )
        .unwrap();
        let day = 86_400;
        let now = 1_000 * day;
        for (id, seen) in [
            ("aa", now - 91 * day),
            ("bb", now - 89 * day),
            ("cc", now - 200 * day),
        ] {
            let d = DeviceId::parse(id).unwrap();
            store
                .set_channel(&d, &uri, ProtocolVersion::V2, seen)
                .unwrap();
            let spec = AccountSpec {
                key: AccountKey::parse("k").unwrap(),
                domain: None,
            };
            store
                .set_accounts(&d, ProtocolVersion::V2, None, &[spec], seen)
                .unwrap();
        }
        // A delivery moves last-seen forward: "cc" was pushed to 10 days ago.
        store
            .touch_devices(&[(DeviceId::parse("cc").unwrap(), now - 10 * day)])
            .unwrap();
        assert_eq!(sweep(&store, now, 90).unwrap(), 1);
        assert!(
            store
                .device(&DeviceId::parse("aa").unwrap())
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .device(&DeviceId::parse("bb").unwrap())
                .unwrap()
                .is_some()
        );
        assert!(
            store
                .device(&DeviceId::parse("cc").unwrap())
                .unwrap()
                .is_some()
        );
        assert_eq!(store.counts().unwrap().accounts, 2);
        assert_eq!(
            store.removed_nodes(10).unwrap().len(),
            1,
            "its PEP node is queued for deletion"
        );
    }
}
