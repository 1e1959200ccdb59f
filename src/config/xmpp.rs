//! The `xmpp` section: the service's JID, and component or client mode.
//!
//! Threads: `main`, once, while loading.

use std::time::Duration;

use super::doc::Doc;
use super::keys::{self, Key, Text};
use super::tls::read_pem;
use super::{
    ClientConfig, ComponentConfig, ComponentJid, ConfigError, Masked, XmppConfig, invalid,
    looks_like_placeholder,
};
use crate::types::BareJid;

/// `xmpp.*`.
pub(super) fn load(doc: &Doc<'_>) -> Result<XmppConfig, ConfigError> {
    let text = doc.required(&keys::XMPP_BARE_JID)?;
    let bare_jid = BareJid::parse(&text).map_err(|e| invalid(keys::XMPP_BARE_JID.path, e.0))?;
    let component = if doc.section(&keys::XMPP_COMPONENT)? {
        Some(component(doc)?)
    } else {
        None
    };
    let password = doc.text(&keys::XMPP_PASSWORD)?.map(Masked);
    let client = match (&component, &password) {
        (None, Some(password)) => Some(client(doc, &bare_jid, password)?),
        _ => None,
    };
    warn_ignored(doc, component.is_some(), client.is_some());
    Ok(XmppConfig {
        bare_jid,
        password,
        component,
        client,
        ping_interval: Duration::from_secs(doc.int(&keys::XMPP_PING_INTERVAL_S)?),
    })
}

/// Keys for client mode that the chosen mode ignores: in component mode all of them, and
/// without `xmpp.password` all but the password itself.
fn warn_ignored(doc: &Doc<'_>, component_mode: bool, client_mode: bool) {
    if client_mode {
        return;
    }
    let why = if component_mode {
        "is ignored: `xmpp.component` is set, so the server runs as a component (remove the key, or remove `xmpp.component` for client mode)"
    } else {
        "is ignored: client mode needs `xmpp.password`"
    };
    if component_mode && doc.given(&keys::XMPP_PASSWORD) {
        doc.warn(&keys::XMPP_PASSWORD, why);
    }
    for key in [&keys::XMPP_HOST, &keys::XMPP_RESOURCE, &keys::XMPP_CA_FILE] {
        if doc.given(key) {
            doc.warn(key, why);
        }
    }
    if doc.given(&keys::XMPP_PORT) {
        doc.warn(&keys::XMPP_PORT, why);
    }
}

/// `xmpp.component.*`.
fn component(doc: &Doc<'_>) -> Result<ComponentConfig, ConfigError> {
    let jid = doc.required(&keys::XMPP_COMPONENT_JID)?;
    Ok(ComponentConfig {
        jid: ComponentJid::parse(&jid).map_err(|e| invalid(keys::XMPP_COMPONENT_JID.path, e))?,
        secret: Masked(secret(doc, &keys::XMPP_COMPONENT_SECRET)?),
        host: doc.required(&keys::XMPP_COMPONENT_HOST)?,
        port: doc.int(&keys::XMPP_COMPONENT_PORT)? as u16,
    })
}

/// Client mode: `xmpp.host`, `xmpp.port`, `xmpp.resource`, `xmpp.ca_file`.
/// A required secret; one that is obviously an example's placeholder gets a warning.
fn secret(doc: &Doc<'_>, key: &Key<Text>) -> Result<String, ConfigError> {
    let value = doc.required(key)?;
    if looks_like_placeholder(&value) {
        doc.warn(
            key,
            "looks like a placeholder from the example: set the secret the XMPP server is configured with",
        );
    }
    Ok(value)
}

fn client(
    doc: &Doc<'_>,
    bare_jid: &BareJid,
    password: &Masked,
) -> Result<ClientConfig, ConfigError> {
    Ok(ClientConfig {
        host: doc.text(&keys::XMPP_HOST)?,
        port: doc.int(&keys::XMPP_PORT)? as u16,
        resource: doc.required(&keys::XMPP_RESOURCE)?,
        ca_pem: read_pem(doc, &keys::XMPP_CA_FILE)?,
        bare_jid: bare_jid.clone(),
        password: password.clone(),
    })
}
