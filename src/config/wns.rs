//! The `wns` section: credentials, the channel host allowlist, and sending.
//!
//! Threads: `main`, once, while loading.

use std::time::Duration;

use super::doc::Doc;
use super::keys;
use super::tls::read_pem;
use super::{ConfigError, Masked, WnsConfig, WnsCredentials, invalid, looks_like_placeholder};
use crate::types::ChannelHosts;

/// `wns.*`.
pub(super) fn load(doc: &Doc<'_>) -> Result<WnsConfig, ConfigError> {
    let token_url = doc.required(&keys::WNS_TOKEN_URL)?;
    if !token_url.starts_with("https://") {
        return Err(invalid(keys::WNS_TOKEN_URL.path, "must be an https URL"));
    }
    Ok(WnsConfig {
        credentials: credentials(doc)?,
        channel_hosts: ChannelHosts::new(channel_hosts(doc)?),
        token_url,
        ca_pem: read_pem(doc, &keys::WNS_CA_FILE)?,
        workers: doc.int(&keys::WNS_WORKERS)? as usize,
        queue_capacity: doc.int(&keys::WNS_QUEUE_CAPACITY)? as usize,
        timeout: Duration::from_millis(doc.int(&keys::WNS_TIMEOUT_MS)?),
        max_attempts: doc.int(&keys::WNS_MAX_ATTEMPTS)? as u32,
        deadline: Duration::from_millis(doc.int(&keys::WNS_DEADLINE_MS)?),
        cache_policy: doc.choice(&keys::WNS_CACHE_POLICY)?.map(str::to_owned),
        ttl_s: doc.nullable_int(&keys::WNS_TTL_S)?,
        priority: doc.nullable_int(&keys::WNS_PRIORITY)?.map(|p| p as u8),
    })
}

/// `wns.packet_id` and `wns.client_secret`: both or neither.
fn credentials(doc: &Doc<'_>) -> Result<Option<WnsCredentials>, ConfigError> {
    match (
        doc.text(&keys::WNS_PACKET_ID)?,
        doc.text(&keys::WNS_CLIENT_SECRET)?,
    ) {
        (Some(packet_id), Some(secret)) => {
            warn_placeholders(doc, &packet_id, &secret);
            Ok(Some(WnsCredentials {
                packet_id,
                client_secret: Masked(secret),
            }))
        }
        (None, None) => Ok(None),
        (Some(_), None) => Err(invalid(
            keys::WNS_CLIENT_SECRET.path,
            "is required when `wns.packet_id` is set",
        )),
        (None, Some(_)) => Err(invalid(
            keys::WNS_PACKET_ID.path,
            "is required when `wns.client_secret` is set",
        )),
    }
}

/// Credentials that are obviously the example's: WNS would refuse them at the first push.
fn warn_placeholders(doc: &Doc<'_>, packet_id: &str, secret: &str) {
    let sid_digits = packet_id.strip_prefix("ms-app://s-1-15-2-");
    if sid_digits.is_none_or(|d| d.chars().all(|c| c == '0' || c == '-')) {
        doc.warn(
            &keys::WNS_PACKET_ID,
            "looks like a placeholder: set the app's package SID (ms-app://s-1-15-2-…) from the Partner Center; WNS refuses pushes until then",
        );
    }
    if looks_like_placeholder(secret) {
        doc.warn(
            &keys::WNS_CLIENT_SECRET,
            "looks like a placeholder: set the app's client secret from the Partner Center; WNS refuses pushes until then",
        );
    }
}

/// `wns.channel_hosts`: bare host names, since the bearer token is sent to them.
fn channel_hosts(doc: &Doc<'_>) -> Result<Vec<String>, ConfigError> {
    let hosts = doc.list(&keys::WNS_CHANNEL_HOSTS)?;
    if hosts.iter().any(|h| h.contains(['/', ':', '@', ' '])) {
        return Err(invalid(
            keys::WNS_CHANNEL_HOSTS.path,
            "must list host names like \"notify.windows.com\"",
        ));
    }
    Ok(hosts)
}
