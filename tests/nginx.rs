//! The WNS notify client (`WnsClient::post`) against real nginx over TLS: WNS-shaped
//! 200s, a 410 with an HTML body, a chunked body, keep-alive reuse seen from nginx's own
//! access log (`$connection`), pre-opened connections, and the resend after nginx closed
//! an idle kept-alive connection. Needs Debian's nginx-light (scripts/test.sh installs
//! it); without nginx the test says so and passes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use uwpx_push_server::config::Config;
use uwpx_push_server::types::{ChannelHosts, ChannelUri};
use uwpx_push_server::wns::client::{Answer, Verdict, WnsClient, classify, parse_certs};

use crate::util::nginx::{NginxProcess, binary as nginx_binary, free_port};
use crate::util::{TempDir, TestCert};

const CHUNKED_BODY: &str = "a chunked body from nginx";

/// nginx in one process, stopped on drop. `port` keeps connections alive for 60 s,
/// `short_port` for 1 s.
struct Nginx {
    _process: NginxProcess,
    dir: PathBuf,
    port: u16,
    short_port: u16,
}

impl Nginx {
    fn start(binary: &str, dir: &Path, cert: &TestCert) -> Self {
        std::fs::write(dir.join("cert.pem"), &cert.cert_pem).unwrap();
        std::fs::write(dir.join("key.pem"), &cert.key_pem).unwrap();
        let (port, short_port) = (free_port(), free_port());
        let d = dir.display();
        let locations = format!(
            r#"
    ssl_certificate {d}/cert.pem;
    ssl_certificate_key {d}/key.pem;
    location /gone {{
      add_header X-WNS-Error-Description "The channel expired." always;
      return 410;
    }}
    location /chunked {{
      default_type text/plain;
      # sub_filter drops Content-Length, so nginx sends the body chunked.
      sub_filter_types *;
      sub_filter 'PLACEHOLDER' 'nginx';
      return 200 "a chunked body from PLACEHOLDER";
    }}
    location / {{
      add_header X-WNS-NotificationStatus received;
      add_header X-WNS-DeviceConnectionStatus connected;
      add_header X-WNS-Msg-ID 1A2B3C4D5E6F7081;
      return 200;
    }}"#
        );
        let conf = format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 64; }}
http {{
  log_format conn '$connection $status $request_uri';
  access_log {d}/access.log conn;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  server {{
    listen 127.0.0.1:{port} ssl;
    keepalive_timeout 60s;{locations}
  }}
  server {{
    listen 127.0.0.1:{short_port} ssl;
    keepalive_timeout 1s;{locations}
  }}
}}
"#
        );
        let process = NginxProcess::start(binary, dir, &conf, &[port, short_port]);
        Self {
            _process: process,
            dir: dir.to_owned(),
            port,
            short_port,
        }
    }

    /// (nginx's connection number, status, URI) per request, from the access log, once
    /// it has `n` lines (nginx writes a line after its answer went out) or after 3 s.
    /// The readiness probes made no request, so they are not in it.
    fn requests(&self, n: usize) -> Vec<(u64, u16, String)> {
        let t = Instant::now();
        loop {
            let log = std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default();
            if log.lines().count() >= n || t.elapsed() > Duration::from_secs(3) {
                return log
                    .lines()
                    .map(|l| {
                        let mut f = l.split(' ');
                        let conn = f.next().unwrap().parse().unwrap();
                        let status = f.next().unwrap().parse().unwrap();
                        (conn, status, f.next().unwrap().to_owned())
                    })
                    .collect();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn http(a: &Answer) -> (u16, &uwpx_push_server::wns::client::Diagnostics, &str) {
    match a {
        Answer::Http {
            status,
            diagnostics,
            body,
        } => (*status, diagnostics, body),
        Answer::Transport(e) => panic!("no HTTP answer: {e}"),
    }
}

#[test]
fn the_notify_client_against_nginx() {
    let Some(binary) = nginx_binary() else {
        eprintln!(
            "SKIPPED the_notify_client_against_nginx: nginx is not installed \
             (apt-get install nginx-light; scripts/test.sh installs it)"
        );
        return;
    };
    let dir = TempDir::new("nginx");
    let cert = TestCert::new();
    let nginx = Nginx::start(binary, dir.path(), &cert);
    let config = Config::from_value(
        &json!({
            "xmpp": {"bare_jid": "push@push.example.org"},
            "wns": {"packet_id": "ms-app://s-1-15-2-1", "client_secret": "s",
                    "token_url": format!("https://localhost:{}/accesstoken.srf", nginx.port),
                    "channel_hosts": ["localhost"], "timeout_ms": 3000, "workers": 2},
            "db": {"path": dir.path().join("unused.db").to_str().unwrap()},
        }),
        dir.path(),
    )
    .unwrap();
    let client = WnsClient::new(&config.wns, &parse_certs(&cert.cert_pem)).unwrap();
    let hosts = ChannelHosts::new(vec!["localhost".into()]);
    let uri = |port: u16, path: &str| {
        ChannelUri::parse(&format!("https://localhost:{port}{path}"), &hosts).unwrap()
    };
    let ok = uri(nginx.port, "/?token=AwYAAAB%2bx%2fy%3d");
    let t = Duration::from_secs(3);

    assert_eq!(client.preconnect(&ok, 1), 1);
    for i in 0..5 {
        let a = client.post(&ok, format!("push {i}").as_bytes(), "Bearer b", t);
        let (status, d, body) = http(&a);
        assert_eq!((status, body), (200, ""));
        assert_eq!(d.notification_status.as_deref(), Some("received"));
        assert_eq!(d.device_status.as_deref(), Some("connected"));
        assert_eq!(d.msg_id.as_deref(), Some("1A2B3C4D5E6F7081"));
        assert_eq!(
            classify(&a),
            Verdict::Delivered {
                status: Some("received".into())
            }
        );
    }
    let a = client.post(&uri(nginx.port, "/gone?token=x"), b"push", "Bearer b", t);
    let (status, d, body) = http(&a);
    assert_eq!(status, 410);
    assert!(body.contains("410 Gone"), "{body}");
    assert_eq!(d.error_description.as_deref(), Some("The channel expired."));
    assert_eq!(classify(&a), Verdict::ChannelGone(410));
    let a = client.post(&uri(nginx.port, "/chunked"), b"push", "Bearer b", t);
    assert_eq!(http(&a).2, CHUNKED_BODY);
    let a = client.post(&ok, b"after the chunked one", "Bearer b", t);
    assert_eq!(http(&a).0, 200);

    let seen = nginx.requests(8);
    assert_eq!(seen.len(), 8, "{seen:?}");
    assert!(
        seen.iter().all(|r| r.0 == seen[0].0),
        "all on the pre-opened kept-alive connection: {seen:?}"
    );
    assert_eq!(client.connections_opened(), 1);

    // nginx closes a connection idle for 1 s; the next push notices and sends again.
    let short = uri(nginx.short_port, "/?token=short");
    assert_eq!(http(&client.post(&short, b"1", "Bearer b", t)).0, 200);
    std::thread::sleep(Duration::from_millis(1600));
    assert_eq!(http(&client.post(&short, b"2", "Bearer b", t)).0, 200);
    assert_eq!(client.connections_opened(), 3);
    let seen = nginx.requests(10);
    assert_eq!(seen.len(), 10, "each push reached nginx once: {seen:?}");
    assert_ne!(seen[8].0, seen[9].0);
}
