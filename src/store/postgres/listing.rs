//! Read-only queries for the operator's commands on PostgreSQL (see
//! [`super::super::Store::devices_with_prefix`]). Full scans, fine for a command an
//! operator types; nothing on the registration or publish path calls them.
//!
//! Threads: `main` of an admin process, one pooled connection per query.

use super::{Postgres, form_of, stored_version};
use crate::store::{DeviceSummary, PrefixMatches, StoreError};
use crate::types::DeviceId;

impl Postgres {
    /// Devices whose id starts with `prefix`, without regard to ASCII case. `prefix` is a
    /// valid [`DeviceId`], so it holds no `LIKE` wildcard.
    pub fn devices_with_prefix(
        &self,
        prefix: &DeviceId,
        limit: usize,
    ) -> Result<PrefixMatches, StoreError> {
        let pattern = format!("{}%", prefix.as_str().to_ascii_lowercase());
        let limit = limit as i64;
        self.with(|c| {
            let rows = c.client.query(
                "SELECT device_id, count(*) OVER () FROM devices
                 WHERE lower(device_id) LIKE $1 ORDER BY device_id LIMIT $2",
                &[&pattern, &limit],
            )?;
            let total = rows.first().map_or(0, |r| r.get::<_, i64>(1) as u64);
            Ok(PrefixMatches {
                first: rows
                    .iter()
                    .map(|r| DeviceId::from_stored(r.get(0)))
                    .collect(),
                total,
            })
        })
    }

    /// Every device with its account count, most recently seen first.
    pub fn device_summaries(&self) -> Result<Vec<DeviceSummary>, StoreError> {
        self.with(|c| {
            let rows = c.client.query(
                "SELECT d.device_id, d.version, d.account_form, d.last_seen_at,
                        (SELECT count(*) FROM accounts a WHERE a.device_id = d.device_id)
                 FROM devices d ORDER BY d.last_seen_at DESC, d.device_id",
                &[],
            )?;
            Ok(rows
                .iter()
                .map(|r| DeviceSummary {
                    device_id: DeviceId::from_stored(r.get(0)),
                    version: stored_version(r.get(1)),
                    account_form: form_of(r.get(2)),
                    last_seen_at: r.get(3),
                    accounts: r.get::<_, i64>(4) as u64,
                })
                .collect())
        })
    }
}
