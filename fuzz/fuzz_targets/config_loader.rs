//! Fuzz target: the configuration loader, bytes → `Config` or `ConfigError`.
//!
//! Each input is written to `configuration.json` in a scratch directory of this process
//! and loaded with [`Config::load`], the same call `run` and `check-config` make; relative
//! paths in it resolve against that directory. The directory also holds a usable
//! certificate and PKCS#8 key (`server.crt`, `server.key`, made once per process with
//! the `openssl` command), so inputs that name them reach the TLS identity code.
//!
//! Two kinds of input are skipped, because they would make the fuzzer measure the
//! machine rather than the loader:
//! - a `tcp.host` other than an IP literal or `localhost`: the loader resolves it, and a
//!   DNS query per execution is slow and depends on the network;
//! - a string naming `dev`, `proc` or `sys`: a path to `/dev/zero` or a FIFO makes
//!   the loader read forever (issue 10, item 7, fixed separately).
//!
//! Besides "no panic" and "no hang", it checks that every error has a message (main
//! prints it and exits 2).
#![no_main]

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use uwpx_push_server::config::Config;

/// The scratch directory, made on first use.
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("uwpx-fuzz-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        // A self-signed pair for the TLS branch; if openssl is missing, those inputs only
        // reach the "cannot read" error.
        let _ = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "30",
                "-subj",
                "/CN=localhost",
                "-keyout",
                "server.key",
                "-out",
                "server.crt",
            ])
            .current_dir(&dir)
            .output();
        dir
    })
}

/// True if loading `root` would reach the network or a device file.
fn skipped(root: &Value) -> bool {
    fn names_device(v: &Value) -> bool {
        match v {
            Value::String(s) => ["dev", "proc", "sys"].iter().any(|d| s.contains(d)),
            Value::Array(items) => items.iter().any(names_device),
            Value::Object(map) => map.values().any(names_device),
            _ => false,
        }
    }
    let host = root
        .get("tcp")
        .and_then(|t| t.get("host"))
        .and_then(Value::as_str);
    let host_needs_dns = host.is_some_and(|h| h != "localhost" && h.parse::<IpAddr>().is_err());
    host_needs_dns || names_device(root)
}

fuzz_target!(|data: &[u8]| {
    // Only what Config::load itself would parse can be checked for the skip rules; text
    // that is not JSON goes straight to the loader.
    if let Ok(root) = serde_json::from_slice::<Value>(data)
        && skipped(&root)
    {
        return;
    }
    let path = scratch().join("configuration.json");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    match Config::load(&path) {
        Ok(config) => {
            let _ = config.push_jid();
        }
        Err(e) => assert!(!e.to_string().is_empty(), "an error that says nothing"),
    }
});
