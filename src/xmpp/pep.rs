//! Client mode's PEP nodes on the push account: one per registered account, created
//! with `publish_model=open` so users' servers can publish, `max_items=1`, payloads and
//! notifications on, and subscribed by the push account itself.
//!
//! Registration threads ask for a node through [`Pep::create`], which hands the request
//! to the `xmpp-io` thread (the only writer of the stream) and waits for the outcome
//! with a timeout; they never touch the socket. Deletions need no waiting: the store
//! keeps a durable list of removed nodes (a trigger on `accounts`), which `xmpp-io`
//! works off.
//!
//! Threads: `reg-conn-*` call [`Pep::create`]; `xmpp-io` builds and sends the stanzas.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Sender, bounded};

use super::LinkStatus;
use super::reply::esc;

/// A request for `xmpp-io`.
pub struct PepRequest {
    /// The node to create and subscribe to.
    pub node: String,
    /// Where the outcome goes.
    pub reply: Sender<Result<(), String>>,
}

/// The handle registration threads use.
#[derive(Clone)]
pub struct Pep {
    tx: Sender<PepRequest>,
    status: Arc<LinkStatus>,
    timeout: Duration,
}

impl Pep {
    /// A handle sending to the I/O thread's queue.
    pub fn new(tx: Sender<PepRequest>, status: Arc<LinkStatus>, timeout: Duration) -> Self {
        Self {
            tx,
            status,
            timeout,
        }
    }

    /// Creates and subscribes each node, all requests in flight at once, within one
    /// timeout in total; per node, `Err` says why not (that account is then answered
    /// with `success: false`).
    pub fn create_all(&self, nodes: &[&str]) -> Vec<Result<(), String>> {
        if !self.status.is_connected() {
            return nodes
                .iter()
                .map(|_| Err("not connected to the XMPP server".into()))
                .collect();
        }
        let waiting: Vec<_> = nodes
            .iter()
            .map(|node| {
                let (reply, rx) = bounded(1);
                let sent = self.tx.send(PepRequest {
                    node: (*node).to_owned(),
                    reply,
                });
                sent.map(|()| rx)
                    .map_err(|_| "the XMPP link is gone".to_owned())
            })
            .collect();
        let deadline = std::time::Instant::now() + self.timeout;
        waiting
            .into_iter()
            .map(|rx| {
                let rx = rx?;
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                rx.recv_timeout(left)
                    .unwrap_or_else(|_| Err("the XMPP server did not answer in time".into()))
            })
            .collect()
    }
}

/// Creates `node` on our own PEP service with the push configuration.
pub fn create_iq(id: &str, own: &str, node: &str) -> String {
    let field =
        |var: &str, value: &str| format!("<field var='{var}'><value>{value}</value></field>");
    format!(
        "<iq type='set' id='{}' to='{}'><pubsub xmlns='http://jabber.org/protocol/pubsub'><create node='{}'/><configure><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#node_config</value></field>{}{}{}{}{}</x></configure></pubsub></iq>",
        esc(id),
        esc(own),
        esc(node),
        field("pubsub#publish_model", "open"),
        field("pubsub#access_model", "whitelist"),
        field("pubsub#max_items", "1"),
        field("pubsub#deliver_payloads", "1"),
        field("pubsub#deliver_notifications", "1"),
    )
}

/// Subscribes our bare JID to `node`.
pub fn subscribe_iq(id: &str, own: &str, node: &str) -> String {
    format!(
        "<iq type='set' id='{}' to='{}'><pubsub xmlns='http://jabber.org/protocol/pubsub'><subscribe node='{}' jid='{}'/></pubsub></iq>",
        esc(id),
        esc(own),
        esc(node),
        esc(own)
    )
}

/// Deletes `node`.
pub fn delete_iq(id: &str, own: &str, node: &str) -> String {
    format!(
        "<iq type='set' id='{}' to='{}'><pubsub xmlns='http://jabber.org/protocol/pubsub#owner'><delete node='{}'/></pubsub></iq>",
        esc(id),
        esc(own),
        esc(node)
    )
}

/// Lists our PEP nodes.
pub fn items_iq(id: &str, own: &str) -> String {
    format!(
        "<iq type='get' id='{}' to='{}'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>",
        esc(id),
        esc(own)
    )
}
