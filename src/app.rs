//! Wiring: builds every component from the configuration, plugs the interfaces that
//! lower layers own (the WNS token vault, registration's node provisioner) into their
//! implementations, and takes everything down in order.
//!
//! Start order: store (migrated) → WNS pool → XMPP link → expiry → ops HTTP → TLS
//! acceptor → listener bound → accept loop. Stop order: trigger shutdown → wake the
//! accept loop → requests in flight finish (each commits before it answers) → the XMPP
//! link answers what WNS answers within the grace and closes the stream → ops threads
//! → the WNS pool (its queue's sender dropped, workers joined) → last-seen flushed →
//! the store closed, so every answered request is committed and the WAL checkpointed.
//!
//! Threads: runs on `main`; owns every `JoinHandle` (directly or through the
//! component that started the thread) and logs a panic at every join.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::config::Config;
use crate::net::Waiter;
use crate::ops::http::{OpsHttp, Sources};
use crate::push::effects::Effects;
use crate::push::{DispatchSettings, Dispatcher};
use crate::registration::codec::Rules;
use crate::registration::conn::ConnContext;
use crate::registration::handler::{Handler, NodeProvisioner, TestPush};
use crate::registration::{RegistrationServer, Running};
use crate::shutdown::{Shutdown, join_logged};
use crate::store::{Store, StoreError};
use crate::types::{Node, SavedToken};
use crate::wns::WnsPool;
use crate::wns::token::TokenVault;
use crate::xmpp::pep::Pep;
use crate::xmpp::{Answers, LinkSettings, LinkStatus, Mode, XmppLink};

/// How long the start waits for WNS to be warm (token, connections) before XMPP.
const WARM_WAIT: Duration = Duration::from_secs(2);

/// The store as the WNS token's vault (the interface `wns` owns).
pub struct StoreVault(pub Arc<Store>);

impl TokenVault for StoreVault {
    fn load(&self) -> Result<Option<SavedToken>, String> {
        self.0.load_token().map_err(|e| e.to_string())
    }

    fn save(&self, token: &SavedToken) -> Result<(), String> {
        self.0.save_token(token).map_err(|e| e.to_string())
    }

    fn refresh(
        &self,
        decide: &mut dyn FnMut(Option<&SavedToken>) -> Option<SavedToken>,
    ) -> Result<Option<SavedToken>, String> {
        self.0.refresh_token(decide).map_err(|e| e.to_string())
    }
}

/// Client mode's PEP nodes as registration's node provisioner.
impl NodeProvisioner for Pep {
    fn create_all(&self, nodes: &[&Node]) -> Vec<Result<(), String>> {
        Pep::create_all(self, nodes)
    }
}

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
    effects: Arc<Effects>,
    xmpp: Option<XmppLink>,
    ops_http: Option<OpsHttp>,
    expiry: Option<std::thread::JoinHandle<()>>,
    registration: Running,
    addr: SocketAddr,
    shutdown: Shutdown,
    grace: Duration,
    grace_wns: Duration,
}

/// What the components share while they are being built.
struct Parts<'a> {
    config: &'a Config,
    shutdown: &'a Shutdown,
    clock: Clock,
    store: Arc<Store>,
    effects: Arc<Effects>,
    wns: Option<Arc<WnsPool>>,
}

impl App {
    /// Opens the store, starts WNS, XMPP and the ops threads, binds the listener and
    /// starts accepting.
    pub fn start(config: &Config, shutdown: Shutdown) -> Result<App, StartError> {
        let clock = Clock::system();
        let store = open_store(config)?;
        let effects = Arc::new(Effects::new(store.clone(), clock.clone()));
        let wns = start_wns(config, &store, &clock)?;
        let parts = Parts {
            config,
            shutdown: &shutdown,
            clock,
            store,
            effects,
            wns,
        };
        let status = Arc::new(LinkStatus::default());
        let (pep_tx, pep_rx) = crossbeam_channel::unbounded();
        let mode = xmpp_mode(config);
        let client_mode = matches!(mode, Some(Mode::Client(_)));
        parts
            .store
            .track_removed_nodes(client_mode)
            .map_err(StartError::Store)?;
        let waiter = Waiter::new().map_err(StartError::Thread)?;
        let pep = client_mode.then(|| {
            Pep::new(
                pep_tx,
                waiter.wake(),
                status.clone(),
                Duration::from_secs(10),
            )
        });
        if let Some(pool) = &parts.wns {
            // Before the XMPP link: the first publish finds the token and a connection.
            let sample = parts.store.sample_channels(256).unwrap_or_else(|e| {
                log::warn!("wns: cannot read stored channels to warm up: {e}");
                Vec::new()
            });
            pool.warm_up(sample, WARM_WAIT);
        }
        let xmpp = match mode {
            None => None,
            Some(mode) => Some(parts.start_xmpp(mode, waiter, pep_rx, status)?),
        };
        let expiry = Some(
            crate::ops::expiry::start(
                parts.store.clone(),
                config.db.device_ttl_days,
                parts.clock.clone(),
                shutdown.clone(),
            )
            .map_err(StartError::Thread)?,
        );
        let ops_http = match config.metrics_listen {
            None => None,
            Some(addr) => Some(
                OpsHttp::start(
                    addr,
                    Sources {
                        store: parts.store.clone(),
                        wns: parts.wns.clone(),
                        xmpp: xmpp.as_ref().map(XmppLink::status),
                    },
                    shutdown.clone(),
                )
                .map_err(|e| StartError::Bind(addr, e))?,
            ),
        };
        let nodes = pep.map(|p| Box::new(p) as Box<dyn NodeProvisioner>);
        let (registration, addr) = parts.start_registration(nodes)?;
        Ok(App {
            store: parts.store,
            wns: parts.wns,
            effects: parts.effects,
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
            join_logged(expiry);
        }
        if let Some(pool) = self.wns {
            match Arc::try_unwrap(pool) {
                Ok(pool) => pool.stop(self.grace_wns),
                Err(_) => log::warn!("wns: pool still in use at exit"),
            }
        }
        self.effects.flush();
        drop(self.effects);
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

/// Opens and migrates the database, and says which it is.
fn open_store(config: &Config) -> Result<Arc<Store>, StartError> {
    let store = Arc::new(Store::open(&config.db).map_err(StartError::Store)?);
    // No row counts here: counting a million devices reads the whole table (2.5 s with a
    // cold cache, and every page of it mapped in); `stats` and /metrics count on demand.
    log::info!("store: {}", store.describe());
    Ok(store)
}

/// The WNS pool, if credentials are configured.
fn start_wns(
    config: &Config,
    store: &Arc<Store>,
    clock: &Clock,
) -> Result<Option<Arc<WnsPool>>, StartError> {
    if config.wns.credentials.is_none() {
        log::warn!("wns: no wns.packet_id/client_secret; WNS delivery is off");
        return Ok(None);
    }
    let vault = Arc::new(StoreVault(store.clone()));
    let pool = WnsPool::from_config(&config.wns, Some(vault), clock.clone())
        .map_err(StartError::Thread)?;
    log::info!(
        "wns: {} workers, token endpoint {}",
        config.wns.workers,
        config.wns.token_url
    );
    Ok(Some(Arc::new(pool)))
}

/// Component mode wins if both are configured.
fn xmpp_mode(config: &Config) -> Option<Mode> {
    match (&config.xmpp.component, &config.xmpp.client) {
        (Some(c), _) => Some(Mode::Component(c.clone())),
        (None, Some(c)) => Some(Mode::Client(c.clone())),
        (None, None) => {
            log::warn!(
                "xmpp: neither xmpp.component nor xmpp.password is set; publishes are not received"
            );
            None
        }
    }
}

impl Parts<'_> {
    /// The dispatcher and the `xmpp-io` thread.
    fn start_xmpp(
        &self,
        mode: Mode,
        waiter: Waiter,
        peps: crossbeam_channel::Receiver<crate::xmpp::pep::PepRequest>,
        status: Arc<LinkStatus>,
    ) -> Result<XmppLink, StartError> {
        let answers = Arc::new(Answers::new(waiter.wake()));
        let dispatcher = Dispatcher::new(
            DispatchSettings {
                store: self.store.clone(),
                pool: self.wns.clone(),
                effects: self.effects.clone(),
                clock: self.clock.clone(),
                deadline: self.config.wns.deadline,
                min_interval: self.config.push.min_interval,
                require_secret: matches!(mode, Mode::Component(_)),
            },
            answers.clone(),
        );
        let settings = LinkSettings {
            mode,
            store: self.store.clone(),
            grace: self.config.shutdown_grace,
            ping_interval: self.config.xmpp.ping_interval,
            deadline: self.config.wns.deadline,
        };
        XmppLink::start(
            settings,
            waiter,
            dispatcher,
            answers,
            peps,
            status,
            self.shutdown.clone(),
        )
        .map_err(StartError::Thread)
    }

    /// The TLS acceptor, the listener and the accept loop.
    fn start_registration(
        &self,
        nodes: Option<Box<dyn NodeProvisioner>>,
    ) -> Result<(Running, SocketAddr), StartError> {
        let config = self.config;
        let tls = match &config.tcp.tls {
            None => None,
            Some(t) => Some(
                native_tls::TlsAcceptor::builder(t.identity.clone())
                    .min_protocol_version(Some(native_tls::Protocol::Tlsv12))
                    .build()
                    .map_err(StartError::Tls)?,
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
                self.store.clone(),
                self.clock.clone(),
                config.push_jid().to_owned(),
                self.wns.as_ref().map(|pool| TestPush {
                    pool: pool.clone(),
                    effects: self.effects.clone(),
                    deadline: config.wns.deadline,
                }),
                nodes,
            ),
            rules: Rules {
                max_accounts: config.limits.max_accounts,
                channel_hosts: config.wns.channel_hosts.clone(),
            },
            tls,
            read_timeout: config.tcp.read_timeout,
            max_request_bytes: config.limits.max_request_bytes,
            shutdown: self.shutdown.clone(),
        });
        let running = server.start(ctx).map_err(StartError::Thread)?;
        Ok((running, addr))
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
