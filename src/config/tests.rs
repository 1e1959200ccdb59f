use super::*;
use serde_json::json;

fn load(v: Value) -> Result<Config, ConfigError> {
    Config::from_value(&v, Path::new("/etc/uwpx"))
}

#[test]
fn the_seed_format_loads_with_defaults() {
    let c = load(json!({
        "wns": {"packet_id": "ms-app://s-1-15-2-1", "client_secret": "cs"},
        "xmpp": {"bare_jid": "push@xmpp.example.org", "password": "pw"},
        "tcp": {"port": 1997, "host": "127.0.0.1"},
        "db": {"path": "pushServer.db"}
    }))
    .unwrap();
    assert_eq!(c.tcp.addr, "127.0.0.1:1997".parse().unwrap());
    assert_eq!(c.db.path, PathBuf::from("/etc/uwpx/pushServer.db"));
    assert_eq!(c.tcp.read_timeout, Duration::from_secs(10));
    assert_eq!(c.tcp.max_connections, 1024);
    assert_eq!(c.limits.max_accounts, 32);
    assert!(c.wns.channel_hosts.allows("db5p.notify.windows.com"));
    let shown = format!("{c:?}");
    assert!(
        !shown.contains("\"cs\"") && !shown.contains("\"pw\""),
        "{shown}"
    );
}

#[test]
fn unknown_keys_are_named() {
    let e = load(json!({"xmpp": {"bare_jid": "a@b"}, "tcp": {"tls": {"cert": "x"}}})).unwrap_err();
    assert_eq!(e.to_string(), "configuration: unknown key `tcp.tls.cert`");
    let e = load(json!({"xmpp": {"bare_jid": "a@b"}, "nope": 1})).unwrap_err();
    assert_eq!(e.to_string(), "configuration: unknown key `nope`");
}

#[test]
fn bad_values_name_their_key() {
    for (doc, key) in [
        (json!({"xmpp": {}}), "xmpp.bare_jid"),
        (json!({"xmpp": {"bare_jid": "nojid"}}), "xmpp.bare_jid"),
        (
            json!({"xmpp": {"bare_jid": "a@b"}, "tcp": {"port": "1997"}}),
            "tcp.port",
        ),
        (
            json!({"xmpp": {"bare_jid": "a@b"}, "tcp": {"port": 70000}}),
            "tcp.port",
        ),
        (
            json!({"xmpp": {"bare_jid": "a@b"}, "db": {"synchronous": "off"}}),
            "db.synchronous",
        ),
        (
            json!({"xmpp": {"bare_jid": "a@b"}, "log": {"level": "loud"}}),
            "log.level",
        ),
        (
            json!({"xmpp": {"bare_jid": "a@b"}, "wns": {"packet_id": "x"}}),
            "wns.client_secret",
        ),
        (
            json!({"xmpp": {"bare_jid": "a@b"}, "wns": {"channel_hosts": []}}),
            "wns.channel_hosts",
        ),
        (
            json!({"xmpp": {"bare_jid": "a@b"}, "tcp": {"tls": {}}}),
            "tcp.tls.cert_path",
        ),
        (
            json!({"xmpp": {"bare_jid": "a@b"}, "tcp": {"tls": {"serverCertPath": "/nonexistent", "serverKeyPath": "/nonexistent"}}}),
            "tcp.tls.cert_path",
        ),
    ] {
        match load(doc) {
            Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key),
            other => panic!("{key}: {other:?}"),
        }
    }
}

#[test]
fn the_example_has_only_known_keys() {
    let example: Value =
        serde_json::from_str(include_str!("../../configuration.json.example")).unwrap();
    check_known_keys(example.as_object().unwrap(), "").unwrap();
}

/// The README's table is `keys::markdown_table()` verbatim. To update it after changing
/// `keys.rs`, run `scripts/readme-config-table.py` (it reruns this test with
/// `UWPX_WRITE_README=1`, which rewrites the table instead of comparing).
#[test]
fn the_readme_table_is_generated_from_keys() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let start = readme.find("| key | default | meaning |").unwrap();
    let end = start + readme[start..].find("\n\n").unwrap() + 1;
    let table = keys::markdown_table();
    if std::env::var_os("UWPX_WRITE_README").is_some() {
        let updated = format!("{}{table}{}", &readme[..start], &readme[end..]);
        std::fs::write(&path, updated).unwrap();
        return;
    }
    assert_eq!(
        readme[start..end],
        table,
        "README.md's configuration table is out of date: run scripts/readme-config-table.py"
    );
}

/// Every key in `keys::KEYS` is read by the loader (a section counts when a key inside
/// it is read), so no key is listed but ignored. Two documents cover both XMPP modes.
#[test]
fn every_listed_key_is_read_by_the_loader() {
    let cert = tempfile_pair();
    let client_mode = json!({
        "xmpp": {"bare_jid": "push@example.org", "password": "pw", "ca_file": cert.0},
        "wns": {"packet_id": "ms-app://s-1-15-2-1", "client_secret": "cs", "ca_file": cert.0},
        "tcp": {"tls": {"cert_path": cert.0, "key_path": cert.1}},
        "metrics": {"listen": "127.0.0.1:9090"},
        "log": {"file": "x.log"}
    });
    let component_mode = json!({
        "xmpp": {"bare_jid": "push@example.org",
                 "component": {"jid": "push.example.org", "secret": "s"}}
    });
    let mut read = std::collections::BTreeSet::new();
    for v in [client_mode, component_mode] {
        let map = v.as_object().unwrap();
        let doc = Doc::new(map, Path::new("/etc/uwpx"));
        Config::from_doc(&doc).unwrap();
        read.extend(doc.read_paths());
    }
    for k in keys::KEYS {
        let used = if k.is_section() {
            let prefix = format!("{}.", k.path());
            read.iter().any(|p| p.starts_with(&prefix))
        } else {
            read.contains(k.path())
        };
        assert!(used, "`{}` is listed in keys.rs but never read", k.path());
    }
}

/// A certificate and key in a temp dir of this process, shared by its tests. Nothing
/// removes it at exit (a static is never dropped), so each process first removes the
/// ones whose process is gone: one per test process under nextest would add up.
fn tempfile_pair() -> (String, String) {
    use std::sync::OnceLock;
    static PAIR: OnceLock<(String, String)> = OnceLock::new();
    PAIR.get_or_init(|| {
        const PREFIX: &str = "uwpx-config-test-";
        let tmp = std::env::temp_dir();
        for entry in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
                continue;
            };
            if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let dir = tmp.join(format!("{PREFIX}{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = test_pair();
        let c = dir.join("c.pem");
        let k = dir.join("k.pem");
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        (c.display().to_string(), k.display().to_string())
    })
    .clone()
}

/// A self-signed P-256 certificate and its PKCS#8 key.
fn test_pair() -> (Vec<u8>, Vec<u8>) {
    use openssl::{ec, hash, nid, pkey, x509};
    let group = ec::EcGroup::from_curve_name(nid::Nid::X9_62_PRIME256V1).unwrap();
    let key = pkey::PKey::from_ec_key(ec::EcKey::generate(&group).unwrap()).unwrap();
    let mut name = x509::X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "localhost").unwrap();
    let name = name.build();
    let mut b = x509::X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&openssl::asn1::Asn1Time::days_from_now(2).unwrap())
        .unwrap();
    b.sign(&key, hash::MessageDigest::sha256()).unwrap();
    (
        b.build().to_pem().unwrap(),
        key.private_key_to_pem_pkcs8().unwrap(),
    )
}

/// Issue 10 item 5: a section given as a string (or any non-object) was silently ignored
/// and the defaults used; it is refused, naming the key.
#[test]
fn a_section_of_the_wrong_type_is_refused() {
    for (doc, key, kind) in [
        (
            json!({"xmpp": {"bare_jid": "a@b.c"}, "tcp": "127.0.0.1:5000"}),
            "tcp",
            "a string",
        ),
        (
            json!({"xmpp": {"bare_jid": "a@b.c"}, "db": "/srv/mine.db"}),
            "db",
            "a string",
        ),
        (
            json!({"xmpp": {"bare_jid": "a@b.c"}, "tcp": {"tls": true}}),
            "tcp.tls",
            "a boolean",
        ),
        (
            json!({"xmpp": {"bare_jid": "a@b.c"}, "log": ["info"]}),
            "log",
            "an array",
        ),
        (json!({"xmpp": "push@example.org"}), "xmpp", "a string"),
    ] {
        let e = load(doc).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("configuration: `{key}` must be an object (a section of keys), not {kind}")
        );
    }
    // null still means "absent" for a section.
    load(json!({"xmpp": {"bare_jid": "a@b.c"}, "tcp": null})).unwrap();
}

/// Issue 10 item 6: two spellings of one key were accepted and the first taken; both are
/// now named and the file refused.
#[test]
fn two_spellings_of_one_key_are_refused_naming_both() {
    let e = load(json!({"xmpp": {"bare_jid": "a@b.c"}, "tcp": {"tls": {
        "cert_path": "a.crt", "serverCertPath": "b.crt", "key_path": "k"}}}))
    .unwrap_err();
    let shown = e.to_string();
    assert!(
        shown.contains("`tcp.tls.cert_path`") && shown.contains("`tcp.tls.serverCertPath`"),
        "{shown}"
    );
    assert!(matches!(e, ConfigError::TwoSpellings { .. }), "{e:?}");
    let e = load(json!({"xmpp": {"bare_jid": "a@b.c"}, "tcp": {"tls": {
        "cert_path": "a.crt", "server_key_path": "k", "serverKeyPath": "k"}}}))
    .unwrap_err();
    let shown = e.to_string();
    assert!(
        shown.contains("`tcp.tls.server_key_path`") && shown.contains("`tcp.tls.serverKeyPath`"),
        "{shown}"
    );
}

/// Issue 10 item 3: a certificate with someone else's key passed `check-config` and every
/// client handshake then failed; the pair is now proven with a handshake at load.
#[test]
fn a_key_that_does_not_belong_to_the_certificate_is_refused() {
    let (cert, _) = test_pair();
    let (_, other_key) = test_pair();
    let dir = std::env::temp_dir().join(format!("uwpx-pair-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("c.pem"), &cert).unwrap();
    std::fs::write(dir.join("k.pem"), &other_key).unwrap();
    let doc = json!({"xmpp": {"bare_jid": "a@b.c"},
                     "tcp": {"tls": {"cert_path": "c.pem", "key_path": "k.pem"}}});
    let e = Config::from_value(&doc, &dir).unwrap_err();
    let shown = e.to_string();
    assert!(
        shown.starts_with("configuration: `tcp.tls.key_path`")
            && shown.contains("the key does not belong to the certificate"),
        "{shown}"
    );
    // The matching pair loads.
    let (cert, key) = test_pair();
    std::fs::write(dir.join("c.pem"), &cert).unwrap();
    std::fs::write(dir.join("k.pem"), &key).unwrap();
    Config::from_value(&doc, &dir).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 10 item 13: `xmpp.password` beside `xmpp.component` was ignored without a word,
/// and the example's placeholder credentials passed. Both are now warnings.
#[test]
fn ignored_keys_and_placeholder_credentials_are_warned_about() {
    let c = load(json!({
        "xmpp": {"bare_jid": "push@example.org", "password": "pw", "host": "h",
                 "component": {"jid": "push.example.org", "secret": "a-long-random-component-secret"}},
        "wns": {"packet_id": "ms-app://s-1-15-2-0000000000-0000000000", "client_secret": "your-wns-client-secret"}
    }))
    .unwrap();
    for (key, text) in [
        ("xmpp.password", "is ignored: `xmpp.component` is set"),
        ("xmpp.host", "is ignored: `xmpp.component` is set"),
        ("xmpp.component.secret", "looks like a placeholder"),
        ("wns.packet_id", "looks like a placeholder"),
        ("wns.client_secret", "looks like a placeholder"),
    ] {
        let line = format!("configuration: `{key}` {text}");
        assert!(
            c.warnings.iter().any(|w| w.starts_with(&line)),
            "{line:?} not in {:#?}",
            c.warnings
        );
    }
    let c = load(json!({"xmpp": {"bare_jid": "push@example.org", "port": 5223}})).unwrap();
    assert_eq!(
        c.warnings,
        ["configuration: `xmpp.port` is ignored: client mode needs `xmpp.password`"]
    );
    // Real-looking values: no warning.
    let c = load(json!({
        "xmpp": {"bare_jid": "push@example.org", "password": "pw", "host": "h"},
        "wns": {"packet_id": "ms-app://s-1-15-2-2952823614-1846131063-3547917612",
                "client_secret": "Jk3Lq0vZ8xPc7RtY2wNb"}
    }))
    .unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}
