//! WNS delivery: a push job goes in, a raw notification goes out at the device's channel,
//! and an [`Outcome`] comes back to whoever submitted the job.
//!
//! - [`payload`]: the bytes per client generation.
//! - [`token`]: the OAuth token, cached, persisted, refreshed single-flight.
//! - [`client`]: the token request (ureq), the POST, and the HTTP → verdict table.
//! - [`http`]: the POST's own keep-alive HTTP/1.1-over-TLS client, its connection
//!   pool, its response parser (fuzzed) and the DNS cache both clients share.
//!
//! The pool applies the xep0357-wns.md part D policy to each verdict. Store side
//! effects of an outcome (deleting a dead channel's device, moving last-seen) are not
//! done here: the submitter's [`Reply`] gets the outcome and applies them (`push`).
//!
//! | verdict                         | pool action                                        | outcome        |
//! |---------------------------------|----------------------------------------------------|----------------|
//! | 200                             | —                                                  | `Delivered`    |
//! | 404 / 410                       | —                                                  | `ChannelGone`  |
//! | 401                             | refresh the token once, resend once                | (resend)       |
//! | 401 again, 403, Domain Blocked  | log an error                                       | `Misconfigured`|
//! | 406 / 503                       | pause every job until `Retry-After`, then retry    | `Transient` if out of attempts/time |
//! | 500, timeout, transport         | retry after exponential backoff with jitter        | `Transient` if out of attempts/time |
//! | 400 / 405 / 413, bad payload    | log an error                                       | `OurBug`       |
//! | token endpoint refuses us       | — (logged as a configuration error by `token`)     | `Misconfigured`|
//! | queue full, token unavailable   | —                                                  | `Transient`    |
//!
//! Threads: `wns-worker-1..K` take jobs from a bounded crossbeam channel and make the
//! blocking HTTP calls; at start a short-lived `wns-warm` gets the token and opens the
//! first connections ([`WnsPool::warm_up`]), joined at stop. A job waiting for a retry
//! sits in a shared heap; an idle worker sleeps on a condition variable (`Idle`: it
//! parks at once, where crossbeam's `recv` would spin and yield first) only until the
//! earliest retry is due, so no worker oversleeps and no extra timer thread exists.
//! The pool owns the channel's only sender: dropping it at [`WnsPool::stop`] wakes the
//! workers and ends each once the queue is drained, and each is joined. Outcomes are
//! handed back through each job's [`Reply`], which must not block for long. Locks:
//! `delayed`, `paused_until`, `stop_by`, the idle bell's and the token cache's, each
//! briefly, never across HTTP. The token is kept through [`token::TokenVault`], the
//! only storage this module knows.

pub mod client;
pub mod http;
pub mod payload;
pub mod token;

use std::collections::BinaryHeap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError, bounded};

use crate::clock::Clock;
use crate::config::WnsConfig;
use crate::metrics::METRICS;
use crate::shutdown::join_logged;
use crate::types::{ChannelHosts, ChannelUri, DeviceId};
use client::{Answer, Verdict, WnsClient, classify};
use token::{TokenCache, TokenVault};

/// What became of a push job. The XMPP side maps it to an IQ reply (only `ChannelGone`
/// makes a user's server drop its registration), the registration side to an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// WNS accepted the notification.
    Delivered,
    /// The channel is dead (404/410); the submitter removes the device.
    ChannelGone,
    /// WNS or the network failed for now (throttled, unavailable, timeouts, queue full,
    /// token endpoint down). Worth trying again later.
    Transient(String),
    /// Our WNS credentials or sending domain are refused: an operator must act.
    Misconfigured(String),
    /// We sent something WNS rejects (400/405/413): a bug here.
    OurBug(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Delivered => f.write_str("delivered"),
            Self::ChannelGone => f.write_str("channel gone"),
            Self::Transient(r) => write!(f, "transient failure: {r}"),
            Self::Misconfigured(r) => write!(f, "misconfigured: {r}"),
            Self::OurBug(r) => write!(f, "rejected as malformed: {r}"),
        }
    }
}

/// A finished job handed back to its submitter: what it was for, and what became of it.
/// The device and channel come back so that the submitter can apply the outcome's
/// store side effects (the dead-channel guard needs the channel that was pushed to).
#[derive(Debug)]
pub struct Finished {
    /// The device pushed to.
    pub device: DeviceId,
    /// The channel pushed to.
    pub channel: ChannelUri,
    /// What WNS did.
    pub outcome: Outcome,
}

/// Hands a finished job back to the submitter. Called exactly once, on a WNS thread
/// (or the submitting thread, for a job refused at once), so it must not block for
/// long (a store write at most; then a send on an unbounded or fresh bounded(1)
/// channel).
pub type Reply = Box<dyn FnOnce(Finished) + Send>;

/// One notification to one device.
pub struct Job {
    device: DeviceId,
    channel: ChannelUri,
    payload: Vec<u8>,
    deadline: Instant,
    reply: Reply,
    attempts: u32,
    refreshed: bool,
    last_error: String,
}

impl Job {
    /// A job that must be done by `deadline`.
    pub fn new(
        device: DeviceId,
        channel: ChannelUri,
        payload: Vec<u8>,
        deadline: Instant,
        reply: Reply,
    ) -> Self {
        Self {
            device,
            channel,
            payload,
            deadline,
            reply,
            attempts: 0,
            refreshed: false,
            last_error: String::new(),
        }
    }

    fn finish(self, outcome: Outcome) {
        (self.reply)(Finished {
            device: self.device,
            channel: self.channel,
            outcome,
        });
    }
}

/// A job waiting for its retry time, ordered soonest first.
struct Delayed(Instant, Job);

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.0.cmp(&self.0)
    }
}

/// What the pool's workers share.
struct Shared {
    client: Arc<WnsClient>,
    tokens: Arc<TokenCache>,
    hosts: ChannelHosts,
    max_attempts: u32,
    clock: Clock,
    /// Jobs waiting for their retry time, soonest first.
    delayed: Mutex<BinaryHeap<Delayed>>,
    paused_until: Mutex<Option<Instant>>,
    /// Set by [`WnsPool::stop`]: from then on no job waits for a retry, and past this
    /// instant whatever is left is answered `Transient` at once.
    stop_by: Mutex<Option<Instant>>,
    busy: AtomicUsize,
    idle: Idle,
}

/// Where workers with nothing to do sleep: on a condition variable, taking jobs from
/// the channel with `try_recv` only. crossbeam's blocking `recv` spins and then calls
/// `sched_yield` four times before it parks, and again after a wake-up that found
/// nothing: at 5,000 pushes/s that spinning was 9 % of the workers' samples and the
/// yields 5 % (`perf record -a -g`), for a job that comes 200 µs later anyway. With
/// workers that park at once the server used 92 against 97 µs per push (medians of 4
/// interleaved rounds; the README's performance section).
#[derive(Default)]
struct Idle {
    state: Mutex<IdleState>,
    bell: Condvar,
}

#[derive(Default)]
struct IdleState {
    sleepers: usize,
    /// The queue's sender is gone: sleep no more.
    closed: bool,
}

impl Idle {
    fn lock(&self) -> MutexGuard<'_, IdleState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sleeps while `queue` is empty, until `until` at the latest. The emptiness check
    /// runs under the lock that [`Idle::ring`] takes after each send, so no job is
    /// missed between the check and the sleep.
    fn wait(&self, queue: &Receiver<Job>, until: Option<Instant>) {
        let mut st = self.lock();
        st.sleepers += 1;
        while queue.is_empty() && !st.closed {
            st = match until {
                None => self.bell.wait(st).unwrap_or_else(|p| p.into_inner()),
                Some(t) => {
                    let left = t.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    self.bell
                        .wait_timeout(st, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
        st.sleepers -= 1;
    }

    /// Wakes one sleeping worker after a job was queued; a system call only if one sleeps.
    fn ring(&self) {
        if self.lock().sleepers > 0 {
            self.bell.notify_one();
        }
    }

    /// Wakes every worker for good: the queue will get no more jobs.
    fn close(&self) {
        self.lock().closed = true;
        self.bell.notify_all();
    }
}

/// The queue's only sender. Dropping it (at [`WnsPool::stop`], or with the pool) also
/// wakes the sleeping workers, which then drain the queue and end.
struct Jobs {
    tx: Sender<Job>,
    shared: Arc<Shared>,
}

impl Drop for Jobs {
    fn drop(&mut self) {
        // The sender goes right after this: a worker that wakes finds the queue
        // disconnected once it is empty.
        self.shared.idle.close();
    }
}

impl Shared {
    fn delayed(&self) -> MutexGuard<'_, BinaryHeap<Delayed>> {
        self.delayed.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stop_by(&self) -> Option<Instant> {
        *self.stop_by.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The worker pool.
pub struct WnsPool {
    /// The queue's only sender: dropping it ends the workers.
    jobs: Jobs,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// The `wns-warm` thread of [`WnsPool::warm_up`], joined at stop.
    warming: Mutex<Option<JoinHandle<()>>>,
    /// Connections opened per host at warm-up: one per worker.
    per_host: usize,
}

/// How many distinct WNS hosts get connections at warm-up.
const WARM_HOSTS: usize = 16;

impl WnsPool {
    /// Starts `wns.workers` workers. The token is fetched by [`WnsPool::warm_up`],
    /// which the server runs at start (so wrong credentials show up in the log then,
    /// not at the first message), or else by the first job.
    pub fn start(
        cfg: &WnsConfig,
        client: Arc<WnsClient>,
        tokens: Arc<TokenCache>,
        clock: Clock,
    ) -> std::io::Result<Self> {
        let (jobs_tx, jobs_rx) = bounded::<Job>(cfg.queue_capacity);
        let shared = Arc::new(Shared {
            client,
            tokens,
            hosts: cfg.channel_hosts.clone(),
            max_attempts: cfg.max_attempts,
            clock,
            delayed: Mutex::new(BinaryHeap::new()),
            paused_until: Mutex::new(None),
            stop_by: Mutex::new(None),
            busy: AtomicUsize::new(0),
            idle: Idle::default(),
        });
        let mut workers = Vec::with_capacity(cfg.workers);
        for i in 1..=cfg.workers {
            let (shared, rx) = (shared.clone(), jobs_rx.clone());
            workers.push(
                thread::Builder::new()
                    .name(format!("wns-worker-{i}"))
                    .spawn(move || worker(&shared, &rx))?,
            );
        }
        Ok(Self {
            jobs: Jobs {
                tx: jobs_tx,
                shared: shared.clone(),
            },
            shared,
            workers,
            warming: Mutex::new(None),
            per_host: cfg.workers,
        })
    }

    /// Gets the first push's work done before it comes: the token, and a connection
    /// per worker to each host (up to 16 allowed ones) among `channels` (a
    /// sample of the stored ones), TLS handshake included. Runs on a `wns-warm` thread;
    /// waits for it at most `within`, so an unreachable WNS does not hold up the start.
    /// True when everything was ready in time.
    pub fn warm_up(&self, channels: Vec<ChannelUri>, within: Duration) -> bool {
        let mut hosts: Vec<ChannelUri> = Vec::new();
        for c in channels {
            if hosts.len() < WARM_HOSTS
                && self.shared.hosts.allows(c.host())
                && !hosts.iter().any(|h| h.authority() == c.authority())
            {
                hosts.push(c);
            }
        }
        let (done_tx, done_rx) = bounded::<()>(1);
        let (shared, per_host) = (self.shared.clone(), self.per_host);
        let started = Instant::now();
        let spawned = thread::Builder::new()
            .name("wns-warm".into())
            .spawn(move || {
                prefetch_token(&shared);
                let opened: usize = hosts
                    .iter()
                    .map(|h| shared.client.preconnect(h, per_host))
                    .sum();
                log::info!(
                    "wns: warm in {} ms: token {}, {opened} connections to {} hosts",
                    started.elapsed().as_millis(),
                    if shared.tokens.expires_at().is_some() {
                        "ready"
                    } else {
                        "missing"
                    },
                    hosts.len()
                );
                let _ = done_tx.send(());
            });
        match spawned {
            Ok(handle) => {
                *self.warming.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
            }
            Err(e) => {
                log::warn!("wns: cannot start the warm-up thread: {e}");
                return false;
            }
        }
        let ready = done_rx.recv_timeout(within).is_ok();
        if !ready {
            log::warn!(
                "wns: not warm after {} ms (token endpoint or WNS slow?); starting anyway",
                within.as_millis()
            );
        }
        ready
    }

    /// Builds the whole pipeline from the configuration: the shared HTTPS client (with
    /// `wns.ca_file` added to the trusted roots), the token cache persisted in `vault`,
    /// and the workers.
    pub fn from_config(
        cfg: &WnsConfig,
        vault: Option<Arc<dyn TokenVault>>,
        clock: Clock,
    ) -> std::io::Result<Self> {
        let roots = cfg
            .ca_pem
            .as_ref()
            .map(|p| client::parse_certs(&p.0))
            .unwrap_or_default();
        let client = Arc::new(WnsClient::new(cfg, &roots)?);
        let fetcher = client.clone();
        let tokens = Arc::new(TokenCache::new(
            Box::new(move || fetcher.fetch_token()),
            vault,
            clock.unix_now(),
        ));
        Self::start(cfg, client, tokens, clock)
    }

    /// Queues a job. A full queue answers `Transient` at once rather than blocking the
    /// caller (the XMPP thread must never wait on WNS).
    pub fn submit(&self, job: Job) {
        match self.jobs.tx.try_send(job) {
            Ok(()) => self.shared.idle.ring(),
            Err(TrySendError::Full(job)) => {
                log::warn!(
                    "wns: queue full, push to device {} not sent",
                    job.device.short()
                );
                job.finish(Outcome::Transient("the push queue is full".into()));
            }
            Err(TrySendError::Disconnected(job)) => job.finish(shutting_down()),
        }
    }

    /// Jobs waiting in the queue.
    pub fn queue_len(&self) -> usize {
        self.jobs.tx.len()
    }

    /// Workers in the middle of a job.
    pub fn busy(&self) -> usize {
        self.shared.busy.load(Ordering::Relaxed)
    }

    /// When the current access token expires (unix seconds), if there is one.
    pub fn token_expires_at(&self) -> Option<i64> {
        self.shared.tokens.expires_at()
    }

    /// Why the token endpoint refused our credentials, while it does (`/health`).
    pub fn credentials_rejected(&self) -> Option<String> {
        self.shared.tokens.credentials_rejected()
    }

    /// Stops taking jobs and ends the workers by dropping the queue's sender. Queued
    /// and running jobs may finish within `grace`; after it, and for every job waiting
    /// for a retry, the answer is `Transient`. A request in flight ends within
    /// `wns.timeout_ms`. Every worker is joined.
    pub fn stop(self, grace: Duration) {
        *self
            .shared
            .stop_by
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + grace);
        drop(self.jobs);
        for w in self.workers {
            join_logged(w);
        }
        if let Some(w) = self.warming.into_inner().unwrap_or_else(|p| p.into_inner()) {
            join_logged(w);
        }
        for Delayed(_, job) in std::mem::take(&mut *self.shared.delayed()) {
            job.finish(shutting_down());
        }
    }
}

fn shutting_down() -> Outcome {
    Outcome::Transient("the push server is shutting down".into())
}

fn prefetch_token(shared: &Shared) {
    // Refused credentials were logged as a configuration error already: no retry helps.
    if let Err(e) = shared.tokens.get(shared.clock.unix_now())
        && !matches!(e, token::TokenError::Rejected(_))
    {
        log::warn!("wns: no access token at start ({e}); will retry on the first push");
    }
}

/// A worker: takes due retries first, then waits on the queue until the next retry is
/// due. Ends when the queue's sender is gone and the queue is empty.
fn worker(shared: &Shared, rx: &Receiver<Job>) {
    loop {
        let now = Instant::now();
        let next_retry = {
            let mut heap = shared.delayed();
            match heap.peek() {
                Some(d) if d.0 <= now => heap.pop().map(|Delayed(_, job)| Ok(job)),
                Some(d) => Some(Err(d.0)),
                None => None,
            }
        };
        let job = match next_retry {
            Some(Ok(job)) => job,
            due => match rx.try_recv() {
                Ok(job) => job,
                Err(TryRecvError::Disconnected) => return,
                Err(TryRecvError::Empty) => {
                    shared.idle.wait(rx, due.and_then(Result::err));
                    continue;
                }
            },
        };
        shared.busy.fetch_add(1, Ordering::Relaxed);
        process(shared, job);
        shared.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Sends one job once (plus one resend after a 401) and decides what comes next.
fn process(shared: &Shared, mut job: Job) {
    let now = Instant::now();
    if shared.stop_by().is_some_and(|by| now >= by) {
        return job.finish(shutting_down());
    }
    if now >= job.deadline {
        let reason = if job.last_error.is_empty() {
            "no time left before the deadline".to_owned()
        } else {
            job.last_error.clone()
        };
        return job.finish(Outcome::Transient(reason));
    }
    if !shared.hosts.allows(job.channel.host()) {
        // Checked again at send time: the bearer token goes with the request.
        log::error!(
            "wns: device {} has a channel on {} which is not in wns.channel_hosts; not sending",
            job.device.short(),
            job.channel.host()
        );
        return job.finish(Outcome::Misconfigured("channel host not allowed".into()));
    }
    if job.payload.is_empty() || job.payload.len() > payload::MAX_PAYLOAD {
        log::error!("wns: refusing a payload of {} bytes", job.payload.len());
        return job.finish(Outcome::OurBug("payload size out of range".into()));
    }
    let paused = *shared
        .paused_until
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(until) = paused.filter(|&u| u > now) {
        job.last_error = "WNS asked us to back off".into();
        return retry_at(shared, job, until, false);
    }
    let token = match shared.tokens.get(shared.clock.unix_now()) {
        Ok(t) => t,
        // A token endpoint that did not answer is retried within the job's time, as a
        // failing WNS is; refused credentials and bad answers end the job at once.
        Err(e @ token::TokenError::Unreachable(_)) => {
            return retry_after_backoff(shared, job, e.to_string());
        }
        Err(e) => return job.finish(e.outcome()),
    };
    let sent = Instant::now();
    let answer = shared.client.post(
        &job.channel,
        &job.payload,
        &token.bearer(),
        job.deadline - now,
    );
    METRICS.wns_latency.observe(sent.elapsed());
    METRICS.wns_response(match &answer {
        Answer::Http { status, .. } => Some(*status),
        Answer::Transport(_) => None,
    });
    let verdict = classify(&answer);
    // The diagnostic headers go into the log lines of failures only.
    let diag = match &answer {
        Answer::Http { diagnostics, .. } if !matches!(verdict, Verdict::Delivered { .. }) => {
            diagnostics.to_string()
        }
        _ => String::new(),
    };
    on_verdict(shared, job, verdict, token.generation, &diag);
}

/// What a verdict means for the job: finished with an outcome, resent after a token
/// refresh, or scheduled for a retry (the table in the module docs).
fn on_verdict(shared: &Shared, mut job: Job, verdict: Verdict, token_generation: u64, diag: &str) {
    let who = WhoLog(&job.device, &job.channel);
    match verdict {
        Verdict::Delivered { status } => {
            // The push's one info line is written by whoever submitted it.
            log::debug!(
                "wns: {who} delivered ({})",
                status.as_deref().unwrap_or("no status")
            );
            job.finish(Outcome::Delivered)
        }
        Verdict::ChannelGone(code) => {
            log::info!("wns: {who} channel gone (HTTP {code}) {diag}");
            job.finish(Outcome::ChannelGone)
        }
        Verdict::Unauthorized if !job.refreshed => {
            job.refreshed = true;
            log::info!("wns: {who} got 401; refreshing the token and resending once");
            match shared
                .tokens
                .refresh_after_401(token_generation, shared.clock.unix_now())
            {
                Ok(_) => process(shared, job),
                Err(e) => job.finish(e.outcome()),
            }
        }
        Verdict::Unauthorized => {
            log::error!(
                "wns: {who} 401 again with a fresh token: check wns.packet_id and wns.client_secret {diag}"
            );
            job.finish(Outcome::Misconfigured("401 after a token refresh".into()))
        }
        Verdict::Misconfigured(m) => {
            log::error!("wns: {who} {m} {diag}");
            job.finish(Outcome::Misconfigured(m))
        }
        Verdict::Throttled { retry_after } | Verdict::Unavailable { retry_after } => {
            let wait = retry_after
                .map(Duration::from_secs)
                .unwrap_or_else(|| backoff(job.attempts + 1));
            let until = Instant::now() + wait;
            {
                let mut p = shared
                    .paused_until
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                *p = Some(p.map_or(until, |old| old.max(until)));
            }
            log::warn!(
                "wns: {who} throttled or unavailable; pausing all sends for {wait:?} {diag}"
            );
            job.last_error = "WNS is throttling or unavailable".into();
            retry_at(shared, job, until, true)
        }
        Verdict::Retryable(e) => {
            log::warn!("wns: {who} {e} {diag}");
            retry_after_backoff(shared, job, format!("WNS unreachable or failing ({e})"))
        }
        Verdict::OurBug(e) => {
            log::error!("wns: {who} rejected our request: {e} {diag}");
            job.finish(Outcome::OurBug(e))
        }
    }
}

/// `device <short id> (<host>)` for log lines, formatted only if a line is written.
struct WhoLog<'a>(&'a DeviceId, &'a ChannelUri);

impl fmt::Display for WhoLog<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "device {} ({})", self.0.short(), self.1.host())
    }
}

/// Schedules the job for `at`, or gives up if that is past its deadline or, when
/// `counts` (a send was made), its attempts are used up.
fn retry_at(shared: &Shared, mut job: Job, at: Instant, counts: bool) {
    if counts {
        job.attempts += 1;
    }
    if job.attempts >= shared.max_attempts || at >= job.deadline {
        let reason = std::mem::take(&mut job.last_error);
        return job.finish(Outcome::Transient(reason));
    }
    if shared.stop_by().is_some() {
        return job.finish(shutting_down());
    }
    shared.delayed().push(Delayed(at, job));
}

/// Schedules the job's next attempt after the backoff for it, remembering `why` the
/// last one failed (the answer if no attempt is left).
fn retry_after_backoff(shared: &Shared, mut job: Job, why: String) {
    job.last_error = why;
    let at = Instant::now() + backoff(job.attempts + 1);
    retry_at(shared, job, at, true)
}

/// Exponential backoff with ±50 % jitter: 250 ms, 500 ms, 1 s, … capped at 8 s.
fn backoff(attempt: u32) -> Duration {
    let base = 250u64 << attempt.saturating_sub(1).min(5);
    let mut r = [0u8; 2];
    let jitter = if getrandom::fill(&mut r).is_ok() {
        u16::from_le_bytes(r) as u64 * base / 65535
    } else {
        base / 2
    };
    Duration::from_millis((base / 2 + jitter).min(8000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        for attempt in 1..10 {
            let b = backoff(attempt);
            let base = 250u64 << (attempt - 1).min(5);
            assert!(b >= Duration::from_millis(base / 2), "{attempt}: {b:?}");
            assert!(
                b <= Duration::from_millis((base * 3 / 2).min(8000)),
                "{attempt}: {b:?}"
            );
        }
    }
}
