//! Request → store → answer. No sockets here: the connection code hands in a decoded
//! [`Request`] and writes back whatever [`Handler::handle`] returns.
//!
//! The answer is built only after the store call returned, and every store call commits
//! before it returns, so a success answer always describes committed data.
//!
//! Threads: `reg-conn-*`; takes the store lock through [`Store`] methods only.

use std::sync::Arc;
use std::time::Duration;

use super::codec::{Action, Request};
use super::wire::{AccountAnswer, Answer, RegError};
use crate::store::{Store, unix_now};
use crate::types::ClientGeneration;
use crate::wns::{Outcome, WnsPool, test_push};
use crate::xmpp::pep::Pep;

/// Shared, read-only state of the registration service.
pub struct Handler {
    store: Arc<Store>,
    push_jid: String,
    wns: Option<TestPush>,
    pep: Option<Pep>,
}

/// What request_test_push needs: the pool, and how long a push may take.
pub struct TestPush {
    /// The WNS worker pool.
    pub pool: Arc<WnsPool>,
    /// `wns.deadline_ms`.
    pub deadline: Duration,
}

impl Handler {
    /// `push_jid` is what clients put in `<enable jid=…/>`: the configured bare JID, or
    /// the component JID once component mode exists. Without `wns`, test pushes are
    /// answered "not available".
    /// In client mode, `pep` creates a PEP node for each new account; an account whose
    /// node could not be created is answered `success: false`.
    pub fn new(
        store: Arc<Store>,
        push_jid: String,
        wns: Option<TestPush>,
        pep: Option<Pep>,
    ) -> Self {
        Self {
            store,
            push_jid,
            wns,
            pep,
        }
    }

    /// Handles one request. Errors are values; the caller encodes and logs them.
    pub fn handle(&self, req: Request) -> Result<Answer, RegError> {
        let now = unix_now();
        match req.action {
            Action::SetChannelUri(uri) => {
                self.store
                    .set_channel(&req.device_id, &uri, req.version, now)?;
                Ok(Answer::Done)
            }
            Action::SetPushAccounts(list) => {
                let specs: Vec<_> = list.entries.iter().map(|e| e.spec.clone()).collect();
                let records = self
                    .store
                    .set_accounts(&req.device_id, req.version, list.form, &specs, now)?
                    .ok_or(RegError::DeviceUnknown)?;
                // Committed first: a crash before the nodes exist is repaired by the
                // reconciliation at the next connect.
                let mut created: Vec<Result<(), String>> = Vec::new();
                if let Some(pep) = &self.pep {
                    let new: Vec<&str> = records
                        .iter()
                        .filter(|r| r.created)
                        .map(|r| r.node.as_str())
                        .collect();
                    created = pep.create_all(&new);
                }
                let mut created = created.into_iter();
                let accounts = list
                    .entries
                    .into_iter()
                    .zip(records)
                    .map(|(entry, rec)| {
                        let success = match (&self.pep, rec.created) {
                            (Some(_), true) => created.next().is_some_and(|r| r.is_ok()),
                            _ => true,
                        };
                        AccountAnswer {
                            form: list.form.unwrap_or(crate::types::AccountForm::AccountId),
                            echo: entry.echo,
                            node: rec.node,
                            secret: rec.secret,
                            success,
                        }
                    })
                    .collect();
                Ok(Answer::Accounts {
                    push_jid: self.push_jid.clone(),
                    accounts,
                })
            }
            Action::RequestTestPush => {
                let device = self
                    .store
                    .device(&req.device_id)?
                    .ok_or(RegError::DeviceUnknown)?;
                let wns = self.wns.as_ref().ok_or(RegError::TestPushUnavailable)?;
                // The asking client's own version decides the format: a 0.39+ client
                // asking with version 2 wants JSON even if it registered as v1 before.
                let generation = ClientGeneration::of(req.version, device.account_form);
                match test_push::send_and_wait(
                    &wns.pool,
                    device.device_id,
                    device.channel_uri,
                    generation,
                    wns.deadline,
                ) {
                    Outcome::Delivered => Ok(Answer::Done),
                    outcome => Err(RegError::TestPushFailed(outcome)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::codec::{Rules, decode};
    use super::*;
    use crate::types::ChannelHosts;

    fn run(h: &Handler, json: &str) -> Result<Answer, RegError> {
        let rules = Rules {
            max_accounts: 32,
            channel_hosts: ChannelHosts::new(vec!["notify.windows.com".into()]),
        };
        h.handle(decode(json.as_bytes(), &rules).unwrap())
    }

    #[test]
    fn unknown_device_changes_nothing() {
        let store = Arc::new(Store::open_in_memory().unwrap());
        let h = Handler::new(store.clone(), "push@example.org".into(), None, None);
        let r = run(
            &h,
            r#"{"version":2,"action":"set_push_accounts","device_id":"ab","accounts":[{"account_id":"x"}]}"#,
        );
        assert!(matches!(r, Err(RegError::DeviceUnknown)));
        let r = run(
            &h,
            r#"{"version":2,"action":"request_test_push","device_id":"ab"}"#,
        );
        assert!(matches!(r, Err(RegError::DeviceUnknown)));
        assert_eq!(store.counts().unwrap().devices, 0);
        run(&h, r#"{"version":2,"action":"set_channel_uri","device_id":"ab","channel_uri":"https://a.notify.windows.com/?t=1"}"#).unwrap();
        let r = run(
            &h,
            r#"{"version":2,"action":"request_test_push","device_id":"ab"}"#,
        );
        assert!(matches!(r, Err(RegError::TestPushUnavailable)));
        let Ok(Answer::Accounts { push_jid, accounts }) = run(
            &h,
            r#"{"version":2,"action":"set_push_accounts","device_id":"ab","accounts":[{"account_id":"x"}]}"#,
        ) else {
            panic!()
        };
        assert_eq!(push_jid, "push@example.org");
        assert_eq!(accounts[0].echo, "x");
    }
}
