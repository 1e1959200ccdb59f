//! Real XMPP servers for the end-to-end tests: Prosody 0.12 and ejabberd 23.01 from
//! Debian packages (installed by scripts/e2e/setup.sh), each started on 127.0.0.1 with
//! free ports, a throw-away data directory, a test CA, and a component for us. Every
//! process started here is stopped by PID. Test users are driven with slixmpp
//! (scripts/e2e/user_client.py, sender.py) from the venv setup.sh creates.

use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::TempDir;

pub const COMPONENT_JID: &str = "push.localhost";
pub const COMPONENT_SECRET: &str = "e2e-component-secret";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Prosody,
    Ejabberd,
    /// A second Prosody for `pushsrv.localhost` (client mode's push account), reached
    /// by the first over s2s on 127.0.0.1:5269 with the first one's test CA.
    PushSrv,
}

pub fn e2e_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/e2e")
}

/// Whether setup.sh has run (servers installed, venv present).
pub fn available(kind: Kind) -> bool {
    let bin = match kind {
        Kind::Prosody | Kind::PushSrv => "/usr/bin/prosody",
        Kind::Ejabberd => "/usr/sbin/ejabberdctl",
    };
    Path::new(bin).exists() && e2e_dir().join(".venv/bin/python").exists()
}

/// A port nobody listens on, and not one this process handed out before: the kernel
/// may give the same free port to two binds in a row once the first is released, and a
/// server configured with two equal ports (c2s and component) fails to start.
fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

fn wait_port(port: u16, secs: u64) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub struct RealServer {
    pub kind: Kind,
    pub dir: TempDir,
    pub c2s_port: u16,
    pub component_port: u16,
    /// Prosody only: XEP-0368 direct TLS client port.
    pub c2s_tls_port: u16,
    child: Option<Child>,
    env: Vec<(String, String)>,
    /// PushSrv listens on the fixed s2s port 5269: one at a time on this machine. A
    /// file lock, since nextest runs each test in a process of its own (and two
    /// PushSrvs would take each other's s2s connections, with the wrong test CA).
    _s2s_port: Option<std::fs::File>,
}

impl RealServer {
    pub fn start(kind: Kind, users: &[&str]) -> Self {
        let dir = TempDir::new(match kind {
            Kind::Prosody => "prosody",
            Kind::Ejabberd => "ejabberd",
            Kind::PushSrv => "pushsrv",
        });
        let var = dir.path().to_path_buf();
        run(Command::new(e2e_dir().join("gen_certs.sh")).arg(var.join("certs")));
        let mut s = Self {
            kind,
            c2s_port: free_port(),
            component_port: free_port(),
            c2s_tls_port: free_port(),
            child: None,
            env: Vec::new(),
            dir,
            _s2s_port: None,
        };
        s.env = vec![
            ("E2E_VAR".into(), var.display().to_string()),
            ("E2E_C2S_PORT".into(), s.c2s_port.to_string()),
            ("E2E_COMPONENT_PORT".into(), s.component_port.to_string()),
            ("E2E_C2S_DIRECT_TLS_PORT".into(), s.c2s_tls_port.to_string()),
            ("E2E_S2S_PORT".into(), free_port().to_string()),
            // ejabberd's Erlang distribution port: fixed by default, so two ejabberd
            // tests at once (nextest runs tests in parallel processes) would clash.
            ("E2E_ERL_DIST_PORT".into(), free_port().to_string()),
            ("E2E_COMPONENT_SECRET".into(), COMPONENT_SECRET.into()),
            (
                "E2E_CA_FILE".into(),
                var.join("certs/ca.crt").display().to_string(),
            ),
            (
                "E2E_WIRE_DIR".into(),
                var.join("wire").display().to_string(),
            ),
        ];
        match kind {
            Kind::PushSrv => unreachable!("use RealServer::start_pushsrv"),
            Kind::Prosody => {
                for u in users {
                    run(Command::new("prosodyctl")
                        .arg("--config")
                        .arg(e2e_dir().join("prosody/prosody.cfg.lua"))
                        .args(["register", u, "localhost", &format!("{u}pw")])
                        .envs(s.env.clone()));
                }
                s.launch();
            }
            Kind::Ejabberd => {
                let ev = var.join("ejabberd");
                std::fs::create_dir_all(ev.join("db")).unwrap();
                std::fs::create_dir_all(ev.join("logs")).unwrap();
                let pem = [
                    std::fs::read(var.join("certs/localhost.crt")).unwrap(),
                    std::fs::read(var.join("certs/localhost.key")).unwrap(),
                ]
                .concat();
                std::fs::write(ev.join("localhost.pem"), pem).unwrap();
                std::fs::copy(var.join("certs/ca.crt"), ev.join("ca.crt")).unwrap();
                let yml = std::fs::read_to_string(e2e_dir().join("ejabberd/ejabberd.yml"))
                    .unwrap()
                    .replace("@VAR@", &var.display().to_string())
                    .replace("@C2S_PORT@", &s.c2s_port.to_string())
                    .replace("@COMPONENT_PORT@", &s.component_port.to_string())
                    .replace("@COMPONENT_SECRET@", COMPONENT_SECRET);
                std::fs::write(ev.join("ejabberd.yml"), yml).unwrap();
                run(Command::new("chown")
                    .args(["-R", "ejabberd:ejabberd"])
                    .arg(&ev));
                run(Command::new("chmod")
                    .arg("600")
                    .arg(ev.join("localhost.pem")));
                s.launch();
                for u in users {
                    run(s
                        .ejabberdctl()
                        .args(["register", u, "localhost", &format!("{u}pw")]));
                }
            }
        }
        s
    }

    /// The second server, `pushsrv.localhost`, with one account `push`, using the
    /// certificates of `main` (whose CA both trust for s2s). Its s2s port is the fixed
    /// 5269 that `main` dials for `pushsrv.localhost`.
    pub fn start_pushsrv(main: &RealServer) -> Self {
        let guard = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(std::env::temp_dir().join("uwpx-e2e-s2s-5269.lock"))
            .unwrap();
        guard.lock().unwrap();
        let dir = TempDir::new("pushsrv");
        let mut s = Self {
            kind: Kind::PushSrv,
            c2s_port: free_port(),
            component_port: 5269,
            c2s_tls_port: 0,
            child: None,
            env: Vec::new(),
            dir,
            _s2s_port: Some(guard),
        };
        s.env = vec![
            ("E2E_VAR".into(), main.dir.path().display().to_string()),
            ("E2E_VAR2".into(), s.dir.path().display().to_string()),
            ("E2E_PUSHSRV_C2S_PORT".into(), s.c2s_port.to_string()),
            ("E2E_C2S_PORT".into(), s.c2s_port.to_string()),
            (
                "E2E_CA_FILE".into(),
                main.dir.path().join("certs/ca.crt").display().to_string(),
            ),
            (
                "E2E_WIRE_DIR".into(),
                s.dir.path().join("wire").display().to_string(),
            ),
        ];
        run(Command::new("prosodyctl")
            .arg("--config")
            .arg(e2e_dir().join("prosody/pushsrv.cfg.lua"))
            .args(["register", "push", "pushsrv.localhost", "pushpw"])
            .envs(s.env.clone()));
        s.launch();
        s
    }

    /// Restarts this Prosody with mod_pep's `is_item_stanza` patched to accept the
    /// `<item/>` without xmlns that mod_cloud_notify builds for a same-host push
    /// account (the README's known limit; NOTES.md §4).
    pub fn patch_pep(&mut self) {
        let original = std::fs::read_to_string("/usr/lib/prosody/modules/mod_pep.lua").unwrap();
        let from = "item.attr.xmlns == xmlns_pubsub and item.name == \"item\"";
        assert!(
            original.contains(from),
            "mod_pep.lua changed; the patch no longer applies"
        );
        let patched = original.replace(
            from,
            "(item.attr.xmlns == xmlns_pubsub or item.attr.xmlns == nil) and item.name == \"item\"",
        );
        let dir = self.dir.path().join("patched-modules");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("mod_pep.lua"), patched).unwrap();
        self.env
            .push(("E2E_PLUGIN_PATH".into(), dir.display().to_string()));
        self.restart();
    }

    /// The PEP nodes on push@pushsrv.localhost, listed by another session.
    pub fn pep_nodes(&self) -> Vec<String> {
        let port = self.c2s_port.to_string();
        self.python(
            "pep_nodes.py",
            &[
                "--jid",
                "push@pushsrv.localhost",
                "--password",
                "pushpw",
                "--port",
                &port,
            ],
        )
        .lines()
        .map(str::to_owned)
        .collect()
    }

    /// Creates `count` PEP nodes on push@pushsrv.localhost that no registration knows
    /// (another session, pipelined); returns the script's report.
    pub fn make_stale_nodes(&self, count: usize) -> String {
        let port = self.c2s_port.to_string();
        let count = count.to_string();
        self.python(
            "make_nodes.py",
            &[
                "--jid",
                "push@pushsrv.localhost",
                "--password",
                "pushpw",
                "--port",
                &port,
                "--count",
                &count,
            ],
        )
    }

    fn ejabberdctl(&self) -> Command {
        let ev = self.dir.path().join("ejabberd");
        let mut c = Command::new("ejabberdctl");
        c.arg("-c")
            .arg(e2e_dir().join("ejabberd/ejabberdctl.cfg"))
            .arg("-f")
            .arg(ev.join("ejabberd.yml"))
            .arg("-s")
            .arg(ev.join("db"))
            .arg("-l")
            .arg(ev.join("logs"))
            .envs(self.env.clone());
        c
    }

    fn launch(&mut self) {
        let log =
            std::fs::File::create(self.dir.path().join(format!("{:?}.stdout", self.kind))).unwrap();
        let child = match self.kind {
            Kind::Prosody | Kind::PushSrv => Command::new("prosody")
                .arg("--config")
                .arg(e2e_dir().join(if self.kind == Kind::PushSrv {
                    "prosody/pushsrv.cfg.lua"
                } else {
                    "prosody/prosody.cfg.lua"
                }))
                .arg("-F")
                .envs(self.env.clone())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
            Kind::Ejabberd => self
                .ejabberdctl()
                .arg("foreground")
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
        };
        self.child = Some(child);
        let secs = if self.kind == Kind::Ejabberd { 90 } else { 30 };
        assert!(
            wait_port(self.component_port, secs),
            "{:?} did not open its component port:\n{}",
            self.kind,
            self.log()
        );
        assert!(
            wait_port(self.c2s_port, secs),
            "{:?} did not open its c2s port",
            self.kind
        );
        if self.kind == Kind::Ejabberd {
            // Registration commands need the node fully up.
            let end = Instant::now() + Duration::from_secs(60);
            while !self
                .ejabberdctl()
                .arg("status")
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
            {
                assert!(Instant::now() < end, "ejabberd never reported started");
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    }

    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if self.kind == Kind::Ejabberd {
            let _ = self.ejabberdctl().arg("stop").output();
        } else {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
        }
        let end = Instant::now() + Duration::from_secs(30);
        while child.try_wait().ok().flatten().is_none() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(100));
        }
        if child.try_wait().ok().flatten().is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.kind == Kind::Ejabberd {
            // ejabberdctl foreground runs erl as user ejabberd: stop that PID too.
            let pid_file = self.dir.path().join("ejabberd/db/ejabberd.pid");
            if let Ok(pid) = std::fs::read_to_string(pid_file) {
                let _ = Command::new("kill").arg("-TERM").arg(pid.trim()).status();
            }
        }
        // Wait until the ports are free for a restart.
        let end = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.component_port)).is_ok() && Instant::now() < end
        {
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    pub fn log(&self) -> String {
        let mut out =
            std::fs::read_to_string(self.dir.path().join(format!("{:?}.stdout", self.kind)))
                .unwrap_or_default();
        for extra in ["prosody.log", "ejabberd/logs/ejabberd.log"] {
            out.push_str(&std::fs::read_to_string(self.dir.path().join(extra)).unwrap_or_default());
        }
        out
    }

    /// Runs a slixmpp script from scripts/e2e against this server.
    pub fn python(&self, script: &str, args: &[&str]) -> String {
        let out = run(Command::new(e2e_dir().join(".venv/bin/python"))
            .arg(e2e_dir().join(script))
            .args(args)
            .envs(self.env.clone())
            .current_dir(e2e_dir()));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `user` enables push with (jid, node, secret), then leaves (`offline`/`hibernate`).
    pub fn enable_push(
        &self,
        user: &str,
        jid: &str,
        node: &str,
        secret: &str,
        leave: &str,
    ) -> String {
        self.python(
            "user_client.py",
            &[
                "--jid",
                &format!("{user}@localhost"),
                "--password",
                &format!("{user}pw"),
                "--push-jid",
                jid,
                "--node",
                node,
                "--secret",
                secret,
                "--leave",
                leave,
            ],
        )
    }

    /// bob sends `user` one chat message.
    pub fn message(&self, user: &str) {
        self.messages(user, 1);
    }

    /// bob sends `user` `count` chat messages in one session.
    pub fn messages(&self, user: &str, count: u32) {
        self.python(
            "sender.py",
            &[
                "--jid",
                "bob@localhost",
                "--password",
                "bobpw",
                "--to",
                &format!("{user}@localhost"),
                "--count",
                &count.to_string(),
            ],
        );
    }
}

impl Drop for RealServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A dnsmasq on 127.0.0.1 (a free port, UDP and TCP) answering only the SRV records it
/// is given, for client mode's SRV lookup (the server is pointed at it with
/// `UWPX_TEST_NAMESERVER`). Stopped by PID on drop.
pub struct Dns {
    pub addr: String,
    child: Child,
}

/// One `--srv-host`: (service name, target, port, priority).
pub type SrvRecord<'a> = (&'a str, &'a str, u16, u16);

impl Dns {
    pub fn start(records: &[SrvRecord]) -> Self {
        assert!(
            Path::new("/usr/sbin/dnsmasq").exists(),
            "dnsmasq is not installed: run scripts/e2e/setup.sh"
        );
        // A port free for UDP may be taken for TCP (by a test running beside this one):
        // dnsmasq then exits at once, and another port is tried.
        for _ in 0..10 {
            let port = UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            if let Some(dns) = Self::spawn(records, port) {
                return dns;
            }
        }
        panic!("dnsmasq did not start");
    }

    fn spawn(records: &[SrvRecord], port: u16) -> Option<Self> {
        let mut cmd = Command::new("/usr/sbin/dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--conf-file=/dev/null",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--log-queries",
            "--log-facility=-",
            "--user=root",
            "--pid-file=",
        ])
        .arg(format!("--port={port}"));
        for (name, target, port, priority) in records {
            cmd.arg(format!("--srv-host={name},{target},{port},{priority},5"));
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let end = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if child.try_wait().ok().flatten().is_some() || Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Self {
            addr: format!("127.0.0.1:{port}"),
            child,
        })
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP port on 127.0.0.1 where nothing listens (connections are refused).
pub fn closed_port() -> u16 {
    free_port()
}
