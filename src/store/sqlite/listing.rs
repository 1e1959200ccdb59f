//! Read-only queries for the operator's commands on SQLite: finding a device by a
//! prefix of its id and listing devices for `stats --devices` (see
//! [`super::super::Store::devices_with_prefix`]).
//!
//! Threads: `main` of an admin process. Each query takes the read connection for one
//! statement. These are full scans, fine for a command an operator types; nothing on
//! the registration or publish path calls them.

use rusqlite::params;

use super::{Sqlite, stored_version};
use crate::store::{DeviceSummary, PrefixMatches, StoreError};
use crate::types::{AccountForm, DeviceId};

impl Sqlite {
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
