//! The `xmpp` section: the service's JID, and component or client mode.
//!
//! Threads: `main`, once, while loading.

use std::time::Duration;

use super::doc::Doc;
use super::keys;
use super::tls::read_pem;
use super::{
    ClientConfig, ComponentConfig, ComponentJid, ConfigError, Masked, XmppConfig, invalid,
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
    Ok(XmppConfig {
        bare_jid,
        password,
        component,
        client,
        ping_interval: Duration::from_secs(doc.int(&keys::XMPP_PING_INTERVAL_S)?),
    })
}

/// `xmpp.component.*`.
fn component(doc: &Doc<'_>) -> Result<ComponentConfig, ConfigError> {
    let jid = doc.required(&keys::XMPP_COMPONENT_JID)?;
    Ok(ComponentConfig {
        jid: ComponentJid::parse(&jid).map_err(|e| invalid(keys::XMPP_COMPONENT_JID.path, e))?,
        secret: Masked(doc.required(&keys::XMPP_COMPONENT_SECRET)?),
        host: doc.required(&keys::XMPP_COMPONENT_HOST)?,
        port: doc.int(&keys::XMPP_COMPONENT_PORT)? as u16,
    })
}

/// Client mode: `xmpp.host`, `xmpp.port`, `xmpp.resource`, `xmpp.ca_file`.
fn client(
    doc: &Doc<'_>,
    bare_jid: &BareJid,
    password: &Masked,
) -> Result<ClientConfig, ConfigError> {
    Ok(ClientConfig {
        host: doc
            .text(&keys::XMPP_HOST)?
            .unwrap_or_else(|| bare_jid.domain()),
        port: doc.int(&keys::XMPP_PORT)? as u16,
        resource: doc.required(&keys::XMPP_RESOURCE)?,
        ca_pem: read_pem(doc, &keys::XMPP_CA_FILE)?,
        bare_jid: bare_jid.clone(),
        password: password.clone(),
    })
}
