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
use minidom::Element;
use xmpp_parsers::data_forms::{DataForm, DataFormType, Field, FieldType};
use xmpp_parsers::disco::{DiscoItemsQuery, DiscoItemsResult};
use xmpp_parsers::iq::Iq;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::ns;
use xmpp_parsers::pubsub::pubsub::{Configure, Create, Subscribe};
use xmpp_parsers::pubsub::{NodeName, Owner, PubSub, owner};

use super::reader::{ReadError, StanzaReader, StreamEvent};
use super::reply::error_condition;
use super::{LinkStatus, XmppError};
use crate::net::{Socket, Wake};
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
    /// Wakes the I/O thread once a request is in its queue.
    wake: Arc<Wake>,
    status: Arc<LinkStatus>,
    timeout: Duration,
}

impl Pep {
    /// A handle sending to the I/O thread's queue.
    pub fn new(
        tx: Sender<PepRequest>,
        wake: Arc<Wake>,
        status: Arc<LinkStatus>,
        timeout: Duration,
    ) -> Self {
        Self {
            tx,
            wake,
            status,
            timeout,
        }
    }

    /// Creates and subscribes each node, all requests in flight at once, within one
    /// timeout in total; per node, `Err` says why not (that account is then answered
    /// with `success: false`).
    pub fn create_all(&self, nodes: &[&Node]) -> Vec<Result<(), String>> {
        let results = self.try_create_all(nodes);
        let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        if let Some(first) = failed.first() {
            log::warn!(
                "xmpp: {} of {} new PEP nodes not created: {first}",
                failed.len(),
                results.len()
            );
        }
        results
    }

    fn try_create_all(&self, nodes: &[&Node]) -> Vec<Result<(), String>> {
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
        self.wake.wake();
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
    let form = DataForm::new(
        DataFormType::Submit,
        ns::PUBSUB_CONFIGURE,
        vec![
            Field::new("pubsub#publish_model", FieldType::ListSingle).with_value("open"),
            Field::new("pubsub#access_model", FieldType::ListSingle).with_value("whitelist"),
            Field::text_single("pubsub#max_items", "1"),
            Field::new("pubsub#deliver_payloads", FieldType::Boolean).with_value("1"),
            Field::new("pubsub#deliver_notifications", FieldType::Boolean).with_value("1"),
        ],
    );
    let create = PubSub::Create {
        create: Create {
            node: Some(NodeName(node.to_owned())),
        },
        configure: Some(Configure { form: Some(form) }),
    };
    to_own(Iq::from_set(id, create), own)
}

/// Subscribes our bare JID to `node`.
pub fn subscribe_iq(id: &str, own: &str, node: &str) -> String {
    let Ok(jid) = Jid::new(own) else {
        return String::new();
    };
    let subscribe = PubSub::Subscribe {
        subscribe: Some(Subscribe {
            jid,
            node: Some(NodeName(node.to_owned())),
        }),
        options: None,
    };
    to_own(Iq::from_set(id, subscribe), own)
}

/// Deletes `node`.
pub fn delete_iq(id: &str, own: &str, node: &str) -> String {
    let delete = Owner {
        payload: owner::Payload::Delete {
            node: NodeName(node.to_owned()),
            redirect_uri: None,
        },
    };
    to_own(Iq::from_set(id, delete), own)
}

/// Lists our PEP nodes.
pub fn items_iq(id: &str, own: &str) -> String {
    let query = DiscoItemsQuery {
        node: None,
        rsm: None,
    };
    to_own(Iq::from_get(id, query), own)
}

/// Addresses `iq` to our own bare JID (`own` is the validated `xmpp.bare_jid`; if it
/// did not parse, the IQ goes without `to`, which the server also reads as our own
/// account) and serialises it.
fn to_own(iq: Iq, own: &str) -> String {
    let iq = match Jid::new(own) {
        Ok(jid) => iq.with_to(jid),
        Err(_) => iq,
    };
    String::from(&Element::from(iq))
}

/// Most stanzas [`reconcile`] holds for the session; past this they are dropped, with a
/// warning. Events are small (about 1 KiB); each is capped at the reader's 64 KiB.
pub const MAX_HELD: usize = 4096;

/// Client mode, at every (re)connect: every node in the database exists on the push
/// account and is subscribed; every node on the account that is not in the database is
/// deleted. Requests are pipelined in windows.
///
/// Presence is already sent, so pushes (pubsub events) and server requests (pings) can
/// arrive meanwhile. They are not ours to answer here: they are held, in arrival
/// order, and returned for the session to handle first.
pub fn reconcile<S: Socket>(
    reader: &mut StanzaReader<S>,
    own: &str,
    store: &Store,
) -> Result<Vec<Element>, XmppError> {
    let mut held = Held::default();
    let listing = roundtrip(
        reader,
        vec![("reconcile-items".into(), items_iq("reconcile-items", own))],
        &mut held,
    )?;
    let on_server: HashSet<String> = listing
        .into_values()
        .filter_map(Result::ok)
        .filter_map(|iq| iq.get_child("query", ns::DISCO_ITEMS).cloned())
        .filter_map(|q| DiscoItemsResult::try_from(q).ok())
        .flat_map(|r| r.items.into_iter().filter_map(|i| i.node))
        .collect();
    let in_db: HashSet<String> = store
        .all_nodes()
        .map_err(|e| XmppError::Protocol(format!("store: {e}")))?
        .into_iter()
        .map(|n| n.as_str().to_owned())
        .collect();
    let missing: Vec<&String> = in_db.difference(&on_server).collect();
    let extra: Vec<&String> = on_server.difference(&in_db).collect();
    log::info!(
        "xmpp: reconciling PEP nodes: {} in the database, {} on the server",
        in_db.len(),
        on_server.len()
    );
    let creates = missing
        .iter()
        .enumerate()
        .map(|(i, n)| (format!("rc-c-{i}"), create_iq(&format!("rc-c-{i}"), own, n)))
        .collect();
    let failed_creates = roundtrip(reader, creates, &mut held)?
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
    let failed_subscribes = roundtrip(reader, subscribes, &mut held)?
        .into_iter()
        .filter(|(_, r)| r.is_err())
        .count();
    let deletes = extra
        .iter()
        .enumerate()
        .map(|(i, n)| (format!("rc-d-{i}"), delete_iq(&format!("rc-d-{i}"), own, n)))
        .collect();
    roundtrip(reader, deletes, &mut held)?;
    let gone: Vec<Node> = extra.iter().filter_map(|n| Node::parse(n).ok()).collect();
    let _ = store.forget_removed_nodes(&gone);
    if held.dropped > 0 {
        log::warn!(
            "xmpp: {} stanzas arrived during the reconciliation beyond the {MAX_HELD} held; dropped",
            held.dropped
        );
    }
    log::info!(
        "xmpp: reconciled PEP nodes: {} in the database, {} created, {} deleted, {} failures, {} stanzas held for the session",
        in_db.len(),
        missing.len(),
        extra.len(),
        failed_creates + failed_subscribes,
        held.stanzas.len()
    );
    Ok(held.stanzas)
}

/// Stanzas that arrived during the reconciliation and are not its answers.
#[derive(Default)]
struct Held {
    stanzas: Vec<Element>,
    dropped: usize,
}

impl Held {
    fn push(&mut self, e: Element) {
        if self.stanzas.len() < MAX_HELD {
            self.stanzas.push(e);
        } else {
            self.dropped += 1;
        }
    }
}

/// Sends IQs (in windows of 100) and collects each answer: the result element, or the
/// error condition. Other stanzas arriving meanwhile go to `held`.
fn roundtrip<S: Socket>(
    reader: &mut StanzaReader<S>,
    requests: Vec<(String, String)>,
    held: &mut Held,
) -> Result<HashMap<String, Result<Element, String>>, XmppError> {
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
                Ok(StreamEvent::Stanza(e)) => {
                    let ours = e.name() == "iq"
                        && matches!(e.attr("type"), Some("result" | "error"))
                        && e.attr("id").is_some_and(|i| waiting.contains(i));
                    if !ours {
                        held.push(e);
                        continue;
                    }
                    let id = e.attr("id").unwrap_or_default().to_owned();
                    waiting.remove(id.as_str());
                    let result = if e.attr("type") == Some("result") {
                        Ok(e)
                    } else {
                        Err(error_condition(&e))
                    };
                    answers.insert(id, result);
                }
                Err(ReadError::Idle) => {}
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

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    use super::*;

    #[test]
    fn node_creation_asks_for_the_push_configuration() {
        let iq: Element = create_iq("c1", "push@example.org", "n1").parse().unwrap();
        let Ok(Iq::Set { to, payload, .. }) = Iq::try_from(iq) else {
            panic!("not an IQ set");
        };
        assert_eq!(
            to.map(|j| j.to_string()).as_deref(),
            Some("push@example.org")
        );
        let Ok(PubSub::Create { create, configure }) = PubSub::try_from(payload) else {
            panic!("not a create");
        };
        assert_eq!(create.node, Some(NodeName("n1".into())));
        let form = configure.and_then(|c| c.form).unwrap();
        assert_eq!(form.form_type(), Some(ns::PUBSUB_CONFIGURE));
        let value = |var: &str| {
            form.fields
                .iter()
                .find(|f| f.var.as_deref() == Some(var))
                .map(|f| f.values.clone())
        };
        assert_eq!(value("pubsub#publish_model"), Some(vec!["open".to_owned()]));
        assert_eq!(value("pubsub#max_items"), Some(vec!["1".to_owned()]));
    }

    /// Reads from `s` until `needle` has been seen.
    fn read_until(s: &mut TcpStream, needle: &str) {
        let mut seen = String::new();
        let mut buf = [0u8; 4096];
        while !seen.contains(needle) {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "closed before {needle}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }

    /// Issue 10 item 10: an event (and a server ping) arriving during the
    /// reconciliation is handed back in order, not dropped.
    #[test]
    fn stanzas_arriving_during_the_reconciliation_are_handed_back() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>").unwrap();
            read_until(&mut s, "reconcile-items");
            s.write_all(b"<message from='push@example.org' type='headline'><event xmlns='http://jabber.org/protocol/pubsub#event'><items node='n1'><item id='i1'/></items></event></message><iq type='get' id='srv-ping' from='example.org'><ping xmlns='urn:xmpp:ping'/></iq><iq type='result' id='reconcile-items'><query xmlns='http://jabber.org/protocol/disco#items'><item jid='push@example.org' node='stale'/></query></iq>").unwrap();
            read_until(&mut s, "rc-d-0");
            s.write_all(b"<iq type='result' id='rc-d-0'/>").unwrap();
            s
        });
        let mut reader = StanzaReader::new(TcpStream::connect(addr).unwrap());
        assert!(matches!(reader.next_event(), Ok(StreamEvent::Open(_))));
        let store = Store::open_in_memory().unwrap();
        let held = reconcile(&mut reader, "push@example.org", &store).unwrap();
        let names: Vec<&str> = held.iter().map(Element::name).collect();
        assert_eq!(names, ["message", "iq"]);
        assert_eq!(held[1].attr("id"), Some("srv-ping"));
        drop(server.join().unwrap());
    }
}
