//! The XMPP thread's work per publish, part by part, without sockets: reading the
//! stanza (rxml + minidom tree), classifying it, looking its node up in SQLite, and
//! formatting the reply. For finding where the thread's CPU per push goes
//! (`scripts/bench-publish.sh` gives the whole).
//!
//! Run: `cargo bench --bench stanza` (options after `--`: `--count N`, default 100000;
//! `--devices N`, default 100000, registered devices for the node lookups, 0 for none;
//! `--fields 1`: read each publish into its fields with no tree, as the XMPP thread
//! does (classify and drop are then part of the read, and show 0);
//! `--cold 1`: before each publish, write over a 64 MiB buffer, so the parts run with
//! the CPU caches as another process leaves them between sparse pushes; then the
//! default count is 3000).

use std::io::Cursor;
use std::time::Instant;

use uwpx_push_server::config::Synchronous;
use uwpx_push_server::store::Store;
use uwpx_push_server::types::Node;
use uwpx_push_server::xmpp::publish::{Inbound, classify};
use uwpx_push_server::xmpp::reader::{Next, StanzaReader, StreamEvent};
use uwpx_push_server::xmpp::reply;

#[path = "common.rs"]
mod common;
#[path = "devices.rs"]
mod devices;

const NS: &str = "jabber:component:accept";

fn publish(id: usize) -> String {
    format!(
        "<iq id='{id}' to='push.localhost' from='localhost' type='set'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='{id:032x}'><item><notification xmlns='urn:xmpp:push:0'><x xmlns='jabber:x:data' type='form'><field var='FORM_TYPE' type='hidden'><value>urn:xmpp:push:summary</value></field><field var='message-count' type='text-single'><value>1</value></field><field var='pending-subscription-count' type='text-single'/><field var='last-message-sender' type='jid-single'/><field var='last-message-body' type='text-single'><value>New Message!</value></field></x></notification></item></publish><publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field><field var='secret'><value>s{id:040}</value></field></x></publish-options></pubsub></iq>"
    )
}

fn main() {
    let a = common::Args::parse(&["count", "cold", "devices", "fields"]);
    let fields = a.get("fields", 0u8) == 1;
    let devices: usize = a.get("devices", 100_000);
    let dir = std::env::temp_dir().join(format!("uwpx-bench-stanza-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("bench.db");
    let store = (devices > 0).then(|| {
        devices::populate(&db, devices, &|i| format!("https://localhost/d/{i}"));
        Store::open_sqlite(&db, Synchronous::Normal).unwrap()
    });
    let cold = a.get("cold", 0u8) == 1;
    let n: usize = a.get("count", if cold { 3000 } else { 100_000 });
    let mut sweep = if cold {
        vec![0u8; 64 << 20]
    } else {
        Vec::new()
    };
    let mut stream = String::from(
        "<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' id='x' from='push.localhost'>",
    );
    for i in 0..n {
        stream.push_str(&publish(i));
    }
    let bytes = stream.len();
    // Each part timed on its own, one publish at a time as the XMPP thread does.
    let mut reader = StanzaReader::new(Cursor::new(stream.into_bytes()));
    let (mut read, mut classified, mut dropped, mut replied) = Default::default();
    let mut looked_up = std::time::Duration::ZERO;
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut out = String::new();
    let mut count = 0;
    let mut with_tree = 0;
    loop {
        for b in sweep.iter_mut().step_by(64) {
            *b = b.wrapping_add(1);
        }
        std::hint::black_box(&sweep);
        let t0 = Instant::now();
        let (stanza, header) = if fields {
            match reader.next_inbound(NS) {
                Ok(Next::Publish(h, p)) => {
                    std::hint::black_box(&p);
                    (None, h)
                }
                Ok(Next::Event(StreamEvent::Open(_))) => continue,
                // The first stanza after the header always goes through rxml.
                Ok(Next::Event(StreamEvent::Stanza(e))) => {
                    with_tree += 1;
                    match classify(&e, NS) {
                        Inbound::Publish(h, p) => {
                            std::hint::black_box(&p);
                            (Some(e), h)
                        }
                        other => panic!("{other:?}"),
                    }
                }
                Ok(other) => panic!("{other:?}"),
                Err(_) => break,
            }
        } else {
            let stanza = match reader.next_event() {
                Ok(StreamEvent::Stanza(e)) => e,
                Ok(StreamEvent::Open(_)) => continue,
                _ => break,
            };
            let t1 = Instant::now();
            let header = match classify(&stanza, NS) {
                Inbound::Publish(h, p) => {
                    std::hint::black_box(&p);
                    h
                }
                other => panic!("{other:?}"),
            };
            classified += t1.elapsed();
            read += t1 - t0;
            (Some(stanza), header)
        };
        let t1 = Instant::now();
        if fields {
            read += t1 - t0;
        }
        if let Some(store) = &store {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let node = Node::parse(&devices::node(rng as usize % devices)).unwrap();
            let t = Instant::now();
            assert!(store.node_target(&node).unwrap().is_some());
            looked_up += t.elapsed();
        }
        let t2 = Instant::now();
        drop(stanza);
        let t3 = Instant::now();
        out.push_str(&reply::iq_reply(&header, reply::Reply::Result));
        if out.len() > 1 << 16 {
            out.clear();
        }
        let t4 = Instant::now();
        dropped += t3 - t2;
        replied += t4 - t3;
        count += 1;
    }
    assert_eq!(count, n);
    // The first stanza, and those that straddle two reads, go through rxml.
    assert!(
        with_tree <= 1 + n / 10,
        "{with_tree} publishes were read with a tree"
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    let per = |d: std::time::Duration| d.as_secs_f64() * 1e6 / n as f64;
    println!(
        "{n} publishes of {} bytes{}: read{} {:.2} µs ({:.0} MB/s), classify {:.2} µs, node lookup among {devices} devices {:.2} µs, drop the tree {:.2} µs, reply {:.2} µs per publish",
        bytes / n,
        if cold {
            ", caches evicted before each"
        } else {
            ""
        },
        if fields { " into fields (no tree)" } else { "" },
        per(read),
        bytes as f64 / read.as_secs_f64() / 1e6,
        per(classified),
        per(looked_up),
        per(dropped),
        per(replied)
    );
    if fields {
        println!(
            "{with_tree} of them went through rxml and a tree (the first, and those split between two reads)"
        );
    }
}
