//! The rows `migrate-db` moves, exactly as stored (the columns both schemas share): the
//! SQLite export reads them, the PostgreSQL import writes them, `migrate` carries them.
//!
//! Threads: any; plain data.

/// A device row exactly as stored (the columns both schemas share).
pub(crate) struct DeviceRow {
    pub device_id: String,
    pub channel_uri: String,
    pub version: i64,
    pub account_form: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_seen_at: i64,
}

/// An account row exactly as stored.
pub(crate) struct AccountRow {
    pub device_id: String,
    pub account_key: String,
    pub domain: Option<String>,
    pub node: String,
    pub secret: String,
    pub created_at: i64,
}

/// The stored WNS token.
pub(crate) struct TokenRow {
    pub access_token: String,
    pub token_type: String,
    pub expires_at: i64,
}
