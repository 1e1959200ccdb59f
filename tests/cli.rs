//! Configuration errors are one clear stderr line and exit code 2; check-config masks secrets.

use std::process::Command;

use crate::util::*;

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(binary()).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn config_errors_exit_2_with_one_line() {
    let dir = TempDir::new("cli");
    let path = dir.path().join("c.json");
    let p = path.to_str().unwrap();
    let cases: &[(&str, &str)] = &[
        ("", "cannot read configuration"),
        ("{not json", "is not valid JSON"),
        (
            r#"{"xmpp": {"bare_jid": "push@example.org"}, "tcp": {"prot": 1}}"#,
            "unknown key `tcp.prot`",
        ),
        (
            r#"{"xmpp": {"bare_jid": "push@example.org"}, "tcp": {"port": "x"}}"#,
            "`tcp.port` must be an integer from 0",
        ),
        (r#"{"xmpp": {}}"#, "`xmpp.bare_jid` is required"),
        (
            r#"{"xmpp": {"bare_jid": "push@example.org"}, "tcp": {"tls": {"cert_path": "/nonexistent.crt", "key_path": "/nonexistent.key"}}}"#,
            "`tcp.tls.cert_path` cannot read /nonexistent.crt",
        ),
    ];
    for (content, expected) in cases {
        if content.is_empty() {
            let _ = std::fs::remove_file(&path);
        } else {
            std::fs::write(&path, content).unwrap();
        }
        for args in [vec!["--config", p], vec!["check-config", "--config", p]] {
            let (code, _, stderr) = run(&args);
            assert_eq!(code, Some(2), "{args:?} {stderr}");
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
            assert!(stderr.contains(expected), "{expected:?} not in {stderr:?}");
        }
    }
    let (code, _, stderr) = run(&["--bogus"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("unexpected argument `--bogus`"));
}

#[test]
fn check_config_prints_the_effective_config_with_secrets_masked() {
    let dir = TempDir::new("cli");
    let cert = TestCert::new();
    std::fs::write(dir.path().join("s.crt"), &cert.cert_pem).unwrap();
    std::fs::write(dir.path().join("s.key"), &cert.key_pem).unwrap();
    let path = dir.path().join("c.json");
    // The C++ server's key spellings.
    std::fs::write(
        &path,
        r#"{"wns": {"packet_id": "ms-app://s-1-15-2-9", "client_secret": "TOPSECRET1"},
            "xmpp": {"bare_jid": "push@example.org", "password": "TOPSECRET2"},
            "tcp": {"port": 1997, "tls": {"serverCertPath": "s.crt", "serverKeyPath": "s.key"}},
            "db": {"path": "x.db"}}"#,
    )
    .unwrap();
    let (code, stdout, stderr) = run(&["check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("OK"));
    assert!(
        stdout.contains("s.crt") && stdout.contains("1997") && stdout.contains("push@example.org")
    );
    assert!(!stdout.contains("TOPSECRET"), "{stdout}");
    assert!(stdout.contains("********"));
}

#[test]
fn a_pkcs1_key_is_refused_with_the_conversion_command() {
    let dir = TempDir::new("cli");
    let rsa = openssl::rsa::Rsa::generate(2048).unwrap();
    std::fs::write(dir.path().join("k.pem"), rsa.private_key_to_pem().unwrap()).unwrap();
    std::fs::write(dir.path().join("c.pem"), TestCert::new().cert_pem).unwrap();
    let path = dir.path().join("c.json");
    std::fs::write(
        &path,
        r#"{"xmpp": {"bare_jid": "push@example.org"}, "tcp": {"tls": {"server_cert_path": "c.pem", "server_key_path": "k.pem"}}}"#,
    )
    .unwrap();
    let (code, _, stderr) = run(&["--config", path.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("openssl pkcs8 -topk8"), "{stderr}");
}

#[test]
fn sigterm_stops_cleanly_with_exit_0() {
    let mut server = Server::start(Setup::default());
    server
        .client()
        .send_json(&set_channel(2, "ab", &channel(1)));
    assert_eq!(server.stop(), Some(0));
    assert!(
        server.log_shows("store: closed cleanly"),
        "{}",
        server.log_text()
    );
}
