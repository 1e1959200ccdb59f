//! `migrate-db`: a deployment moved from its SQLite file onto PostgreSQL keeps every
//! device's node and secret (clients from 0.40 on never register again, so a changed one
//! would never get a push again), and pushes keep arriving.
//!
//! The tests that need a PostgreSQL server run on the PostgreSQL pass of scripts/test.sh
//! (`UWPX_TEST_PG` set) and return early otherwise. The refusals that are found before
//! any connection (a missing or foreign file, no `db.url`) and an unreachable target run
//! on every pass.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::util::db::{fresh_pg_database, pg_admin};
use crate::util::fake_xmpp::*;
use crate::util::*;

/// The client's own bytes (as in registration.rs; uwpx-protocol.md §14), for the device
/// `DEVICE`; [`for_device`] gives them to other devices.
const SET_ACCOUNTS_V2: &[u8] = b"{\r\n  \"version\": 2,\r\n  \"action\": \"set_push_accounts\",\r\n  \"device_id\": \"5486bd868050a620141f4e81c9f1d2c67ab0de27e5e26d218ca41c9394ee806b\",\r\n  \"accounts\": [\r\n    {\r\n      \"account_id\": \"e5397e96c6ff4d629ab9f203eec3ff17c777b2127cf1b41005e54877487ba982\"\r\n    },\r\n    {\r\n      \"account_id\": \"98d0e1085fc483d8371c8cde438fed253918a4ceae30a527da34c3dca4918e62\"\r\n    }\r\n  ]\r\n}\0";
const SET_ACCOUNTS_V1_ID: &[u8] = b"{\r\n  \"version\": 1,\r\n  \"action\": \"set_push_accounts\",\r\n  \"device_id\": \"5486bd868050a620141f4e81c9f1d2c67ab0de27e5e26d218ca41c9394ee806b\",\r\n  \"accounts\": [\r\n    {\r\n      \"account_id\": \"e5397e96c6ff4d629ab9f203eec3ff17c777b2127cf1b41005e54877487ba982\"\r\n    }\r\n  ]\r\n}\0";
const SET_ACCOUNTS_V1_JID: &[u8] = b"{\r\n  \"version\": 1,\r\n  \"action\": \"set_push_accounts\",\r\n  \"device_id\": \"5486bd868050a620141f4e81c9f1d2c67ab0de27e5e26d218ca41c9394ee806b\",\r\n  \"accounts\": [\r\n    {\r\n      \"bare_jid\": \"someClient@xmpp.uwpx.org\"\r\n    }\r\n  ]\r\n}\0";

const ID1: &str = "e5397e96c6ff4d629ab9f203eec3ff17c777b2127cf1b41005e54877487ba982";
const ID2: &str = "98d0e1085fc483d8371c8cde438fed253918a4ceae30a527da34c3dca4918e62";
const DEV_V1_ID: &str = "0b1d0b1d0b1d0b1d0b1d0b1d0b1d0b1d0b1d0b1d0b1d0b1d0b1d0b1d0b1d0b1d";
const DEV_V1_JID: &str = "0ba70ba70ba70ba70ba70ba70ba70ba70ba70ba70ba70ba70ba70ba70ba70ba7";

/// A request vector with `DEVICE` replaced by `device`.
fn for_device(bytes: &[u8], device: &str) -> Vec<u8> {
    String::from_utf8(bytes.to_vec())
        .unwrap()
        .replace(DEVICE, device)
        .into_bytes()
}

/// Forces SQLite whatever the pass: the PostgreSQL pass's default is a database there.
fn on_sqlite() -> Value {
    json!({"db": {"url": null, "path": "push.db", "synchronous": "normal"}})
}

/// Points the server's configuration at the PostgreSQL database `url`.
fn point_at(server: &Server, url: &str) {
    let mut config = server.config_value();
    config["db"] = json!({ "url": url });
    std::fs::write(&server.config, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
}

/// `migrate-db FILE --config CONFIG`: exit code, stdout, stderr.
fn migrate_db(file: &Path, config: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(binary())
        .arg("migrate-db")
        .arg(file)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every stored value, timestamps included, in a form both backends print the same.
fn full_dump(db: &mut Db) -> Vec<String> {
    let mut out = db.rows(
        "SELECT 'device ' || device_id || ' ' || channel_uri || ' ' || CAST(version AS TEXT) || ' '
                || coalesce(account_form, '-') || ' ' || CAST(created_at AS TEXT) || ' '
                || CAST(updated_at AS TEXT) || ' ' || CAST(last_seen_at AS TEXT)
         FROM devices ORDER BY device_id",
    );
    out.extend(db.rows(
        "SELECT 'account ' || device_id || ' ' || account_key || ' ' || coalesce(domain, '-') || ' '
                || node || ' ' || secret || ' ' || CAST(created_at AS TEXT)
         FROM accounts ORDER BY device_id, account_key",
    ));
    out.extend(db.rows("SELECT 'removed ' || node FROM removed_nodes ORDER BY node"));
    out.extend(db.rows(
        "SELECT 'token ' || access_token || ' ' || token_type || ' ' || CAST(expires_at AS TEXT)
         FROM wns_token",
    ));
    out.extend(
        db.rows(
            "SELECT 'setting ' || key || ' ' || CAST(value AS TEXT) FROM settings ORDER BY key",
        ),
    );
    out
}

fn sha256_of(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// Registers a device on the fake WNS channel `name` with one request vector; returns
/// the answer's (key, node, secret) list.
fn register(
    server: &Server,
    wns: &WnsFixture,
    version: u8,
    device: &str,
    name: &str,
    accounts: &[u8],
    key: &str,
) -> Vec<(String, String, String)> {
    let c = server.client();
    let answer = c.send(&newtonsoft(&set_channel(
        version,
        device,
        &wns.fake.channel_uri(name),
    )));
    assert_eq!(answer["status"], 1, "{answer}");
    let answer = c.send(accounts);
    assert_eq!(answer["version"], u64::from(version));
    assert_eq!(answer["push_bare_jid"], COMPONENT_JID);
    answer["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            assert_eq!(a["success"], true, "{answer}");
            (
                a[key].as_str().unwrap().to_owned(),
                a["node"].as_str().unwrap().to_owned(),
                a["secret"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn publish(conn: &mut XmppConn, id: &str, from: &str, node: &str, secret: &str) -> String {
    conn.send(&prosody_publish(id, from, node, Some(secret), 1));
    verdict(&conn.reply_to(id))
}

/// The body the fake WNS received on `channel` as its `n`th request.
fn body(wns: &WnsFixture, channel: &str, n: usize) -> String {
    let got = wns.fake.wait_for(channel, n, Duration::from_secs(10));
    assert!(got.len() >= n, "{channel}: {} requests", got.len());
    String::from_utf8(got[n - 1].body.clone()).unwrap()
}

#[test]
fn a_migrated_deployment_keeps_every_node_and_secret_and_its_pushes_arrive() {
    let Some(admin) = pg_admin() else { return };
    let wns = WnsFixture::start();
    let xmpp = FakeXmpp::start();
    let mut config = wns.config(json!({
        "xmpp": {"component": {"jid": COMPONENT_JID, "secret": COMPONENT_SECRET, "host": "127.0.0.1", "port": xmpp.port}},
        "push": {"min_interval_ms": 0},
    }));
    merge(&mut config, &on_sqlite());
    let mut server = Server::start(Setup {
        extra: config,
        ..Setup::default()
    });
    assert!(server.log_shows("sqlite "), "{}", server.log_text());
    let mut conn = xmpp.accept(Duration::from_secs(10));

    // One device of each client generation, with the clients' own bytes.
    let v2 = register(
        &server,
        &wns,
        2,
        DEVICE,
        "v2",
        SET_ACCOUNTS_V2,
        "account_id",
    );
    let v1_id = register(
        &server,
        &wns,
        1,
        DEV_V1_ID,
        "v1id",
        &for_device(SET_ACCOUNTS_V1_ID, DEV_V1_ID),
        "account_id",
    );
    let v1_jid = register(
        &server,
        &wns,
        1,
        DEV_V1_JID,
        "v1jid",
        &for_device(SET_ACCOUNTS_V1_JID, DEV_V1_JID),
        "bare_jid",
    );
    assert_eq!((v2.len(), v1_id.len(), v1_jid.len()), (2, 1, 1));
    // One push before the move: the WNS token it fetches is stored and must move too.
    assert_eq!(
        publish(&mut conn, "before", "localhost", &v2[0].1, &v2[0].2),
        "result"
    );
    body(&wns, "v2", 1);
    assert_eq!(wns.fake.token_requests(), 1);
    drop(conn);
    assert_eq!(server.stop(), Some(0));

    // What the SQLite file holds, plus a removed-node entry and the setting, so every
    // table has something to carry over.
    let sqlite = server.db_path();
    {
        let mut db = Db::Sqlite(rusqlite::Connection::open(&sqlite).unwrap());
        db.exec(
            "INSERT INTO removed_nodes (node) VALUES ('removed-node-1');
             UPDATE settings SET value = 1 WHERE key = 'track_removed_nodes'",
        );
    }
    let before = full_dump(&mut Db::Sqlite(
        rusqlite::Connection::open(&sqlite).unwrap(),
    ));
    assert_eq!(
        before.iter().filter(|r| r.starts_with("device ")).count(),
        3
    );
    assert_eq!(
        before.iter().filter(|r| r.starts_with("account ")).count(),
        4
    );
    assert!(before.iter().any(|r| r.starts_with("token ")), "{before:?}");
    let dump_before = server.dump();
    let file_before = sha256_of(&sqlite);
    let side_files =
        || ["-wal", "-shm"].map(|s| Path::new(&format!("{}{s}", sqlite.display())).exists());
    assert_eq!(side_files(), [false, false], "a clean stop leaves no WAL");

    let url = fresh_pg_database(&admin);
    point_at(&server, &url);
    let (code, out, err) = migrate_db(&sqlite, &server.config);
    assert_eq!(code, Some(0), "{out}\n{err}");
    for line in [
        "(schema 3) to postgresql 127.0.0.1:",
        "devices:             3\n",
        "accounts:            4\n",
        "removed nodes:       1\n",
        "WNS token:           copied (expires in ",
        "track_removed_nodes: on\n",
    ] {
        assert!(out.contains(line), "{line:?} missing in:\n{out}");
    }
    assert_eq!(sha256_of(&sqlite), file_before, "the SQLite file changed");
    // Nothing was created beside it either: files owned by the user who ran migrate-db
    // would keep a server running as another user from opening the database again.
    assert_eq!(
        side_files(),
        [false, false],
        "-wal/-shm files left beside the file"
    );
    assert!(!err.contains("warning"), "{err}");
    let mut pg = server.db();
    assert!(matches!(pg, Db::Pg(_)));
    assert_eq!(
        full_dump(&mut pg),
        before,
        "PostgreSQL holds something else"
    );

    // The server on PostgreSQL: same nodes and secrets, and every generation's push
    // arrives with its payload, on the migrated token (no new token request).
    server.launch();
    assert!(
        server.log_shows("postgresql 127.0.0.1:"),
        "{}",
        server.log_text()
    );
    let mut conn = xmpp.accept(Duration::from_secs(10));
    assert_eq!(server.dump(), dump_before);
    assert_eq!(
        publish(&mut conn, "a1", "localhost", &v2[1].1, &v2[1].2),
        "result"
    );
    assert_eq!(
        body(&wns, "v2", 2),
        format!(
            r#"{{"account_id":"{ID2}","action":"push","message_count":1,"pending_subscription_count":0,"version":2}}"#
        )
    );
    assert_eq!(v1_id[0].0, ID1);
    assert_eq!(
        publish(&mut conn, "a2", "localhost", &v1_id[0].1, &v1_id[0].2),
        "result"
    );
    let xml = body(&wns, "v1id", 1);
    assert!(
        xml.starts_with("<notification xmlns=\"urn:xmpp:push:0\">")
            && xml.ends_with(&format!("<account id=\"{ID1}\"/></notification>")),
        "{xml}"
    );
    // A bare_jid account still only takes publishes from its JID's domain.
    assert_eq!(
        publish(&mut conn, "a3", "evil.org", &v1_jid[0].1, &v1_jid[0].2),
        "auth/forbidden"
    );
    assert_eq!(
        publish(&mut conn, "a4", "xmpp.uwpx.org", &v1_jid[0].1, &v1_jid[0].2),
        "result"
    );
    assert_eq!(
        body(&wns, "v1jid", 1),
        "You might have received new messages while you were away."
    );
    assert_eq!(
        publish(&mut conn, "a5", "localhost", &v2[0].1, "not-the-secret"),
        "auth/forbidden"
    );
    assert_eq!(
        wns.fake.token_requests(),
        1,
        "the stored token was not reused"
    );
    assert_eq!(server.dump(), dump_before);
}

#[test]
fn a_second_migration_into_a_filled_target_is_refused_and_changes_nothing() {
    let Some(admin) = pg_admin() else { return };
    let mut first = Server::start(Setup {
        extra: on_sqlite(),
        ..Setup::default()
    });
    let c = first.client();
    c.send(&newtonsoft(&set_channel(2, DEVICE, &channel(1))));
    nodes(&c.send(SET_ACCOUNTS_V2), "account_id");
    first.stop();
    let mut second = Server::start(Setup {
        extra: on_sqlite(),
        ..Setup::default()
    });
    let c = second.client();
    c.send(&newtonsoft(&set_channel(1, DEV_V1_ID, &channel(2))));
    nodes(
        &c.send(&for_device(SET_ACCOUNTS_V1_ID, DEV_V1_ID)),
        "account_id",
    );
    second.stop();

    let url = fresh_pg_database(&admin);
    point_at(&first, &url);
    let (code, out, err) = migrate_db(&first.db_path(), &first.config);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let mut pg = first.db();
    let filled = full_dump(&mut pg);

    // The same file again, and another deployment's file: both refused.
    for file in [first.db_path(), second.db_path()] {
        let hash = sha256_of(&file);
        let (code, out, err) = migrate_db(&file, &first.config);
        assert_eq!(code, Some(1), "{out}\n{err}");
        assert!(
            err.contains("already holds 1 device(s)") && err.contains("nothing was copied"),
            "{err}"
        );
        assert!(!out.contains("devices:"), "{out}");
        assert_eq!(full_dump(&mut pg), filled, "the target changed");
        assert_eq!(sha256_of(&file), hash, "the SQLite file changed");
    }
}

#[test]
fn a_file_a_server_still_writes_is_copied_as_one_snapshot_with_a_warning() {
    let Some(admin) = pg_admin() else { return };
    let server = Server::start(Setup {
        extra: on_sqlite(),
        ..Setup::default()
    });
    let c = server.client();
    c.send(&newtonsoft(&set_channel(2, DEVICE, &channel(1))));
    nodes(&c.send(SET_ACCOUNTS_V2), "account_id");
    let sqlite_dump = full_dump(&mut server.db());

    let dir = TempDir::new("mig-live");
    let config = dir.path().join("pg.json");
    let url = fresh_pg_database(&admin);
    std::fs::write(
        &config,
        json!({"xmpp": {"bare_jid": PUSH_JID}, "db": {"url": url}}).to_string(),
    )
    .unwrap();
    let (code, out, err) = migrate_db(&server.db_path(), &config);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        err.contains("warning: ") && err.contains("push.db-wal exists"),
        "{err}"
    );
    assert!(out.contains("devices:             1\n"), "{out}");
    let mut pg = Db::open(&json!({"db": {"url": url}}), dir.path());
    assert_eq!(full_dump(&mut pg), sqlite_dump);
    // The running server still works on its file.
    assert_eq!(
        c.send(&newtonsoft(&set_channel(2, DEVICE, &channel(2))))["status"],
        1
    );
}

#[test]
fn migrate_db_names_what_is_wrong_with_the_file_the_config_or_the_target() {
    let dir = TempDir::new("mig");
    // A closed port: the file is checked before any connection.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("pg.json");
    std::fs::write(
        &config,
        json!({"xmpp": {"bare_jid": PUSH_JID}, "db": {"url": format!("postgres://uwpx:pw@127.0.0.1:{closed}/uwpx")}})
            .to_string(),
    )
    .unwrap();
    let no_url = dir.path().join("sqlite.json");
    std::fs::write(&no_url, json!({"xmpp": {"bare_jid": PUSH_JID}}).to_string()).unwrap();

    let missing = dir.path().join("no-such.db");
    let text = dir.path().join("notes.txt");
    std::fs::write(
        &text,
        "not a database, but long enough to look like a header....",
    )
    .unwrap();
    let foreign = dir.path().join("foreign.db");
    rusqlite::Connection::open(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    let newer = dir.path().join("newer.db");
    rusqlite::Connection::open(&newer)
        .unwrap()
        .execute_batch(
            "CREATE TABLE devices (device_id TEXT); CREATE TABLE accounts (node TEXT);
             PRAGMA user_version = 99",
        )
        .unwrap();
    // A real (empty) database of ours, made by the binary itself.
    let ours = dir.path().join("push.db");
    let ours_config = dir.path().join("ours.json");
    std::fs::write(
        &ours_config,
        json!({"xmpp": {"bare_jid": PUSH_JID}, "db": {"path": "push.db"}}).to_string(),
    )
    .unwrap();
    let out = Command::new(binary())
        .args(["stats", "--config"])
        .arg(&ours_config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    let cases: [(&Path, &Path, String); 6] = [
        (
            &missing,
            &config,
            format!("{}: no such file", missing.display()),
        ),
        (
            &text,
            &config,
            "not a uwpx-push-server SQLite database (not an SQLite database)".into(),
        ),
        (
            &foreign,
            &config,
            "not a uwpx-push-server SQLite database (no devices and accounts tables".into(),
        ),
        (
            &newer,
            &config,
            "schema version 99 is newer than this server's (3)".into(),
        ),
        (&ours, &no_url, "the configuration has no db.url".into()),
        (&ours, &config, format!("127.0.0.1:{closed}")),
    ];
    for (file, config, expected) in cases {
        let hash = file.exists().then(|| sha256_of(file));
        let (code, out, err) = migrate_db(file, config);
        assert_eq!(code, Some(1), "{}: {out}\n{err}", file.display());
        assert!(err.contains(&expected), "{expected:?} not in {err:?}");
        assert!(out.is_empty(), "{out}");
        assert_eq!(file.exists().then(|| sha256_of(file)), hash);
    }
    assert!(!missing.exists(), "a missing file was created");
    let (code, _, err) = migrate_db(&ours, &config);
    assert_eq!(code, Some(1));
    assert!(err.to_lowercase().contains("connection refused"), "{err}");
    assert!(!err.contains(":pw@"), "password shown: {err}");
}
