//! The WNS OAuth access token: cached in memory and in a [`TokenVault`] (the store,
//! wired in by the app), refreshed ahead of expiry, and refreshed single-flight after a
//! 401.
//!
//! Rules (xep0357-wns.md §B 4.1, 4.5):
//! - a token is reused until shortly before it expires ([`TokenCache::get`]); in the last
//!   [`REFRESH_AHEAD`] one caller refreshes while the others keep using the old token;
//! - after a 401 the caller asks for a token newer than the one that failed
//!   ([`TokenCache::refresh_after_401`]); however many workers ask at once, exactly one
//!   token request is made and the others wait for its result;
//! - a failed token request is not repeated by every job: callers within
//!   [`FAILURE_BACKOFF`] get the same error at once;
//! - credentials the endpoint refuses are a configuration error, not a passing failure
//!   (issue 10 item 16): the log line is an error naming `wns.packet_id` and
//!   `wns.client_secret`, a push without a token comes to `Misconfigured`
//!   ([`TokenError::outcome`]), and [`TokenCache::credentials_rejected`] feeds `/health`
//!   and the `uwpx_wns_credentials_rejected` gauge until a token is issued again.
//!
//! Threads: `wns-worker-*` call it; `main` loads the persisted token at start. Locks:
//! `state` (never held across the HTTP request; a `Condvar` parks waiters).

use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::Outcome;
use crate::metrics::{METRICS, TokenResult};

pub use crate::types::SavedToken;

/// Where the token is kept across restarts. `wns` owns this narrow interface so that it
/// never depends on the store; the app hands in the store's implementation.
pub trait TokenVault: Send + Sync {
    /// The saved token, if any.
    fn load(&self) -> Result<Option<SavedToken>, String>;
    /// Replaces the saved token.
    fn save(&self, token: &SavedToken) -> Result<(), String>;
    /// A refresh that several instances on one database do once between them: under a
    /// lock they all share, `decide` sees the saved token and returns a new one to save
    /// (it fetched) or `None` (the saved one will do, another instance just fetched
    /// it). Returns the token to use. Without a shared database there is no one to
    /// share with, and the default just loads, decides and saves.
    fn refresh(
        &self,
        decide: &mut dyn FnMut(Option<&SavedToken>) -> Option<SavedToken>,
    ) -> Result<Option<SavedToken>, String> {
        let saved = self.load()?;
        match decide(saved.as_ref()) {
            Some(new) => {
                self.save(&new)?;
                Ok(Some(new))
            }
            None => Ok(saved),
        }
    }
}

/// How long before expiry a token is refreshed.
pub const REFRESH_AHEAD: i64 = 300;
/// How long a failed token request is remembered before the next try.
pub const FAILURE_BACKOFF: Duration = Duration::from_secs(2);

/// An access token. `Debug` never shows the value.
#[derive(Clone)]
pub struct Token {
    value: Arc<str>,
    /// Unix seconds at which WNS stops accepting it.
    pub expires_at: i64,
    /// Increases with every refresh, so a 401 can name the token it saw fail.
    pub generation: u64,
}

impl Token {
    /// The `Authorization` header value.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.value)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Token(…, expires_at {}, gen {})",
            self.expires_at, self.generation
        )
    }
}

/// Why no token could be had. A job turns this into its outcome with
/// [`TokenError::outcome`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// The endpoint refused the credentials (400/401/403, e.g. `invalid_client`): wrong
    /// packet_id or secret, or a secret that expired. Only the operator can fix it.
    Rejected(String),
    /// The endpoint could not be reached (DNS, TCP, TLS, timeout).
    Unreachable(String),
    /// The endpoint answered something that is not a token.
    BadResponse(String),
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rejected(e) => write!(
                f,
                "the WNS token endpoint rejected our credentials ({e}): check wns.packet_id and wns.client_secret"
            ),
            Self::Unreachable(e) => write!(f, "the WNS token endpoint is unreachable: {e}"),
            Self::BadResponse(e) => {
                write!(f, "the WNS token endpoint gave an unusable answer: {e}")
            }
        }
    }
}

impl TokenError {
    /// What a push that got no token comes to. Refused credentials are the operator's
    /// to fix, so `Misconfigured` (the XMPP server is still told `wait`, and the
    /// registration answer says "Server misconfigured"); an endpoint that is down or
    /// answers nonsense may recover, so `Transient`.
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::Rejected(_) => Outcome::Misconfigured(self.to_string()),
            Self::Unreachable(_) | Self::BadResponse(_) => Outcome::Transient(self.to_string()),
        }
    }
}

/// A fetched token before it has a generation: value and lifetime in seconds.
#[derive(Debug, Clone)]
pub struct Fresh {
    /// The access token.
    pub access_token: String,
    /// Seconds it is valid for.
    pub expires_in: i64,
}

/// What fetches a new token (the HTTP call lives in `client.rs`).
pub type Fetch = dyn Fn() -> Result<Fresh, TokenError> + Send + Sync;

struct State {
    token: Option<Token>,
    refreshing: bool,
    generation: u64,
    failure: Option<(Instant, TokenError)>,
}

/// The shared token cache.
pub struct TokenCache {
    state: Mutex<State>,
    done: Condvar,
    fetch: Box<Fetch>,
    vault: Option<Arc<dyn TokenVault>>,
    requests: std::sync::atomic::AtomicU64,
}

impl TokenCache {
    /// A cache that fetches with `fetch` and persists to `vault` (if any). A token saved
    /// by an earlier run is reused while it is valid.
    pub fn new(fetch: Box<Fetch>, vault: Option<Arc<dyn TokenVault>>, now: i64) -> Self {
        let token = vault
            .as_ref()
            .and_then(|v| v.load().ok().flatten())
            .filter(|t| t.expires_at > now + REFRESH_AHEAD)
            .map(|t| Token {
                value: t.access_token.into(),
                expires_at: t.expires_at,
                generation: 1,
            });
        if let Some(t) = &token {
            log::info!(
                "wns: reusing the saved access token (expires in {} s)",
                t.expires_at - now
            );
        }
        Self {
            state: Mutex::new(State {
                generation: u64::from(token.is_some()),
                token,
                refreshing: false,
                failure: None,
            }),
            done: Condvar::new(),
            fetch,
            vault,
            requests: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// How many token requests were made (tests and metrics).
    pub fn requests(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// When the current token expires (unix seconds), if there is one.
    pub fn expires_at(&self) -> Option<i64> {
        self.lock().token.as_ref().map(|t| t.expires_at)
    }

    /// The endpoint's answer (e.g. "HTTP 400 invalid_client") if its last one refused
    /// our credentials: the health check reports it until a token is issued again.
    pub fn credentials_rejected(&self) -> Option<String> {
        match &self.lock().failure {
            Some((_, TokenError::Rejected(answer))) => Some(answer.clone()),
            _ => None,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A token valid at `now`, refreshing if needed.
    pub fn get(&self, now: i64) -> Result<Token, TokenError> {
        let mut state = self.lock();
        loop {
            match &state.token {
                Some(t) if t.expires_at - REFRESH_AHEAD > now => return Ok(t.clone()),
                // Due for refresh but still valid: one caller refreshes, others use it.
                Some(t) if t.expires_at > now && state.refreshing => return Ok(t.clone()),
                _ => {}
            }
            if state.refreshing {
                state = self.done.wait(state).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            let stale = state.token.as_ref().map(|t| t.value.clone());
            return self.refresh(state, now, stale);
        }
    }

    /// A token newer than `failed` (the generation that got a 401). Single-flight: if
    /// another caller already replaced it, or is replacing it, that result is used.
    pub fn refresh_after_401(&self, failed: u64, now: i64) -> Result<Token, TokenError> {
        let mut state = self.lock();
        loop {
            if state.generation > failed
                && let Some(t) = &state.token
            {
                return Ok(t.clone());
            }
            if state.refreshing {
                state = self.done.wait(state).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            // The failed token is not to be handed out again. A refresh that failed
            // moments ago answers for us too (see `refresh`).
            let stale = state.token.take().map(|t| t.value);
            return self.refresh(state, now, stale);
        }
    }

    /// Gets a new token with the lock released, and wakes every waiter afterwards. With
    /// a vault, the refresh goes through [`TokenVault::refresh`]: a token that another
    /// instance saved, still valid and not `stale` (the one being replaced), is taken
    /// instead of asking the endpoint again.
    fn refresh(
        &self,
        mut state: MutexGuard<'_, State>,
        now: i64,
        stale: Option<Arc<str>>,
    ) -> Result<Token, TokenError> {
        if let Some((at, e)) = &state.failure
            && at.elapsed() < FAILURE_BACKOFF
            && state.token.as_ref().is_none_or(|t| t.expires_at <= now)
        {
            return Err(e.clone());
        }
        state.refreshing = true;
        drop(state);
        let fetched = self.obtain(now, stale.as_deref());
        let mut state = self.lock();
        state.refreshing = false;
        let result = match fetched {
            Ok((saved, fresh)) => {
                state.generation += 1;
                let token = Token {
                    value: saved.access_token.into(),
                    expires_at: saved.expires_at,
                    generation: state.generation,
                };
                state.token = Some(token.clone());
                state.failure = None;
                if fresh {
                    METRICS.token_request(TokenResult::Issued);
                    log::info!(
                        "wns: new access token (expires in {} s)",
                        token.expires_at - now
                    );
                } else {
                    log::info!(
                        "wns: using the access token another instance fetched (expires in {} s)",
                        token.expires_at - now
                    );
                }
                Ok(token)
            }
            Err(e) => {
                if let TokenError::Rejected(_) = e {
                    METRICS.token_request(TokenResult::Rejected);
                    log::error!(
                        "wns: configuration error: {e}; no push can be delivered until they are fixed"
                    );
                } else {
                    METRICS.token_request(TokenResult::Failed);
                    log::error!("wns: {e}");
                }
                state.failure = Some((Instant::now(), e.clone()));
                // A still-valid old token keeps working while the refresh is retried.
                match &state.token {
                    Some(t) if t.expires_at > now => Ok(t.clone()),
                    _ => Err(e),
                }
            }
        };
        drop(state);
        self.done.notify_all();
        result
    }

    /// A token to use and whether it was fetched just now (false: another instance's,
    /// from the vault). Asks the endpoint at most once.
    fn obtain(&self, now: i64, stale: Option<&str>) -> Result<(SavedToken, bool), TokenError> {
        let fetch = || {
            self.requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            (self.fetch)().map(|fresh| SavedToken {
                access_token: fresh.access_token,
                expires_at: now + fresh.expires_in.max(1),
            })
        };
        let Some(vault) = &self.vault else {
            return fetch().map(|t| (t, true));
        };
        let mut error = None;
        let mut fetched: Option<SavedToken> = None;
        let kept = vault.refresh(&mut |saved| {
            let usable = saved.filter(|t| {
                t.expires_at > now + REFRESH_AHEAD && Some(t.access_token.as_str()) != stale
            });
            if usable.is_some() {
                return None;
            }
            match fetch() {
                Ok(t) => {
                    fetched = Some(t.clone());
                    Some(t)
                }
                Err(e) => {
                    error = Some(e);
                    None
                }
            }
        });
        if let Some(e) = error {
            return Err(e);
        }
        match (kept, fetched) {
            (Ok(_), Some(t)) => Ok((t, true)),
            (Ok(Some(t)), None) if Some(t.access_token.as_str()) != stale => Ok((t, false)),
            (Ok(_), None) => fetch().map(|t| (t, true)),
            (Err(e), fetched) => {
                // The database is down: pushes matter more than sharing the token.
                log::warn!("wns: the token could not be shared through the database: {e}");
                match fetched {
                    Some(t) => Ok((t, true)),
                    None => fetch().map(|t| (t, true)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn counting(expires_in: i64, delay: Duration) -> (Arc<AtomicU64>, Box<Fetch>) {
        let n = Arc::new(AtomicU64::new(0));
        let m = n.clone();
        let fetch: Box<Fetch> = Box::new(move || {
            std::thread::sleep(delay);
            let i = m.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(Fresh {
                access_token: format!("tok-{i}"),
                expires_in,
            })
        });
        (n, fetch)
    }

    /// A vault shared by several caches, as instances share a database: `refresh`
    /// holds one lock across the decision, like the advisory lock.
    #[derive(Default)]
    struct SharedVault(Mutex<Option<SavedToken>>);

    impl TokenVault for SharedVault {
        fn load(&self) -> Result<Option<SavedToken>, String> {
            Ok(self.0.lock().unwrap().clone())
        }
        fn save(&self, token: &SavedToken) -> Result<(), String> {
            *self.0.lock().unwrap() = Some(token.clone());
            Ok(())
        }
        fn refresh(
            &self,
            decide: &mut dyn FnMut(Option<&SavedToken>) -> Option<SavedToken>,
        ) -> Result<Option<SavedToken>, String> {
            let mut saved = self.0.lock().unwrap();
            if let Some(new) = decide(saved.as_ref()) {
                *saved = Some(new);
            }
            Ok(saved.clone())
        }
    }

    #[test]
    fn caches_sharing_a_vault_fetch_once_at_start_and_once_after_a_401() {
        let vault = Arc::new(SharedVault::default());
        let n = Arc::new(AtomicU64::new(0));
        let caches: Vec<Arc<TokenCache>> = (0..3)
            .map(|_| {
                let m = n.clone();
                let fetch: Box<Fetch> = Box::new(move || {
                    std::thread::sleep(Duration::from_millis(20));
                    let i = m.fetch_add(1, Ordering::SeqCst) + 1;
                    Ok(Fresh {
                        access_token: format!("tok-{i}"),
                        expires_in: 3600,
                    })
                });
                let v: Arc<dyn TokenVault> = vault.clone();
                Arc::new(TokenCache::new(fetch, Some(v), 0))
            })
            .collect();
        let firsts: Vec<Token> = std::thread::scope(|s| {
            let hs: Vec<_> = caches
                .iter()
                .map(|c| s.spawn(move || c.get(10).unwrap()))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(n.load(Ordering::SeqCst), 1, "one fetch for three at start");
        assert!(firsts.iter().all(|t| t.bearer() == "Bearer tok-1"));
        let seconds: Vec<Token> = std::thread::scope(|s| {
            let hs: Vec<_> = caches
                .iter()
                .zip(&firsts)
                .map(|(c, t)| s.spawn(move || c.refresh_after_401(t.generation, 20).unwrap()))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(
            n.load(Ordering::SeqCst),
            2,
            "one refresh for a 401 seen by three"
        );
        assert!(seconds.iter().all(|t| t.bearer() == "Bearer tok-2"));
    }

    #[test]
    fn a_token_is_reused_then_refreshed_ahead_of_expiry() {
        let (n, fetch) = counting(3600, Duration::ZERO);
        let c = TokenCache::new(fetch, None, 0);
        let t1 = c.get(1000).unwrap();
        assert_eq!(t1.bearer(), "Bearer tok-1");
        assert_eq!(c.get(1000 + 3000).unwrap().bearer(), "Bearer tok-1");
        assert_eq!(n.load(Ordering::SeqCst), 1);
        // Inside the refresh-ahead window: a new one is fetched.
        assert_eq!(c.get(1000 + 3600 - 100).unwrap().bearer(), "Bearer tok-2");
        assert!(!format!("{t1:?}").contains("tok-1"));
    }

    #[test]
    fn sixteen_concurrent_401s_make_exactly_one_token_request() {
        let (n, fetch) = counting(3600, Duration::from_millis(50));
        let c = Arc::new(TokenCache::new(fetch, None, 0));
        let first = c.get(10).unwrap();
        let barrier = Arc::new(std::sync::Barrier::new(16));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (c, barrier, gen_) = (c.clone(), barrier.clone(), first.generation);
                std::thread::spawn(move || {
                    barrier.wait();
                    c.refresh_after_401(gen_, 20).unwrap().bearer()
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), "Bearer tok-2");
        }
        assert_eq!(n.load(Ordering::SeqCst), 2);
        assert_eq!(c.requests(), 2);
    }

    #[test]
    fn a_failing_endpoint_is_not_hammered() {
        let n = Arc::new(AtomicU64::new(0));
        let m = n.clone();
        let c = TokenCache::new(
            Box::new(move || {
                m.fetch_add(1, Ordering::SeqCst);
                Err(TokenError::Rejected("invalid_client".into()))
            }),
            None,
            0,
        );
        for _ in 0..10 {
            assert!(matches!(c.get(5), Err(TokenError::Rejected(_))));
        }
        assert_eq!(n.load(Ordering::SeqCst), 1);
        assert!(
            c.get(5)
                .unwrap_err()
                .to_string()
                .contains("wns.client_secret")
        );
    }

    /// Issue 10 item 16: refused credentials were reported as a transient failure.
    #[test]
    fn rejected_credentials_are_a_configuration_error_until_a_token_comes() {
        let refuse = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let r = refuse.clone();
        let c = TokenCache::new(
            Box::new(move || {
                if r.load(Ordering::SeqCst) {
                    Err(TokenError::Rejected("HTTP 400 invalid_client".into()))
                } else {
                    Ok(Fresh {
                        access_token: "t".into(),
                        expires_in: 3600,
                    })
                }
            }),
            None,
            0,
        );
        // A token first, then the endpoint starts refusing (a secret revoked or expired).
        refuse.store(false, Ordering::SeqCst);
        assert!(c.get(5).is_ok());
        assert_eq!(c.credentials_rejected(), None);
        refuse.store(true, Ordering::SeqCst);
        // In the refresh-ahead window the refresh fails; the old token still serves.
        assert!(c.get(3500).is_ok());
        assert_eq!(
            c.credentials_rejected().as_deref(),
            Some("HTTP 400 invalid_client")
        );
        let e = TokenError::Rejected("HTTP 400 invalid_client".into());
        assert!(matches!(e.outcome(), Outcome::Misconfigured(m) if m.contains("wns.packet_id")));
        // Fixed (or the endpoint recovered): a new token clears the report.
        refuse.store(false, Ordering::SeqCst);
        assert!(c.get(3501).is_ok());
        assert_eq!(c.credentials_rejected(), None);
        // An endpoint that is down stays transient.
        let down = TokenError::Unreachable("timeout".into());
        assert!(matches!(down.outcome(), Outcome::Transient(_)));
    }
}
