//! Client mode's PEP nodes on the push account: one per registered account, created
//! with `publish_model=open` so users' servers can publish, `max_items=1`, payloads and
//! notifications on, and subscribed by the push account itself.
//!
//! Registration threads ask for nodes through [`Pep::create_all`], which hands the request
//! to the `xmpp-io` thread (the only writer of the stream) and waits for the outcome
//! with a timeout; they never touch the socket. Deletions need no waiting: the store
//! keeps a durable list of removed nodes (a trigger on `accounts`), which `xmpp-io`
//! works off.
//!
//! At every (re)connect [`reconcile`] makes the push account match the database.
//!
//! Threads: `reg-conn-*` call [`Pep::create_all`]; `xmpp-io` builds and sends the
//! stanzas and runs the reconciliation.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, bounded};

use super::reader::{ReadError, StanzaReader, StreamEvent};
use super::reply::esc;
use super::{LinkStatus, XmppError, publish};
use crate::net::Socket;
use crate::store::Store;
use crate::types::Node;

/// A request for `xmpp-io`.
pub struct PepRequest {
    /// The node to create and subscribe to.
    pub node: Node,
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
    pub fn create_all(&self, nodes: &[&Node]) -> Vec<Result<(), String>> {
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
                    node: (*node).clone(),
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

/// Client mode, at every (re)connect: every node in the database exists on the push
/// account and is subscribed; every node on the account that is not in the database is
/// deleted. Requests are pipelined in windows.
pub fn reconcile<S: Socket>(
    reader: &mut StanzaReader<S>,
    own: &str,
    store: &Store,
) -> Result<(), XmppError> {
    let listing = roundtrip(
        reader,
        vec![("reconcile-items".into(), items_iq("reconcile-items", own))],
    )?;
    let on_server: HashSet<String> = listing
        .into_values()
        .filter_map(Result::ok)
        .flat_map(|e| {
            e.get_child("query", publish::NS_DISCO_ITEMS)
                .map(|q| {
                    q.children()
                        .filter_map(|i| i.attr("node").map(str::to_owned))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        })
        .collect();
    let in_db: HashSet<String> = store
        .all_nodes()
        .map_err(|e| XmppError::Protocol(format!("store: {e}")))?
        .into_iter()
        .map(|n| n.as_str().to_owned())
        .collect();
    let missing: Vec<&String> = in_db.difference(&on_server).collect();
    let extra: Vec<&String> = on_server.difference(&in_db).collect();
    let creates = missing
        .iter()
        .enumerate()
        .map(|(i, n)| (format!("rc-c-{i}"), create_iq(&format!("rc-c-{i}"), own, n)))
        .collect();
    let failed_creates = roundtrip(reader, creates)?
        .into_iter()
        .filter(|(_, r)| matches!(r, Err(e) if e != "conflict"))
        .count();
    let subscribes = in_db
        .iter()
        .enumerate()
        .map(|(i, n)| {
            (
                format!("rc-s-{i}"),
                subscribe_iq(&format!("rc-s-{i}"), own, n),
            )
        })
        .collect();
    let failed_subscribes = roundtrip(reader, subscribes)?
        .into_iter()
        .filter(|(_, r)| r.is_err())
        .count();
    let deletes = extra
        .iter()
        .enumerate()
        .map(|(i, n)| (format!("rc-d-{i}"), delete_iq(&format!("rc-d-{i}"), own, n)))
        .collect();
    roundtrip(reader, deletes)?;
    let gone: Vec<Node> = extra.iter().filter_map(|n| Node::parse(n).ok()).collect();
    let _ = store.forget_removed_nodes(&gone);
    log::info!(
        "xmpp: reconciled PEP nodes: {} in the database, {} created, {} deleted, {} failures",
        in_db.len(),
        missing.len(),
        extra.len(),
        failed_creates + failed_subscribes
    );
    Ok(())
}

/// Sends IQs (in windows of 100) and collects each answer: the result element, or the
/// error condition. Other stanzas arriving meanwhile are dropped.
fn roundtrip<S: Socket>(
    reader: &mut StanzaReader<S>,
    requests: Vec<(String, String)>,
) -> Result<HashMap<String, Result<minidom::Element, String>>, XmppError> {
    let mut answers = HashMap::new();
    for window in requests.chunks(100) {
        let mut waiting: HashSet<&str> = window.iter().map(|(id, _)| id.as_str()).collect();
        let batch: String = window.iter().map(|(_, s)| s.as_str()).collect();
        reader.get_mut().write_all(batch.as_bytes())?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !waiting.is_empty() {
            if Instant::now() > deadline {
                return Err(XmppError::Protocol(
                    "the server did not answer our PEP requests".into(),
                ));
            }
            match reader.next_event() {
                Ok(StreamEvent::Stanza(e)) if e.name() == "iq" => {
                    let Some(id) = e
                        .attr("id")
                        .filter(|i| waiting.contains(i))
                        .map(str::to_owned)
                    else {
                        continue;
                    };
                    waiting.remove(id.as_str());
                    let result = if e.attr("type") == Some("result") {
                        Ok(e)
                    } else {
                        Err(e
                            .children()
                            .find(|c| c.name() == "error")
                            .and_then(|er| er.children().next())
                            .map_or_else(|| "error".to_owned(), |c| c.name().to_owned()))
                    };
                    answers.insert(id, result);
                }
                Ok(StreamEvent::Stanza(_)) | Err(ReadError::Idle) => {}
                Ok(_) | Err(ReadError::Eof) => {
                    return Err(XmppError::Protocol(
                        "stream ended during reconciliation".into(),
                    ));
                }
                Err(ReadError::Io(e)) => return Err(XmppError::Io(e)),
                Err(e) => return Err(XmppError::Protocol(format!("{e:?}"))),
            }
        }
    }
    Ok(answers)
}
