//! Read-only queries for the operator's commands: finding a device by a prefix of its id
//! (the logs print only 12 characters) and listing devices for `stats --devices`
//! (issue 10 item 14).
//!
//! Threads: `main` of an admin process. Each query takes the read connection for one
//! statement. These are full scans, fine for a command an operator types; nothing on
//! the registration or publish path calls them.
//!
//! Nothing here returns a bare JID, an account key, a node or a secret: an account is
//! only counted.

use rusqlite::params;

use super::{Store, StoreError, stored_version};
use crate::types::{AccountForm, DeviceId, ProtocolVersion};

/// One line of `stats --devices`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSummary {
    /// The whole device id.
    pub device_id: DeviceId,
    /// The protocol version of its last request.
    pub version: ProtocolVersion,
    /// How its accounts are named, if it ever sent any.
    pub account_form: Option<AccountForm>,
    /// How many push accounts it has.
    pub accounts: u64,
    /// Unix seconds of its last registration or recorded delivery.
    pub last_seen_at: i64,
}

/// The devices whose id starts with a prefix: the first few, and how many in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixMatches {
    /// Up to the asked limit, ordered by id.
    pub first: Vec<DeviceId>,
    /// Every match, including those not in `first`.
    pub total: u64,
}

impl Store {
    /// Devices whose id starts with `prefix`, compared without regard to ASCII case (ids
    /// are hex; old clients' may be upper case). `prefix` must already be a valid
    /// [`DeviceId`], so it holds no `LIKE` wildcard.
    pub fn devices_with_prefix(
        &self,
        prefix: &DeviceId,
        limit: usize,
    ) -> Result<PrefixMatches, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare(
            "SELECT device_id, count(*) OVER () FROM devices
             WHERE device_id LIKE ?1 ORDER BY device_id LIMIT ?2",
        )?;
        let rows = stmt
            .query_map(
                params![format!("{}%", prefix.as_str()), limit as i64],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let total = rows.first().map_or(0, |(_, n)| *n as u64);
        Ok(PrefixMatches {
            first: rows
                .into_iter()
                .map(|(id, _)| DeviceId::from_stored(id))
                .collect(),
            total,
        })
    }

    /// Every device with its account count, most recently seen first.
    pub fn device_summaries(&self) -> Result<Vec<DeviceSummary>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare(
            "SELECT d.device_id, d.version, d.account_form, d.last_seen_at,
                    (SELECT count(*) FROM accounts a WHERE a.device_id = d.device_id)
             FROM devices d ORDER BY d.last_seen_at DESC, d.device_id",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok(DeviceSummary {
                    device_id: DeviceId::from_stored(r.get(0)?),
                    version: stored_version(r.get(1)?),
                    account_form: r
                        .get::<_, Option<String>>(2)?
                        .as_deref()
                        .and_then(AccountForm::from_json_key),
                    last_seen_at: r.get(3)?,
                    accounts: r.get::<_, i64>(4)? as u64,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::AccountSpec;
    use crate::types::{AccountKey, ChannelHosts, ChannelUri};

    fn store_with(ids: &[&str]) -> Store {
        let store = Store::open_in_memory().unwrap();
        let hosts = ChannelHosts::new(vec!["notify.windows.com".into()]);
        let uri = ChannelUri::parse("https://a.notify.windows.com/?t=1", &hosts).unwrap();
        for (i, id) in ids.iter().enumerate() {
            let device = DeviceId::parse(id).unwrap();
            store
                .set_channel(&device, &uri, ProtocolVersion::V2, 1000 + i as i64)
                .unwrap();
        }
        store
    }

    #[test]
    fn a_prefix_finds_its_devices_whatever_the_case() {
        let store = store_with(&["abcdef01", "abcdef02", "ABCDEF03", "abcd99"]);
        let m = store
            .devices_with_prefix(&DeviceId::parse("abcdef").unwrap(), 2)
            .unwrap();
        assert_eq!(m.total, 3);
        assert_eq!(m.first.len(), 2);
        let m = store
            .devices_with_prefix(&DeviceId::parse("AbCdEf02").unwrap(), 10)
            .unwrap();
        assert_eq!((m.total, m.first[0].as_str()), (1, "abcdef02"));
        let m = store
            .devices_with_prefix(&DeviceId::parse("abcdef0").unwrap(), 10)
            .unwrap();
        assert_eq!(m.total, 3);
        let none = store
            .devices_with_prefix(&DeviceId::parse("ffff").unwrap(), 10)
            .unwrap();
        assert_eq!((none.total, none.first.len()), (0, 0));
    }

    #[test]
    fn summaries_count_accounts_newest_first() {
        let store = store_with(&["aa01", "aa02"]);
        let spec = |k: &str| AccountSpec {
            key: AccountKey::parse(k).unwrap(),
            domain: None,
        };
        store
            .set_accounts(
                &DeviceId::parse("aa01").unwrap(),
                ProtocolVersion::V1,
                Some(AccountForm::AccountId),
                &[spec("k1"), spec("k2")],
                5000,
            )
            .unwrap();
        let list = store.device_summaries().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].device_id.as_str(), "aa01");
        assert_eq!(list[0].accounts, 2);
        assert_eq!(list[0].version, ProtocolVersion::V1);
        assert_eq!(list[0].account_form, Some(AccountForm::AccountId));
        assert_eq!(list[0].last_seen_at, 5000);
        assert_eq!((list[1].device_id.as_str(), list[1].accounts), ("aa02", 0));
    }
}
