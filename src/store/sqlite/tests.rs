use super::*;
use crate::store::AccountSpec;
use crate::types::{BareJid, ChannelHosts};
use std::time::Instant;

fn dev(s: &str) -> DeviceId {
    DeviceId::parse(s).unwrap()
}

fn uri(s: &str) -> ChannelUri {
    ChannelUri::parse(s, &ChannelHosts::new(vec!["notify.windows.com".into()])).unwrap()
}

#[test]
fn bare_jid_accounts_store_hash_and_domain_only() {
    let s = Sqlite::open_in_memory().unwrap();
    let d = dev("5486bd86");
    s.set_channel(
        &d,
        &uri("https://a.notify.windows.com/?t"),
        ProtocolVersion::V1,
        1,
    )
    .unwrap();
    let jid = BareJid::parse("someClient@XMPP.uwpx.org").unwrap();
    let key = AccountKey::derive(&d, &jid);
    let spec = AccountSpec {
        key: key.clone(),
        domain: Some(jid.domain()),
    };
    s.set_accounts(
        &d,
        ProtocolVersion::V1,
        Some(AccountForm::BareJid),
        &[spec],
        2,
    )
    .unwrap()
    .unwrap();
    let conn = s.lock();
    let (k, domain): (String, String) = conn
        .query_row("SELECT account_key, domain FROM accounts", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(
        (k.as_str(), domain.as_str()),
        (key.as_str(), "xmpp.uwpx.org")
    );
}

/// A database file in a directory of its own, removed when dropped.
struct TempDb(std::path::PathBuf);

impl TempDb {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("uwpx-sqlite-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// One more connection pair on the file, as another process would have.
    fn open(&self) -> Sqlite {
        Sqlite::open_file(&self.0.join("t.db"), Synchronous::Normal, 1 << 20, 1 << 20).unwrap()
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Registers device `id` with one account and returns its node.
fn register(s: &Sqlite, id: &str) -> Node {
    let d = dev(id);
    s.set_channel(
        &d,
        &uri("https://a.notify.windows.com/?t"),
        ProtocolVersion::V2,
        1,
    )
    .unwrap();
    let spec = AccountSpec {
        key: AccountKey::parse("a").unwrap(),
        domain: None,
    };
    let records = s
        .set_accounts(&d, ProtocolVersion::V2, None, &[spec], 2)
        .unwrap()
        .unwrap();
    records[0].node.clone()
}

fn holds_snapshot(s: &Sqlite) -> bool {
    s.read.as_ref().unwrap().lock().unwrap().holds()
}

#[test]
fn a_node_registered_in_this_process_is_found_by_the_next_lookup_despite_the_held_snapshot() {
    let db = TempDb::new("own-write");
    let s = db.open();
    let first = register(&s, "d1");
    assert!(s.node_target(&first).unwrap().is_some());
    assert!(holds_snapshot(&s), "lookups hold a read snapshot");
    // The writer told this registration "stored": the very next lookup sees it.
    let second = register(&s, "d2");
    let t = s
        .node_target(&second)
        .unwrap()
        .expect("registered node found");
    assert_eq!(t.device_id.as_str(), "d2");
    // A removal, likewise.
    assert!(s.remove_device(&dev("d1")).unwrap());
    assert!(s.node_target(&first).unwrap().is_none());
}

#[test]
fn another_process_write_shows_once_the_snapshot_is_max_age_old() {
    let db = TempDb::new("other-process");
    let (a, b) = (db.open(), db.open());
    let first = register(&a, "d1");
    let started = Instant::now();
    assert!(a.node_target(&first).unwrap().is_some());
    let second = register(&b, "d2");
    let stale = a.node_target(&second).unwrap();
    // Within the bound the old snapshot may still answer (checked only when this
    // thread was not held up for most of it).
    if started.elapsed() < snapshot::MAX_AGE / 2 {
        assert!(stale.is_none(), "the held snapshot answered");
    }
    std::thread::sleep(snapshot::MAX_AGE);
    assert!(a.node_target(&second).unwrap().is_some());
}

#[test]
fn the_timer_lets_go_of_a_snapshot_once_it_is_stale_and_a_stream_end_at_once() {
    let db = TempDb::new("release");
    let s = db.open();
    let node = register(&s, "d1");
    let started = Instant::now();
    s.node_target(&node).unwrap();
    s.end_stale_read();
    if started.elapsed() < snapshot::MAX_AGE / 2 {
        assert!(holds_snapshot(&s), "a fresh snapshot is kept");
    }
    std::thread::sleep(snapshot::MAX_AGE);
    s.end_stale_read();
    assert!(!holds_snapshot(&s));
    s.node_target(&node).unwrap();
    assert!(holds_snapshot(&s));
    s.end_read();
    assert!(!holds_snapshot(&s));
    // With no snapshot held, the WAL can be checkpointed whole.
    let (busy, _, _): (i64, i64, i64) = s
        .lock()
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!(busy, 0);
}
