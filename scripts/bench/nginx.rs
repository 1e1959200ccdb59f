//! nginx as the WNS endpoint of a benchmark, and wrk against the same nginx: the
//! outbound leg's physical limit (L1) on this machine, measured beside the push path.
//!
//! nginx (Debian's `nginx-light`) serves TLS with keep-alive: the token endpoint
//! answers a WNS-shaped token, every other POST gets `200` with WNS's status headers.
//! `scripts/bench-publish.sh --against nginx` installs nginx-light and wrk when missing.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::common;
use super::nginx_process::{self, NginxProcess};

/// A running nginx, stopped on drop.
pub struct Nginx {
    process: NginxProcess,
    dir: PathBuf,
    /// The TLS port on 127.0.0.1.
    pub port: u16,
}

/// The token nginx hands out.
pub const TOKEN: &str = "nginx-bench-token";

impl Nginx {
    /// Starts nginx in `dir` with `cert_pem`/`key_pem` (for `localhost`).
    pub fn start(dir: &Path, cert_pem: &[u8], key_pem: &[u8]) -> Self {
        let dir = dir.join("nginx");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cert.pem"), cert_pem).unwrap();
        std::fs::write(dir.join("key.pem"), key_pem).unwrap();
        let port = nginx_process::free_port();
        let d = dir.display();
        let conf = format!(
            r#"daemon off;
master_process on;
user root;
worker_processes auto;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  keepalive_requests 100000000;
  keepalive_timeout 600s;
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {d}/cert.pem;
    ssl_certificate_key {d}/key.pem;
    location = /accesstoken.srf {{
      default_type application/json;
      return 200 '{{"token_type":"bearer","access_token":"{TOKEN}","expires_in":86400}}';
    }}
    location / {{
      add_header X-WNS-NotificationStatus received;
      add_header X-WNS-DeviceConnectionStatus connected;
      add_header X-WNS-Msg-ID 1A2B3C4D5E6F7081;
      return 200;
    }}
  }}
}}
"#
        );
        let binary = nginx_process::binary().expect("nginx (apt-get install nginx-light)");
        let process = NginxProcess::start(binary, &dir, &conf, &[port]);
        Self { process, dir, port }
    }

    /// `https://localhost:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    /// CPU seconds of the master and all its workers.
    pub fn cpu(&self) -> f64 {
        common::tree_cpu(self.process.pid())
    }

    /// L1: wrk's keep-alive POSTs of `body` with the WNS headers, `connections` at
    /// once, for `seconds`. Returns (requests/s, wrk's CPU seconds, nginx's CPU seconds).
    pub fn wrk(&self, body: &[u8], connections: usize, seconds: u64) -> (f64, f64, f64) {
        let script = self.dir.join("post.lua");
        let mut lua = std::fs::File::create(&script).unwrap();
        let escaped: String = body
            .iter()
            .map(|b| format!("\\{b:03}"))
            .collect::<Vec<_>>()
            .concat();
        writeln!(lua, "wrk.method = \"POST\"").unwrap();
        writeln!(lua, "wrk.body = \"{escaped}\"").unwrap();
        for (k, v) in [
            ("X-WNS-Type", "wns/raw"),
            ("Authorization", "Bearer nginx-bench-token"),
            ("X-WNS-RequestForStatus", "true"),
            ("Content-Type", "application/octet-stream"),
        ] {
            writeln!(lua, "wrk.headers[\"{k}\"] = \"{v}\"").unwrap();
        }
        drop(lua);
        let nginx0 = self.cpu();
        // Reaped by wait4 below, which also gives its CPU time.
        #[allow(clippy::zombie_processes)]
        let child = Command::new("wrk")
            .args(["-t2", &format!("-c{connections}"), &format!("-d{seconds}s")])
            .arg("-s")
            .arg(&script)
            .arg(self.url("/?token=wrk"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("run wrk (apt-get install wrk)");
        let pid = child.id() as libc::pid_t;
        let out = child.stdout.map(std::io::read_to_string);
        // wait4 gives the child's own CPU time once it has ended.
        let mut status = 0;
        // SAFETY: a zeroed rusage is a valid value for wait4 to fill.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: pid is our own child; status and usage are valid for writes.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        assert_eq!(r, pid, "wait4 on wrk");
        let nginx = self.cpu() - nginx0;
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        let wrk_cpu = tv(usage.ru_utime) + tv(usage.ru_stime);
        let text = out.and_then(|r| r.ok()).unwrap_or_default();
        let rate = text
            .lines()
            .find_map(|l| l.strip_prefix("Requests/sec:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no Requests/sec in wrk's output:\n{text}"));
        (rate, wrk_cpu, nginx)
    }
}
