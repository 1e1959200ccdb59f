//! Wiring: builds the store and the registration service from the configuration, and
//! takes them down in order.
//!
//! Start order: store (migrated) → TLS acceptor → listener bound → accept loop. Stop
//! order: set the flag → wake the accept loop → wait for requests in flight → close
//! the store, so every answered request is committed and the WAL is checkpointed.
//!
//! Threads: runs on `main`; owns every `JoinHandle`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::ops::http::{OpsHttp, Sources};
use crate::push::Dispatcher;
use crate::registration::codec::Rules;
use crate::registration::conn::ConnContext;
use crate::registration::handler::{Handler, TestPush};
use crate::registration::{RegistrationServer, Running};
use crate::shutdown::Shutdown;
use crate::store::{Store, StoreError};
use crate::wns::WnsPool;
use crate::xmpp::pep::Pep;
use crate::xmpp::{LinkSettings, LinkStatus, Mode, XmppLink};

/// Why the server could not start. `main` prints it and exits 1.
#[derive(Debug)]
pub enum StartError {
    /// The database could not be opened or migrated.
    Store(StoreError),
    /// The TLS identity was refused by the TLS library.
    Tls(native_tls::Error),
    /// The listener could not be bound (port in use, permission).
    Bind(SocketAddr, std::io::Error),
    /// A thread could not be started.
    Thread(std::io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Store(e) => write!(f, "cannot open the database: {e}"),
            Self::Tls(e) => write!(f, "cannot set up TLS: {e}"),
            Self::Bind(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
            Self::Thread(e) => write!(f, "cannot start a thread: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// The running server.
pub struct App {
    store: Arc<Store>,
    wns: Option<Arc<WnsPool>>,
    xmpp: Option<XmppLink>,
    ops_http: Option<OpsHttp>,
    expiry: Option<std::thread::JoinHandle<()>>,
    registration: Running,
    addr: SocketAddr,
    shutdown: Shutdown,
    grace: Duration,
    grace_wns: Duration,
}

impl App {
    /// Opens the store, binds the listener and starts accepting.
    pub fn start(config: &Config, shutdown: Shutdown) -> Result<App, StartError> {
        let store = Arc::new(
            Store::open(&config.db.path, config.db.synchronous).map_err(StartError::Store)?,
        );
        let counts = store.counts().map_err(StartError::Store)?;
        log::info!(
            "store: {} ({} devices, {} accounts)",
            config.db.path.display(),
            counts.devices,
            counts.accounts
        );
        let tls = match &config.tcp.tls {
            None => None,
            Some(t) => Some(
                native_tls::TlsAcceptor::builder(t.identity.clone())
                    .min_protocol_version(Some(native_tls::Protocol::Tlsv12))
                    .build()
                    .map_err(StartError::Tls)?,
            ),
        };
        let wns = match &config.wns.credentials {
            None => {
                log::warn!("wns: no wns.packet_id/client_secret; WNS delivery is off");
                None
            }
            Some(_) => {
                let pool =
                    WnsPool::from_config(&config.wns, store.clone()).map_err(StartError::Thread)?;
                log::info!(
                    "wns: {} workers, token endpoint {}",
                    config.wns.workers,
                    config.wns.token_url
                );
                Some(Arc::new(pool))
            }
        };
        let status = Arc::new(LinkStatus::default());
        let (pep_tx, pep_rx) = crossbeam_channel::unbounded();
        let mode = match (&config.xmpp.component, &config.xmpp.client) {
            (Some(c), _) => Some(Mode::Component(c.clone())),
            (None, Some(c)) => Some(Mode::Client(c.clone())),
            (None, None) => {
                log::warn!(
                    "xmpp: neither xmpp.component nor xmpp.password is set; publishes are not received"
                );
                None
            }
        };
        let client_mode = matches!(mode, Some(Mode::Client(_)));
        store
            .track_removed_nodes(client_mode)
            .map_err(StartError::Store)?;
        let pep = client_mode.then(|| Pep::new(pep_tx, status.clone(), Duration::from_secs(10)));
        let xmpp = match mode {
            None => None,
            Some(mode) => {
                let (tx, rx) = crossbeam_channel::unbounded();
                let dispatcher = Dispatcher::new(
                    store.clone(),
                    wns.clone(),
                    config.wns.deadline,
                    config.push.min_interval,
                    matches!(mode, Mode::Component(_)),
                    tx,
                );
                let settings = LinkSettings {
                    mode,
                    store: store.clone(),
                    grace: config.shutdown_grace,
                    ping_interval: config.xmpp.ping_interval,
                    deadline: config.wns.deadline,
                };
                Some(
                    XmppLink::start(settings, dispatcher, rx, pep_rx, status, shutdown.clone())
                        .map_err(StartError::Thread)?,
                )
            }
        };
        let expiry = Some(
            crate::ops::expiry::start(store.clone(), config.db.device_ttl_days, shutdown.clone())
                .map_err(StartError::Thread)?,
        );
        let ops_http = match config.metrics_listen {
            None => None,
            Some(addr) => Some(
                OpsHttp::start(
                    addr,
                    Sources {
                        store: store.clone(),
                        wns: wns.clone(),
                        xmpp: xmpp.as_ref().map(XmppLink::status),
                    },
                    shutdown.clone(),
                )
                .map_err(|e| StartError::Bind(addr, e))?,
            ),
        };
        let server = RegistrationServer::bind(
            config.tcp.addr,
            config.tcp.max_connections,
            config.tcp.max_connections_per_ip,
        )
        .map_err(|e| StartError::Bind(config.tcp.addr, e))?;
        let addr = server.local_addr();
        if tls.is_none() {
            log::warn!(
                "registration: plain TCP without TLS; real UWPX clients only connect over TLS 1.2 (set tcp.tls)"
            );
        }
        log::info!(
            "registration: listening on {addr} ({})",
            if tls.is_some() { "tls" } else { "plain" }
        );
        let ctx = Arc::new(ConnContext {
            handler: Handler::new(
                store.clone(),
                config.push_jid().to_owned(),
                wns.as_ref().map(|pool| TestPush {
                    pool: pool.clone(),
                    deadline: config.wns.deadline,
                }),
                pep,
            ),
            rules: Rules {
                max_accounts: config.limits.max_accounts,
                channel_hosts: config.wns.channel_hosts.clone(),
            },
            tls,
            read_timeout: config.tcp.read_timeout,
            max_request_bytes: config.limits.max_request_bytes,
            shutdown: shutdown.clone(),
        });
        let registration = server.start(ctx).map_err(StartError::Thread)?;
        Ok(App {
            store,
            wns,
            xmpp,
            ops_http,
            expiry,
            registration,
            addr,
            shutdown,
            grace: config.tcp.read_timeout + Duration::from_secs(1),
            grace_wns: config.shutdown_grace,
        })
    }

    /// The registration listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops in order: no new connections, requests in flight finish (each commits
    /// before it answers), then the store is checkpointed and closed.
    pub fn stop(self) {
        log::info!("shutting down");
        self.shutdown.trigger();
        // Wake the blocking accept(); the loop sees the flag and exits.
        let _ = TcpStream::connect_timeout(&wake_addr(self.addr), Duration::from_secs(1));
        let left = self.registration.join(self.grace);
        if left > 0 {
            log::warn!("registration: {left} connections still open at exit");
        }
        // The XMPP link answers what WNS answers within the grace, then `wait` for the
        // rest, and closes the stream.
        if let Some(link) = self.xmpp {
            link.join();
        }
        if let Some(http) = self.ops_http {
            http.stop();
        }
        if let Some(expiry) = self.expiry {
            let _ = expiry.join();
        }
        if let Some(pool) = self.wns {
            match Arc::try_unwrap(pool) {
                Ok(pool) => pool.stop(self.grace_wns),
                Err(_) => log::warn!("wns: pool still in use at exit"),
            }
        }
        match Arc::try_unwrap(self.store) {
            Ok(store) => match store.close() {
                Ok(()) => log::info!("store: closed cleanly"),
                Err(e) => log::error!("store: close failed: {e}"),
            },
            // A connection thread outlived the grace period; SQLite still has every
            // committed transaction in its WAL, which the next start replays.
            Err(_) => {
                log::warn!("store: still in use at exit; the WAL will be replayed at next start")
            }
        }
    }
}

/// The loopback address that reaches a listener bound to `addr` (a wildcard bind is
/// reached through loopback).
fn wake_addr(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}
