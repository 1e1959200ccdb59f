//! Client mode's login lease: with several instances on one database, only one may log
//! in as the push account (each logged-in instance would get every PEP event and push
//! it). The lease is a database lock held by a connection of its own; a standby asks for
//! it every [`LEASE_STEP`] and takes over when the holder's connection ends (it stopped,
//! died, or lost the database). On SQLite there is one instance and it always holds.
//!
//! Threads: `xmpp-io`. Locks: none of its own; one database round trip per check.

use std::time::Duration;

use crate::store::{Lease, Store};

/// The database lease client mode's login runs under.
const CLIENT_LEASE: &str = "client-mode-login";
/// How often a standby asks for the lease, and a holder checks it still has it.
pub(super) const LEASE_STEP: Duration = Duration::from_secs(3);

/// The lease as the I/O loop holds it, and whether the standby line was said.
#[derive(Default)]
pub(super) struct LoginLease {
    lease: Option<Lease>,
    /// The standby line is said once per spell.
    standby_said: bool,
}

impl LoginLease {
    /// Holds (or takes) the lease; false while another instance has it (said once at
    /// info) or the database cannot be asked.
    pub fn take(&mut self, store: &Store) -> bool {
        if self.lease.as_mut().is_some_and(Lease::is_held) {
            return true;
        }
        self.lease = None;
        match store.acquire_lease(CLIENT_LEASE) {
            Ok(Some(lease)) => {
                if self.standby_said {
                    log::info!("xmpp: took over the client-mode login from another instance");
                }
                self.standby_said = false;
                self.lease = Some(lease);
                true
            }
            Ok(None) => {
                if !self.standby_said {
                    log::info!(
                        "xmpp: standby: another instance holds the client-mode login; asking again every {} s",
                        LEASE_STEP.as_secs()
                    );
                    self.standby_said = true;
                }
                false
            }
            Err(e) => {
                log::warn!("xmpp: cannot ask the database for the client-mode login: {e}");
                false
            }
        }
    }

    /// Whether a lease this instance held is gone (its database connection ended):
    /// then it must log out, since a standby may be taking over.
    pub fn is_lost(&mut self) -> bool {
        if self.lease.as_mut().is_some_and(|l| !l.is_held()) {
            self.lease = None;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_a_store_of_its_own_the_lease_is_always_held() {
        let store = Store::open_in_memory().unwrap();
        let mut l = LoginLease::default();
        assert!(l.take(&store));
        assert!(!l.is_lost());
        assert!(l.take(&store));
    }
}
