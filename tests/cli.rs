//! Configuration errors are one clear stderr line and exit code 2; check-config masks secrets.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

/// Runs the binary to its end, or kills it after 30 s (a config that is wrongly
/// accepted starts the server, which would otherwise run forever); the exit code is
/// then `None`.
fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let child = Command::new(binary())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    finish(child, Duration::from_secs(30))
}

/// Waits up to `limit` for `child`, killing it after that; returns its exit code and
/// output.
fn finish(mut child: Child, limit: Duration) -> (Option<i32>, String, String) {
    let mut pipes = (child.stdout.take(), child.stderr.take());
    let readers = [
        pipes.0.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
        pipes.1.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .map(|pipe| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut text);
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    });
    let end = Instant::now() + limit;
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let [out, err] = readers.map(|r| r.join().unwrap());
    (code, out, err)
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

/// Issue 10 items 5 and 6 at the command line: a section of the wrong type and two
/// spellings of one key both exit 2 with one line naming the key(s), for `check-config`
/// and for a start.
#[test]
fn wrong_type_sections_and_two_spellings_exit_2() {
    let dir = TempDir::new("cli");
    let path = dir.path().join("c.json");
    let p = path.to_str().unwrap();
    let cases: &[(&str, &str)] = &[
        (
            r#"{"xmpp": {"bare_jid": "push@example.org"}, "tcp": "127.0.0.1:5000"}"#,
            "`tcp` must be an object",
        ),
        (
            r#"{"xmpp": {"bare_jid": "push@example.org"}, "db": "/srv/mine.db"}"#,
            "`db` must be an object",
        ),
        (
            r#"{"xmpp": {"bare_jid": "push@example.org"}, "tcp": {"tls": {"cert_path": "a", "serverCertPath": "b", "key_path": "k"}}}"#,
            "`tcp.tls.cert_path` and `tcp.tls.serverCertPath` are two spellings of one key",
        ),
        (
            r#"{"xmpp": {"bare_jid": "push@example.org"}, "tcp": {"port": 0, "port": 1997}}"#,
            "the key `port` is given twice in one object at line 1",
        ),
    ];
    for (content, expected) in cases {
        std::fs::write(&path, content).unwrap();
        for args in [vec!["--config", p], vec!["check-config", "--config", p]] {
            let (code, _, stderr) = run(&args);
            assert_eq!(code, Some(2), "{args:?} {stderr}");
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
            assert!(stderr.contains(expected), "{expected:?} not in {stderr:?}");
        }
    }
}

#[test]
fn unknown_arguments_exit_2() {
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

/// Issue 10 item 3: a certificate and a key that are not a pair passed `check-config`,
/// the server started "(tls)" and every handshake failed. Now both commands refuse it.
#[test]
fn a_certificate_with_a_foreign_key_is_refused_at_load() {
    let dir = TempDir::new("cli");
    std::fs::write(dir.path().join("s.crt"), TestCert::new().cert_pem).unwrap();
    std::fs::write(dir.path().join("s.key"), TestCert::new().key_pem).unwrap();
    let path = dir.path().join("c.json");
    std::fs::write(
        &path,
        r#"{"xmpp": {"bare_jid": "push@example.org"}, "tcp": {"host": "127.0.0.1", "port": 0,
            "tls": {"cert_path": "s.crt", "key_path": "s.key"}}}"#,
    )
    .unwrap();
    let p = path.to_str().unwrap();
    for args in [vec!["--config", p], vec!["check-config", "--config", p]] {
        let (code, _, stderr) = run(&args);
        assert_eq!(code, Some(2), "{args:?} {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("`tcp.tls.key_path`")
                && stderr.contains("the key does not belong to the certificate"),
            "{stderr}"
        );
    }
}

/// Issue 10 item 3: failed client TLS handshakes were logged only at debug. They are
/// logged at info, at most one line per 10 s, with a count.
#[test]
fn failed_tls_handshakes_are_logged_at_info_at_most_once_per_10_s() {
    use std::io::Write;
    let server = Server::start(Setup {
        tls: true,
        ..Setup::default()
    });
    for _ in 0..5 {
        let mut tcp = std::net::TcpStream::connect(server.addr).unwrap();
        tcp.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let _ = tcp.read_to_end(&mut Vec::new());
    }
    assert!(
        server.log_shows(
            "[INFO] registration: 1 TLS handshake(s) failed since the last such line; latest:"
        ),
        "{}",
        server.log_text()
    );
    // The other four are counted for the next line, not logged at info.
    assert!(
        server.log_text().matches("TLS handshake(s) failed").count() == 1,
        "{}",
        server.log_text()
    );
    assert!(server.log_shows("registration: TLS handshake failed:"));
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

/// Issue 10 item 7: `/dev/zero` as a certificate took the process to 4.2 GB,
/// `--config /dev/urandom` to 2.3 GB, and a FIFO hung `check-config`. Each file the
/// configuration names is read only if it is a regular file under a size cap.
#[test]
fn devices_fifos_and_huge_files_are_refused_quickly() {
    let dir = TempDir::new("cli");
    let fifo = dir.path().join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let huge = dir.path().join("huge.json");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(64 * 1024 * 1024)
        .unwrap();
    let cert = TestCert::new();
    std::fs::write(dir.path().join("s.crt"), &cert.cert_pem).unwrap();
    std::fs::write(dir.path().join("s.key"), &cert.key_pem).unwrap();
    let fifo = fifo.to_str().unwrap();
    let huge = huge.to_str().unwrap();
    for (config, expected) in [
        ("/dev/zero", "not a regular file (a character device)"),
        ("/dev/urandom", "not a regular file (a character device)"),
        (fifo, "not a regular file (a FIFO)"),
        (huge, "is larger than 1024 KiB"),
    ] {
        let (code, _, stderr) = run_quick(&["check-config", "--config", config]);
        assert_eq!(code, Some(2), "{config}: {stderr}");
        assert!(
            stderr.contains("cannot read configuration") && stderr.contains(expected),
            "{config}: {stderr}"
        );
    }
    let path = dir.path().join("c.json");
    let p = path.to_str().unwrap();
    let bare = r#""xmpp": {"bare_jid": "push@example.org"}"#;
    for (key, file, expected) in [
        (
            "cert",
            "/dev/zero",
            "`tcp.tls.cert_path` cannot read /dev/zero: is not a regular file",
        ),
        (
            "cert",
            "/dev/urandom",
            "`tcp.tls.cert_path` cannot read /dev/urandom: is not a regular file",
        ),
        ("cert", fifo, "`tcp.tls.cert_path` cannot read"),
        (
            "key",
            "/dev/zero",
            "`tcp.tls.key_path` cannot read /dev/zero: is not a regular file",
        ),
        ("key", fifo, "`tcp.tls.key_path` cannot read"),
        ("key", huge, "`tcp.tls.key_path` cannot read"),
        (
            "wns_ca",
            "/dev/zero",
            "`wns.ca_file` cannot read /dev/zero: is not a regular file",
        ),
        ("wns_ca", fifo, "`wns.ca_file` cannot read"),
        (
            "xmpp_ca",
            "/dev/urandom",
            "`xmpp.ca_file` cannot read /dev/urandom: is not a regular file",
        ),
    ] {
        let doc = match key {
            "cert" => format!(
                r#"{{{bare}, "tcp": {{"tls": {{"cert_path": "{file}", "key_path": "s.key"}}}}}}"#
            ),
            "key" => format!(
                r#"{{{bare}, "tcp": {{"tls": {{"cert_path": "s.crt", "key_path": "{file}"}}}}}}"#
            ),
            "wns_ca" => format!(r#"{{{bare}, "wns": {{"ca_file": "{file}"}}}}"#),
            _ => format!(
                r#"{{"xmpp": {{"bare_jid": "push@example.org", "password": "pw", "ca_file": "{file}"}}}}"#
            ),
        };
        std::fs::write(&path, doc).unwrap();
        let (code, _, stderr) = run_quick(&["check-config", "--config", p]);
        assert_eq!(code, Some(2), "{key} {file}: {stderr}");
        assert!(stderr.contains(expected), "{expected:?} not in {stderr:?}");
    }
}

/// Like [`run`], but a command that should fail at once gets 10 s.
fn run_quick(args: &[&str]) -> (Option<i32>, String, String) {
    let child = Command::new(binary())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    finish(child, Duration::from_secs(10))
}

/// A valid plain-TCP configuration in `dir`, returned as a path string.
fn plain_config(dir: &TempDir) -> String {
    let path = dir.path().join("c.json");
    std::fs::write(
        &path,
        r#"{"xmpp": {"bare_jid": "push@example.org"}, "tcp": {"host": "127.0.0.1", "port": 0}}"#,
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

/// Issue 10 item 18: `check-config | head` panicked with "failed printing to stdout:
/// Broken pipe" (exit 101). A reader that went away is now not an error.
#[test]
fn check_config_into_a_closed_pipe_exits_0_quietly() {
    let dir = TempDir::new("cli");
    let config = plain_config(&dir);
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let child = Command::new(binary())
        .args(["check-config", "--config", &config])
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (code, _, stderr) = finish(child, Duration::from_secs(10));
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stderr, "");
}

/// Issue 10 item 18: `--config=PATH` and `help` were refused, and `--help` was one line.
#[test]
fn config_equals_path_and_help_are_accepted_and_help_lists_everything() {
    let dir = TempDir::new("cli");
    let config = plain_config(&dir);
    let (code, stdout, stderr) = run(&["check-config", &format!("--config={config}")]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("OK"), "{stdout}");
    for args in [vec!["help"], vec!["--help"], vec!["-h"]] {
        let (code, stdout, stderr) = run(&args);
        assert_eq!(code, Some(0), "{args:?} {stderr}");
        for item in [
            "  run ",
            "  check-config ",
            "  stats ",
            "  test-push DEVICE_ID ",
            "  remove-device DEVICE_ID ",
            "  help ",
            "  -c, --config PATH ",
            "  -h, --help ",
            "  -V, --version ",
        ] {
            let lines = stdout.lines().filter(|l| l.starts_with(item)).count();
            assert_eq!(lines, 1, "{item:?} in {stdout}");
        }
    }
}

/// Issue 10 item 18: a missing ./configuration.json did not say where to start.
#[test]
fn a_missing_default_config_points_to_the_example_and_config() {
    let dir = TempDir::new("cli");
    let out = Command::new(binary())
        .arg("check-config")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("configuration.json.example") && stderr.contains("--config"),
        "{stderr}"
    );
}

/// Issue 10 item 18: `test-push --config FILE` without an id said "unexpected argument
/// `FILE`"; it now says the id is missing.
#[test]
fn test_push_without_an_id_says_so() {
    let dir = TempDir::new("cli");
    let config = plain_config(&dir);
    for cmd in ["test-push", "remove-device"] {
        let (code, _, stderr) = run(&[cmd, "--config", &config]);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!("{cmd} needs a DEVICE_ID")) && !stderr.contains("unexpected"),
            "{stderr}"
        );
    }
}

/// Issue 10 item 11: the unit's `ExecReload` sent SIGTERM, and SIGHUP stopped the server
/// too. SIGHUP now reopens `log.file` (logrotate renames the file first) and the server
/// keeps running; the unit's ExecReload sends it.
#[test]
fn sighup_reopens_the_log_file_and_the_server_keeps_running() {
    let mut server = Server::start(Setup {
        extra: serde_json::json!({"log": {"file": "server.log", "level": "info"}}),
        ..Setup::default()
    });
    let log = server.dir.path().join("server.log");
    let rotated = server.dir.path().join("server.log.1");
    server
        .client()
        .send_json(&set_channel(2, "aa", &channel(1)));
    assert!(server.log_shows("registration"));
    std::fs::rename(&log, &rotated).unwrap();
    let status = Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(server.log_shows("log: reopened"), "{}", server.log_text());
    let answer = server
        .client()
        .send_json(&set_channel(2, "bb", &channel(2)));
    assert_eq!(answer["status"], 1, "{answer}");
    assert!(server.log_shows("device=bb"), "{}", server.log_text());
    // The file logger writes after the stderr one that log_shows reads: wait for it.
    let end = Instant::now() + Duration::from_secs(5);
    let fresh = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("device=bb") || Instant::now() > end {
            break text;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(
        fresh.contains("log: reopened") && fresh.contains("device=bb"),
        "{fresh}"
    );
    assert!(
        !old.contains("device=bb") && old.contains("listening on"),
        "{old}"
    );
    assert_eq!(server.stop(), Some(0));
    let unit = include_str!("../scripts/uwpx-push-server.service");
    assert!(
        unit.contains("\nExecReload=/bin/kill -HUP $MAINPID\n"),
        "{unit}"
    );
}

/// Issue 10 item 13: the example configuration copied alone failed on a missing
/// certificate without saying what to do, and its placeholders passed silently. Now the
/// error names both ways out; the README's openssl line makes a pair it accepts, with
/// warnings for the placeholders; and without `tcp.tls` it is plain TCP.
#[test]
fn the_example_config_runs_as_copied_or_says_what_to_do() {
    let dir = TempDir::new("cli");
    let example = include_str!("../configuration.json.example");
    let config = dir.path().join("configuration.json");
    std::fs::write(&config, example).unwrap();
    let p = config.to_str().unwrap();
    let (code, _, stderr) = run(&["check-config", "--config", p]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("remove `tcp.tls` for plain TCP") && stderr.contains("openssl req -x509"),
        "{stderr}"
    );
    let readme = include_str!("../README.md");
    let line = readme
        .lines()
        .find(|l| l.starts_with("openssl req -x509"))
        .expect("the README's test-certificate line");
    let made = Command::new("sh")
        .args(["-c", line])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let (code, stdout, stderr) = run(&["check-config", "--config", p]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("OK"));
    for key in [
        "wns.packet_id",
        "wns.client_secret",
        "xmpp.component.secret",
    ] {
        assert!(
            stderr.contains(&format!(
                "warning: configuration: `{key}` looks like a placeholder"
            )),
            "{key}: {stderr}"
        );
    }
    let mut plain: serde_json::Value = serde_json::from_str(example).unwrap();
    plain["tcp"].as_object_mut().unwrap().remove("tls");
    std::fs::write(&config, plain.to_string()).unwrap();
    let (code, stdout, stderr) = run(&["check-config", "--config", p]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("tls: None"), "{stdout}");
}
