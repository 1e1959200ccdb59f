//! WNS delivery: a push job goes in, a raw notification goes out at the device's channel,
//! and an [`Outcome`] comes back to whoever submitted the job.
//!
//! - [`payload`]: the bytes per client generation.
//! - [`token`]: the OAuth token, cached, persisted, refreshed single-flight.
//! - [`client`]: the shared ureq agent, the POST, and the HTTP → verdict table.
//! - [`test_push`]: one test push, waited for (the admin command and `request_test_push`).
//!
//! The pool applies the xep0357-wns.md part D policy to each verdict:
//!
//! | verdict                         | pool action                                        | outcome        |
//! |---------------------------------|----------------------------------------------------|----------------|
//! | 200                             | note the device as seen (flushed in batches)       | `Delivered`    |
//! | 404 / 410                       | delete the device if its channel is still this one | `ChannelGone`  |
//! | 401                             | refresh the token once, resend once                | (resend)       |
//! | 401 again, 403, Domain Blocked  | log an error                                       | `Misconfigured`|
//! | 406 / 503                       | pause every job until `Retry-After`, then retry    | `Transient` if out of attempts/time |
//! | 500, timeout, transport         | retry after exponential backoff with jitter        | `Transient` if out of attempts/time |
//! | 400 / 405 / 413, bad payload    | log an error                                       | `OurBug`       |
//! | token endpoint refuses us       | — (logged as a configuration error by `token`)     | `Misconfigured`|
//! | queue full, token unavailable   | —                                                  | `Transient`    |
//!
//! Threads: `wns-worker-1..K` take jobs from a bounded crossbeam channel and make the
//! blocking HTTP calls; `wns-timer` holds jobs waiting for a retry (workers never
//! sleep) and flushes last-seen times to the store every few seconds. Outcomes are
//! handed back through each job's [`Reply`], which must not block. Locks: `paused`,
//! `seen` and the token cache's, each briefly; the store's through [`Store`] methods.

pub mod client;
pub mod payload;
pub mod test_push;
pub mod token;

use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, bounded, unbounded};

use crate::config::WnsConfig;
use crate::ops::metrics::METRICS;
use crate::store::Store;
use crate::store::unix_now;
use crate::types::{ChannelHosts, ChannelUri, DeviceId};
use client::{Answer, Verdict, WnsClient, classify};
use token::TokenCache;

/// What became of a push job. The XMPP side maps it to an IQ reply (only `ChannelGone`
/// makes a user's server drop its registration), the registration side to an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// WNS accepted the notification.
    Delivered,
    /// The channel is dead (404/410); the device was removed.
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

/// Hands an outcome back to the submitter. Called exactly once, on a WNS thread, so
/// it must not block (send on an unbounded channel or a fresh bounded(1) channel).
pub type Reply = Box<dyn FnOnce(Outcome) + Send>;

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
    touch: bool,
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
            touch: true,
        }
    }

    /// Whether a delivery should move the device's last-seen time (default yes). The
    /// dispatcher skips it for devices seen within the last hour: expiry counts in
    /// days, and a write per push would be wasted.
    pub fn touch_on_delivery(mut self, touch: bool) -> Self {
        self.touch = touch;
        self
    }

    fn finish(self, outcome: Outcome) {
        (self.reply)(outcome);
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

/// How often successful deliveries are written to `devices.last_seen_at`.
const SEEN_FLUSH: Duration = Duration::from_secs(5);

struct Shared {
    client: Arc<WnsClient>,
    tokens: Arc<TokenCache>,
    store: Arc<Store>,
    hosts: ChannelHosts,
    max_attempts: u32,
    jobs: Sender<Job>,
    delayed: Sender<Delayed>,
    paused_until: Mutex<Option<Instant>>,
    seen: Mutex<HashMap<DeviceId, i64>>,
    stopping: AtomicBool,
    abandon: AtomicBool,
    busy: AtomicUsize,
}

/// The worker pool.
pub struct WnsPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    timer: JoinHandle<()>,
}

impl WnsPool {
    /// Starts `wns.workers` workers and the timer thread.
    pub fn start(
        cfg: &WnsConfig,
        client: Arc<WnsClient>,
        tokens: Arc<TokenCache>,
        store: Arc<Store>,
    ) -> std::io::Result<Self> {
        let (jobs_tx, jobs_rx) = bounded::<Job>(cfg.queue_capacity);
        let (delay_tx, delay_rx) = unbounded::<Delayed>();
        let shared = Arc::new(Shared {
            client,
            tokens,
            store,
            hosts: cfg.channel_hosts.clone(),
            max_attempts: cfg.max_attempts,
            jobs: jobs_tx,
            delayed: delay_tx,
            paused_until: Mutex::new(None),
            seen: Mutex::new(HashMap::new()),
            stopping: AtomicBool::new(false),
            abandon: AtomicBool::new(false),
            busy: AtomicUsize::new(0),
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
        let timer_shared = shared.clone();
        let timer = thread::Builder::new()
            .name("wns-timer".into())
            .spawn(move || timer(&timer_shared, &delay_rx))?;
        Ok(Self {
            shared,
            workers,
            timer,
        })
    }

    /// Builds the whole pipeline from the configuration: the shared HTTPS client (with
    /// `wns.ca_file` added to the trusted roots), the token cache persisted in `store`,
    /// and the workers.
    pub fn from_config(cfg: &WnsConfig, store: Arc<Store>) -> std::io::Result<Self> {
        let roots = cfg
            .ca_pem
            .as_ref()
            .map(|p| client::parse_certs(&p.0))
            .unwrap_or_default();
        let client = Arc::new(WnsClient::new(cfg, &roots));
        let fetcher = client.clone();
        let tokens = Arc::new(TokenCache::new(
            Box::new(move || fetcher.fetch_token()),
            Some(store.clone()),
            unix_now(),
        ));
        Self::start(cfg, client, tokens, store)
    }

    /// Queues a job. A full queue answers `Transient` at once rather than blocking the
    /// caller (the XMPP thread must never wait on WNS).
    pub fn submit(&self, job: Job) {
        if self.shared.stopping.load(Ordering::Acquire) {
            return job.finish(Outcome::Transient(
                "the push server is shutting down".into(),
            ));
        }
        match self.shared.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(job)) => {
                log::warn!(
                    "wns: queue full, push to device {} not sent",
                    job.device.short()
                );
                job.finish(Outcome::Transient("the push queue is full".into()));
            }
            Err(TrySendError::Disconnected(job)) => job.finish(Outcome::Transient(
                "the push server is shutting down".into(),
            )),
        }
    }

    /// Jobs waiting in the queue.
    pub fn queue_len(&self) -> usize {
        self.shared.jobs.len()
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

    /// Stops taking jobs, lets queued and running ones finish for up to `grace`, answers
    /// jobs waiting for a retry with `Transient`, and flushes last-seen times.
    pub fn stop(self, grace: Duration) {
        self.shared.stopping.store(true, Ordering::Release);
        let deadline = Instant::now() + grace;
        while (!self.shared.jobs.is_empty() || self.busy() > 0) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        // Whatever is left is answered at once; a request in flight ends within
        // `wns.timeout_ms`, and a worker still busy after that is left behind.
        self.shared.abandon.store(true, Ordering::Release);
        let _ = self.timer.join();
        let hard = Instant::now() + Duration::from_secs(6);
        while self.workers.iter().any(|w| !w.is_finished()) && Instant::now() < hard {
            thread::sleep(Duration::from_millis(10));
        }
        for w in self.workers {
            if w.is_finished() {
                let _ = w.join();
            }
        }
    }
}

fn worker(shared: &Arc<Shared>, rx: &Receiver<Job>) {
    // Ends when every sender is gone: the pool's (dropped at stop) and the timer's.
    // The queue's sender lives in `Shared`, which each worker holds too, so also stop
    // on the flag once the queue is empty.
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(job) => {
                shared.busy.fetch_add(1, Ordering::Relaxed);
                process(shared, job);
                shared.busy.fetch_sub(1, Ordering::Relaxed);
            }
            Err(RecvTimeoutError::Timeout) => {
                if shared.stopping.load(Ordering::Acquire) && rx.is_empty() {
                    return;
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Sends one job once (plus one resend after a 401) and decides what comes next.
fn process(shared: &Shared, mut job: Job) {
    if shared.abandon.load(Ordering::Acquire) {
        return job.finish(Outcome::Transient(
            "the push server is shutting down".into(),
        ));
    }
    let now = Instant::now();
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
    let token = match shared.tokens.get(unix_now()) {
        Ok(t) => t,
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
    let diag = match &answer {
        Answer::Http { diagnostics, .. } => diagnostics.to_string(),
        Answer::Transport(_) => String::new(),
    };
    let who = WhoLog(&job.device, &job.channel);
    match verdict {
        Verdict::Delivered { status } => {
            // The push's one info line is written by whoever submitted it.
            log::debug!(
                "wns: {who} delivered ({})",
                status.as_deref().unwrap_or("no status")
            );
            if job.touch {
                shared
                    .seen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(job.device.clone(), unix_now());
            }
            job.finish(Outcome::Delivered)
        }
        Verdict::ChannelGone(code) => {
            match shared
                .store
                .delete_device_if_channel(&job.device, &job.channel)
            {
                Ok(true) => {
                    log::info!("wns: {who} channel gone (HTTP {code}); device removed {diag}")
                }
                Ok(false) => log::info!(
                    "wns: {who} channel gone (HTTP {code}), but the device re-registered meanwhile; kept"
                ),
                Err(e) => log::error!("wns: {who} channel gone, removing the device failed: {e}"),
            }
            job.finish(Outcome::ChannelGone)
        }
        Verdict::Unauthorized if !job.refreshed => {
            job.refreshed = true;
            log::info!("wns: {who} got 401; refreshing the token and resending once");
            match shared
                .tokens
                .refresh_after_401(token.generation, unix_now())
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
            job.last_error = format!("WNS unreachable or failing ({e})");
            let at = Instant::now() + backoff(job.attempts + 1);
            retry_at(shared, job, at, true)
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
    if shared.stopping.load(Ordering::Acquire) {
        return job.finish(Outcome::Transient(
            "the push server is shutting down".into(),
        ));
    }
    if let Err(e) = shared.delayed.send(Delayed(at, job)) {
        e.into_inner().1.finish(Outcome::Transient(
            "the push server is shutting down".into(),
        ));
    }
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

/// The `wns-timer` thread: re-queues delayed jobs when due and flushes last-seen times.
fn timer(shared: &Shared, rx: &Receiver<Delayed>) {
    // Fetch (or load) the token now: the first push is not slowed by it, and wrong
    // credentials show up in the log at start, not at the first message.
    // Refused credentials were logged as a configuration error already: no retry helps.
    if let Err(e) = shared.tokens.get(unix_now())
        && !matches!(e, token::TokenError::Rejected(_))
    {
        log::warn!("wns: no access token at start ({e}); will retry on the first push");
    }
    let mut heap: BinaryHeap<Delayed> = BinaryHeap::new();
    let mut next_flush = Instant::now() + SEEN_FLUSH;
    loop {
        let now = Instant::now();
        while heap.peek().is_some_and(|d| d.0 <= now) {
            if let Some(Delayed(_, job)) = heap.pop()
                && let Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) =
                    shared.jobs.try_send(job)
            {
                job.finish(Outcome::Transient("the push queue is full".into()));
            }
        }
        if now >= next_flush {
            flush_seen(shared);
            next_flush = now + SEEN_FLUSH;
        }
        if shared.stopping.load(Ordering::Acquire) {
            for Delayed(_, job) in heap.drain() {
                job.finish(Outcome::Transient(
                    "the push server is shutting down".into(),
                ));
            }
            while let Ok(Delayed(_, job)) = rx.try_recv() {
                job.finish(Outcome::Transient(
                    "the push server is shutting down".into(),
                ));
            }
            // Workers may still deliver while the grace period runs; they flush below.
            if shared.busy.load(Ordering::Acquire) == 0 && shared.jobs.is_empty() {
                flush_seen(shared);
                return;
            }
        }
        let wake = heap
            .peek()
            .map_or(next_flush, |d| d.0.min(next_flush))
            .min(now + Duration::from_millis(100));
        match rx.recv_timeout(wake.saturating_duration_since(Instant::now())) {
            Ok(d) => heap.push(d),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                flush_seen(shared);
                return;
            }
        }
    }
}

/// Writes the devices seen since the last flush in one transaction: no synchronous
/// write per push on the hot path.
fn flush_seen(shared: &Shared) {
    let batch: Vec<(DeviceId, i64)> =
        std::mem::take(&mut *shared.seen.lock().unwrap_or_else(|p| p.into_inner()))
            .into_iter()
            .collect();
    if batch.is_empty() {
        return;
    }
    if let Err(e) = shared.store.touch_devices(&batch) {
        log::warn!(
            "wns: could not record {} deliveries as last seen: {e}",
            batch.len()
        );
    }
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
