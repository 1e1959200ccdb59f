//! HTTP to WNS: the token request and the notify POST over one shared ureq `Agent`
//! (keep-alive pool, native-tls), and [`classify`], the one place that turns an HTTP
//! answer into a [`Verdict`].
//!
//! | HTTP answer                         | verdict                        |
//! |-------------------------------------|--------------------------------|
//! | 200 (any `X-WNS-NotificationStatus`) | `Delivered`                   |
//! | 404, 410                            | `ChannelGone`                  |
//! | 410 with "Domain Blocked"           | `Misconfigured`                |
//! | 401                                 | `Unauthorized` (refresh once)  |
//! | 403                                 | `Misconfigured`                |
//! | 406                                 | `Throttled { retry_after }`    |
//! | 503                                 | `Unavailable { retry_after }`  |
//! | 500, other 5xx, timeout, transport  | `Retryable`                    |
//! | 400, 405, 413, anything else        | `OurBug`                       |
//!
//! Redirects are never followed: the bearer token must only go to an allowed WNS host.
//!
//! Threads: `wns-worker-*`. No locks of its own (ureq's pool lock is brief).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ureq::Agent;
use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

use super::token::{Fresh, TokenError};
use crate::config::WnsConfig;
use crate::types::ChannelUri;

/// What one POST to a channel came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// WNS accepted it (200).
    Delivered {
        /// `X-WNS-NotificationStatus` / `X-WNS-Status`, e.g. "received" or "dropped".
        status: Option<String>,
    },
    /// 404 or 410: the channel is dead.
    ChannelGone(u16),
    /// 401: the token was refused.
    Unauthorized,
    /// 403 or 410 "Domain Blocked": our credentials or our sending domain are the problem.
    Misconfigured(String),
    /// 406: we are throttled; `Retry-After` seconds if given.
    Throttled {
        /// `Retry-After`, seconds.
        retry_after: Option<u64>,
    },
    /// 503: WNS is unavailable; `Retry-After` seconds if given.
    Unavailable {
        /// `Retry-After`, seconds.
        retry_after: Option<u64>,
    },
    /// 500, other 5xx, timeouts and transport errors: retry with backoff.
    Retryable(String),
    /// 400, 405, 413 and anything unexpected: a request we should not have sent.
    OurBug(String),
}

/// The diagnostic headers WNS sends; logged on failure (Microsoft support needs them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics {
    /// `X-WNS-Msg-ID`.
    pub msg_id: Option<String>,
    /// `X-WNS-Debug-Trace`.
    pub debug_trace: Option<String>,
    /// `X-WNS-Error-Description`.
    pub error_description: Option<String>,
    /// `MS-CV`.
    pub ms_cv: Option<String>,
    /// `X-WNS-NotificationStatus`, or `X-WNS-Status` where that is what came.
    pub notification_status: Option<String>,
    /// `X-WNS-DeviceConnectionStatus`.
    pub device_status: Option<String>,
    /// `Retry-After` in seconds.
    pub retry_after: Option<u64>,
}

impl std::fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let items = [
            ("msg-id", &self.msg_id),
            ("debug-trace", &self.debug_trace),
            ("error", &self.error_description),
            ("ms-cv", &self.ms_cv),
            ("notification-status", &self.notification_status),
            ("device-status", &self.device_status),
        ];
        let mut first = true;
        for (name, value) in items {
            if let Some(v) = value {
                write!(f, "{}{name}={v:?}", if first { "" } else { " " })?;
                first = false;
            }
        }
        Ok(())
    }
}

/// The raw answer to a POST: the HTTP status and headers, or a transport failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// An HTTP response.
    Http {
        /// Status code.
        status: u16,
        /// Headers that matter.
        diagnostics: Diagnostics,
        /// The first bytes of the body, for "Domain Blocked" and logs.
        body: String,
    },
    /// No HTTP response: connect, TLS, timeout, reset.
    Transport(String),
}

/// Turns an answer into a verdict. The mapping table is in the module docs.
pub fn classify(answer: &Answer) -> Verdict {
    let (status, d, body) = match answer {
        Answer::Transport(e) => return Verdict::Retryable(e.clone()),
        Answer::Http {
            status,
            diagnostics,
            body,
        } => (*status, diagnostics, body),
    };
    let blocked = |text: &Option<String>| {
        text.as_deref()
            .is_some_and(|t| t.to_ascii_lowercase().contains("domain blocked"))
    };
    match status {
        200 => Verdict::Delivered {
            status: d.notification_status.clone(),
        },
        410 if blocked(&d.error_description) || blocked(&Some(body.clone())) => {
            Verdict::Misconfigured("410 Domain Blocked: WNS blocks our sending domain".into())
        }
        404 | 410 => Verdict::ChannelGone(status),
        401 => Verdict::Unauthorized,
        403 => Verdict::Misconfigured(
            "403 Forbidden: the token is not valid for this channel (wrong app credentials?)"
                .into(),
        ),
        406 => Verdict::Throttled {
            retry_after: d.retry_after,
        },
        503 => Verdict::Unavailable {
            retry_after: d.retry_after,
        },
        500..=599 => Verdict::Retryable(format!("HTTP {status}")),
        _ => Verdict::OurBug(format!("HTTP {status}")),
    }
}

/// Header values for the optional WNS headers, from the configuration.
#[derive(Debug, Clone)]
pub struct SendHeaders {
    /// `X-WNS-Cache-Policy`.
    pub cache_policy: Option<String>,
    /// `X-WNS-TTL`.
    pub ttl_s: Option<u64>,
    /// `X-WNS-PRIORITY`.
    pub priority: Option<u8>,
}

/// The HTTP side of WNS.
pub struct WnsClient {
    agent: Agent,
    token_url: String,
    client_id: String,
    client_secret: String,
    headers: SendHeaders,
    timeout: Duration,
}

/// Longest response body read (WNS bodies are tiny; the fake's too).
const BODY_LIMIT: u64 = 16 * 1024;

impl WnsClient {
    /// Builds the shared agent. `extra_roots` are PEM certificates trusted in addition
    /// to the system's (for tests and private CAs).
    pub fn new(cfg: &WnsConfig, extra_roots: &[Certificate<'static>]) -> Self {
        let roots = if extra_roots.is_empty() {
            RootCerts::PlatformVerifier
        } else {
            let mut all = system_roots();
            all.extend_from_slice(extra_roots);
            RootCerts::new_with_certs(&all)
        };
        let tls = TlsConfig::builder()
            .provider(TlsProvider::NativeTls)
            .root_certs(roots)
            .build();
        let config = Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .max_redirects(0)
            .max_redirects_will_error(false)
            .timeout_global(Some(cfg.timeout))
            .max_idle_connections(cfg.workers * 4 + 16)
            .max_idle_connections_per_host(cfg.workers * 2 + 4)
            .user_agent(concat!("uwpx-push-server/", env!("CARGO_PKG_VERSION")))
            .build();
        let agent = Agent::with_parts(
            config,
            DefaultConnector::default(),
            CachingResolver::new(RESOLVE_TTL),
        );
        let (client_id, client_secret) = cfg
            .credentials
            .as_ref()
            .map(|c| (c.packet_id.clone(), c.client_secret.expose().to_owned()))
            .unwrap_or_default();
        Self {
            agent,
            token_url: cfg.token_url.clone(),
            client_id,
            client_secret,
            headers: SendHeaders {
                cache_policy: cfg.cache_policy.clone(),
                ttl_s: cfg.ttl_s,
                priority: cfg.priority,
            },
            timeout: cfg.timeout,
        }
    }

    /// Requests a new access token (form POST, client-credentials grant).
    pub fn fetch_token(&self) -> Result<Fresh, TokenError> {
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.as_str()),
            ("scope", "notify.windows.com"),
        ];
        let mut resp = self
            .agent
            .post(&self.token_url)
            .send_form(form)
            .map_err(|e| TokenError::Unreachable(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = read_body(&mut resp).map_err(|e| TokenError::Unreachable(e.to_string()))?;
        parse_token(status, &body)
    }

    /// POSTs one raw notification. `timeout` caps this request (the job's remaining
    /// time); the agent's `wns.timeout_ms` caps it too.
    pub fn post(
        &self,
        uri: &ChannelUri,
        payload: &[u8],
        bearer: &str,
        timeout: Duration,
    ) -> Answer {
        let mut req = self
            .agent
            .post(uri.as_str())
            .header("X-WNS-Type", "wns/raw")
            .header("Authorization", bearer)
            .header("X-WNS-RequestForStatus", "true")
            .content_type("application/octet-stream");
        if let Some(p) = &self.headers.cache_policy {
            req = req.header("X-WNS-Cache-Policy", p.as_str());
        }
        if let Some(ttl) = self.headers.ttl_s {
            req = req.header("X-WNS-TTL", ttl.to_string());
        }
        if let Some(p) = self.headers.priority {
            req = req.header("X-WNS-PRIORITY", p.to_string());
        }
        let result = req
            .config()
            .timeout_global(Some(timeout.min(self.timeout)))
            .build()
            .send(payload);
        match result {
            Ok(mut resp) => {
                let h = resp.headers();
                let get = |name: &str| {
                    h.get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(|s| s.chars().take(256).collect::<String>())
                };
                let diagnostics = Diagnostics {
                    msg_id: get("X-WNS-Msg-ID"),
                    debug_trace: get("X-WNS-Debug-Trace"),
                    error_description: get("X-WNS-Error-Description"),
                    ms_cv: get("MS-CV"),
                    notification_status: get("X-WNS-NotificationStatus")
                        .or_else(|| get("X-WNS-Status")),
                    device_status: get("X-WNS-DeviceConnectionStatus"),
                    retry_after: get("Retry-After").and_then(|v| v.trim().parse().ok()),
                };
                let status = resp.status().as_u16();
                // Read the body to the end so the connection goes back to the pool.
                let body = read_body(&mut resp).unwrap_or_default();
                Answer::Http {
                    status,
                    diagnostics,
                    body: body.chars().take(512).collect(),
                }
            }
            Err(e) => Answer::Transport(e.to_string()),
        }
    }
}

/// Reads a response body to the end (so the connection returns to the pool), at most
/// [`BODY_LIMIT`] bytes: WNS bodies are tiny, a huge one is not read into memory.
fn read_body(resp: &mut ureq::http::Response<ureq::Body>) -> Result<String, ureq::Error> {
    resp.body_mut()
        .with_config()
        .limit(BODY_LIMIT)
        .read_to_string()
}

/// Parses the token endpoint's answer. `expires_in` may be a number or a string
/// (the Entra ID flow sends a string).
///
/// | answer                         | result                                           |
/// |--------------------------------|--------------------------------------------------|
/// | 200 with a token               | `Ok`                                             |
/// | 400, 401, 403 (any body)       | `Rejected`: our credentials (issue 10 item 16)   |
/// | 408, 429, 5xx                  | `Unreachable`: may pass                          |
/// | anything else, a 200 without a token | `BadResponse`                              |
pub fn parse_token(status: u16, body: &str) -> Result<Fresh, TokenError> {
    let json: Option<serde_json::Value> = serde_json::from_str(body).ok();
    if status != 200 {
        let error: String = json
            .as_ref()
            .and_then(|j| j.get("error"))
            .and_then(|e| e.as_str())
            .unwrap_or("no error code")
            .chars()
            .take(64)
            .collect();
        let what = format!("HTTP {status} {error}");
        return Err(match status {
            400 | 401 | 403 => TokenError::Rejected(what),
            408 | 429 | 500..=599 => TokenError::Unreachable(what),
            _ => TokenError::BadResponse(what),
        });
    }
    let json =
        json.ok_or_else(|| TokenError::BadResponse(format!("HTTP {status}, body is not JSON")))?;
    let access_token = json
        .get("access_token")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| TokenError::BadResponse("no access_token".into()))?;
    let expires_in = match json.get("expires_in") {
        Some(serde_json::Value::Number(n)) => n.as_i64(),
        Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|&n| n > 0)
    .ok_or_else(|| TokenError::BadResponse("no usable expires_in".into()))?;
    Ok(Fresh {
        access_token: access_token.to_owned(),
        expires_in,
    })
}

/// The system's trust store as certificates, so an extra CA adds to it rather than
/// replacing it (ureq's specific-roots mode turns the built-in roots off).
fn system_roots() -> Vec<Certificate<'static>> {
    const BUNDLES: &[&str] = &[
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/cert.pem",
    ];
    BUNDLES
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .map(|pem| parse_certs(&pem))
        .unwrap_or_default()
}

/// Every certificate in a PEM blob.
pub fn parse_certs(pem: &[u8]) -> Vec<Certificate<'static>> {
    ureq::tls::parse_pem(pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect()
}

/// How long a resolved WNS host is reused: short, so a moved host is followed soon.
pub const RESOLVE_TTL: Duration = Duration::from_secs(30);

/// Name resolution with a short-lived cache. ureq resolves the host of every request
/// before it looks in its connection pool, and with a timeout set its default resolver
/// does so in a freshly spawned thread: a thread and a lookup per push (issue 13). Here
/// a host is looked up at most once per [`RESOLVE_TTL`]; a miss goes to ureq's own
/// resolver, timeout and all.
#[derive(Debug)]
pub struct CachingResolver {
    ttl: Duration,
    inner: DefaultResolver,
    cache: Mutex<HashMap<String, (Instant, ResolvedSocketAddrs)>>,
    lookups: AtomicU64,
}

impl CachingResolver {
    /// A resolver that keeps each answer for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            inner: DefaultResolver::default(),
            cache: Mutex::new(HashMap::new()),
            lookups: AtomicU64::new(0),
        }
    }

    /// Lookups that went past the cache (tests, metrics).
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }
}

impl Resolver for CachingResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let key = format!(
            "{}://{}",
            uri.scheme_str().unwrap_or(""),
            uri.authority().map_or("", |a| a.as_str())
        );
        let now = Instant::now();
        if let Some((at, addrs)) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            && now.duration_since(*at) < self.ttl
        {
            return Ok(addrs.clone());
        }
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let addrs = self.inner.resolve(uri, config, timeout)?;
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, (now, addrs.clone()));
        Ok(addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_is_looked_up_once_per_ttl_not_once_per_push() {
        let config = ureq::config::Config::default();
        let a: ureq::http::Uri = "https://localhost:4431/?token=a".parse().unwrap();
        let b: ureq::http::Uri = "https://localhost:4431/?token=b".parse().unwrap();
        let other: ureq::http::Uri = "https://127.0.0.1:4431/".parse().unwrap();
        let r = CachingResolver::new(RESOLVE_TTL);
        for uri in [&a, &b, &a, &other, &other] {
            let addrs = r.resolve(uri, &config, NextTimeout::default()).unwrap();
            assert!(!addrs.is_empty());
        }
        assert_eq!(r.lookups(), 2, "one per host, whatever the path");
        let fresh = CachingResolver::new(Duration::ZERO);
        for _ in 0..3 {
            fresh.resolve(&a, &config, NextTimeout::default()).unwrap();
        }
        assert_eq!(fresh.lookups(), 3, "an expired answer is looked up again");
    }

    fn http(status: u16, f: impl FnOnce(&mut Diagnostics)) -> Answer {
        let mut d = Diagnostics::default();
        f(&mut d);
        Answer::Http {
            status,
            diagnostics: d,
            body: String::new(),
        }
    }

    #[test]
    fn every_row_of_the_mapping_table() {
        let rows: Vec<(Answer, Verdict)> = vec![
            (
                http(200, |d| d.notification_status = Some("dropped".into())),
                Verdict::Delivered {
                    status: Some("dropped".into()),
                },
            ),
            (http(404, |_| {}), Verdict::ChannelGone(404)),
            (http(410, |_| {}), Verdict::ChannelGone(410)),
            (http(401, |_| {}), Verdict::Unauthorized),
            (
                http(406, |d| d.retry_after = Some(7)),
                Verdict::Throttled {
                    retry_after: Some(7),
                },
            ),
            (
                http(503, |_| {}),
                Verdict::Unavailable { retry_after: None },
            ),
            (http(500, |_| {}), Verdict::Retryable("HTTP 500".into())),
            (http(502, |_| {}), Verdict::Retryable("HTTP 502".into())),
            (
                Answer::Transport("timeout".into()),
                Verdict::Retryable("timeout".into()),
            ),
            (http(400, |_| {}), Verdict::OurBug("HTTP 400".into())),
            (http(405, |_| {}), Verdict::OurBug("HTTP 405".into())),
            (http(413, |_| {}), Verdict::OurBug("HTTP 413".into())),
            (http(302, |_| {}), Verdict::OurBug("HTTP 302".into())),
        ];
        for (answer, verdict) in rows {
            assert_eq!(classify(&answer), verdict, "{answer:?}");
        }
        assert!(matches!(
            classify(&http(403, |_| {})),
            Verdict::Misconfigured(_)
        ));
        let blocked = http(410, |d| d.error_description = Some("Domain Blocked".into()));
        assert!(
            matches!(classify(&blocked), Verdict::Misconfigured(m) if m.contains("Domain Blocked"))
        );
    }

    #[test]
    fn token_answers_accept_numbers_and_strings() {
        let t = parse_token(
            200,
            r#"{"access_token":"a","token_type":"bearer","expires_in":86400}"#,
        )
        .unwrap();
        assert_eq!((t.access_token.as_str(), t.expires_in), ("a", 86400));
        let t = parse_token(200, r#"{"access_token":"b","expires_in":"86399"}"#).unwrap();
        assert_eq!(t.expires_in, 86399);
        assert!(matches!(
            parse_token(400, r#"{"error":"invalid_client"}"#),
            Err(TokenError::Rejected(e)) if e.contains("invalid_client")
        ));
        assert!(matches!(
            parse_token(200, r#"{"access_token":"c"}"#),
            Err(TokenError::BadResponse(_))
        ));
        assert!(matches!(
            parse_token(502, "<html>"),
            Err(TokenError::Unreachable(_))
        ));
        assert!(matches!(
            parse_token(200, "<html>"),
            Err(TokenError::BadResponse(_))
        ));
    }

    /// Issue 10 item 16: a refusal whose body is not JSON was a "bad response", and so
    /// transient, instead of a credentials problem.
    #[test]
    fn refused_credentials_are_rejected_whatever_the_body() {
        for (status, body) in [
            (400, r#"{"error":"invalid_client"}"#),
            (401, ""),
            (401, "<html>Unauthorized</html>"),
            (403, r#"{"error":"unauthorized_client"}"#),
        ] {
            assert!(
                matches!(parse_token(status, body), Err(TokenError::Rejected(_))),
                "{status} {body}"
            );
        }
        assert!(matches!(
            parse_token(429, ""),
            Err(TokenError::Unreachable(_))
        ));
        assert!(matches!(
            parse_token(404, ""),
            Err(TokenError::BadResponse(_))
        ));
    }
}
