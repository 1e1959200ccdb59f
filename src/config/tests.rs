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
fn every_key_is_in_the_readme_and_the_example() {
    let readme = include_str!("../../README.md");
    let example: Value =
        serde_json::from_str(include_str!("../../configuration.json.example")).unwrap();
    check_known_keys(example.as_object().unwrap(), "").unwrap();
    for k in keys::KEYS {
        assert!(
            readme.contains(&format!("`{}`", k.path)),
            "README lacks `{}`",
            k.path
        );
    }
}
