//! nginx for the tests and the benchmarks: finding Debian's binary, starting it on a
//! configuration in a directory of its own, waiting for its ports, stopping it on drop.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// nginx's binary, if installed (`apt-get install nginx-light`).
pub fn binary() -> Option<&'static str> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running nginx, stopped (SIGQUIT, then reaped) on drop.
pub struct NginxProcess {
    child: Child,
}

impl NginxProcess {
    /// Writes `conf` to `dir/nginx.conf` and starts nginx with `dir` as its prefix and
    /// `dir/error.log`; returns once every port in `ports` accepts (the error log is in
    /// the panic if not within 10 s).
    pub fn start(binary: &str, dir: &Path, conf: &str, ports: &[u16]) -> Self {
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = Command::new(binary)
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdout(Stdio::null())
            .spawn()
            .expect("start nginx");
        let t = Instant::now();
        for &p in ports {
            while std::net::TcpStream::connect(("127.0.0.1", p)).is_err() {
                let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
                assert!(
                    t.elapsed() < Duration::from_secs(10),
                    "nginx did not start: {log}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Self { child }
    }

    /// The master's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for NginxProcess {
    fn drop(&mut self) {
        // SIGQUIT: a graceful stop of the master and its workers.
        let _ = Command::new("kill")
            .arg("-QUIT")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}
