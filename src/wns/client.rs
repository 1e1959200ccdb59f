//! HTTP to WNS: the token request over a ureq `Agent` (rare: once a day or after a 401),
//! the notify POST over the project's own keep-alive TLS client ([`super::http`], built
//! for that one request shape), and [`classify`], the one place that turns an HTTP
//! answer into a [`Verdict`]. Both share one DNS cache ([`CachingResolver`]).
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
//! Threads: `wns-worker-*`. No locks of its own (the pools' and the DNS cache's locks are
//! brief).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use ureq::Agent;
use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

pub use super::http::CachingResolver;
pub use super::http::response::{Answer, Diagnostics};
use super::http::{Https, PoolLimits};
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
    /// The token request only.
    agent: Agent,
    /// The notify POST.
    https: Https,
    resolver: Arc<CachingResolver>,
    token_url: String,
    client_id: String,
    client_secret: String,
}

/// The token request's shortest timeout (this agent only makes that request). The
/// token endpoint is another service than the notification endpoint, and slower: a
/// short `wns.timeout_ms`, chosen for quick retries of notifications, must not make
/// every token request fail; the request is single-flighted, so one slow one holds up
/// the workers once, within each push's deadline.
const TOKEN_TIMEOUT_MIN: Duration = Duration::from_secs(2);
/// Longest token response body read.
const BODY_LIMIT: u64 = super::http::response::BODY_LIMIT as u64;

impl WnsClient {
    /// Builds the token request's agent and the notify client, sharing one DNS cache.
    /// `extra_roots` are PEM certificates trusted in addition to the system's (for tests
    /// and private CAs). Fails only if native-tls cannot set up TLS or refuses a root.
    pub fn new(cfg: &WnsConfig, extra_roots: &[Certificate<'static>]) -> std::io::Result<Self> {
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
        let limits = PoolLimits {
            per_host: cfg.workers * 2 + 4,
            total: cfg.workers * 4 + 16,
        };
        let config = Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .max_redirects(0)
            .max_redirects_will_error(false)
            .timeout_global(Some(cfg.timeout.max(TOKEN_TIMEOUT_MIN)))
            .max_idle_connections(limits.total)
            .max_idle_connections_per_host(limits.per_host)
            .user_agent(concat!("uwpx-push-server/", env!("CARGO_PKG_VERSION")))
            .build();
        let resolver = Arc::new(CachingResolver::new(RESOLVE_TTL));
        let agent = Agent::with_parts(
            config,
            DefaultConnector::default(),
            SharedResolver(resolver.clone()),
        );
        // native-tls trusts the system store by default; the extra roots add to it.
        let mut tls = native_tls::TlsConnector::builder();
        for root in extra_roots {
            let cert = native_tls::Certificate::from_der(root.der())
                .map_err(|e| std::io::Error::other(format!("an extra root certificate: {e}")))?;
            tls.add_root_certificate(cert);
        }
        let tls = tls
            .build()
            .map_err(|e| std::io::Error::other(format!("TLS set-up for WNS: {e}")))?;
        let headers = SendHeaders {
            cache_policy: cfg.cache_policy.clone(),
            ttl_s: cfg.ttl_s,
            priority: cfg.priority,
        };
        let https = Https::new(tls, resolver.clone(), cfg.timeout, headers.lines(), limits);
        let (client_id, client_secret) = cfg
            .credentials
            .as_ref()
            .map(|c| (c.packet_id.clone(), c.client_secret.expose().to_owned()))
            .unwrap_or_default();
        Ok(Self {
            agent,
            https,
            resolver,
            token_url: cfg.token_url.clone(),
            client_id,
            client_secret,
        })
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
    /// time); `wns.timeout_ms` caps it too.
    pub fn post(
        &self,
        uri: &ChannelUri,
        payload: &[u8],
        bearer: &str,
        timeout: Duration,
    ) -> Answer {
        self.https.post(uri, payload, bearer, timeout)
    }

    /// Opens up to `connections` TLS connections to `uri`'s host and keeps them idle
    /// for the next pushes there (at most the per-host cap); returns how many it opened.
    /// Failures are logged at debug. Sends nothing: call it for allowed hosts only all
    /// the same.
    pub fn preconnect(&self, uri: &ChannelUri, connections: usize) -> usize {
        self.https.preconnect(uri, connections)
    }

    /// Idle notify connections in the pool (tests, metrics).
    pub fn idle_connections(&self) -> usize {
        self.https.idle()
    }

    /// Notify connections opened so far (tests, metrics).
    pub fn connections_opened(&self) -> u64 {
        self.https.opened()
    }

    /// The DNS cache shared by the token request and the notify client.
    pub fn resolver(&self) -> &CachingResolver {
        &self.resolver
    }
}

impl SendHeaders {
    /// The header lines for the set values, each ending in CRLF.
    pub fn lines(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        if let Some(p) = &self.cache_policy {
            let _ = write!(out, "X-WNS-Cache-Policy: {p}\r\n");
        }
        if let Some(ttl) = self.ttl_s {
            let _ = write!(out, "X-WNS-TTL: {ttl}\r\n");
        }
        if let Some(p) = self.priority {
            let _ = write!(out, "X-WNS-PRIORITY: {p}\r\n");
        }
        out
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

/// The shared [`CachingResolver`] as ureq's resolver: ureq resolves the host of every
/// request before it looks in its connection pool, and with a timeout set its default
/// resolver does so in a freshly spawned thread: a thread and a lookup per request
/// (issue 13). Through the cache a host is looked up at most once per [`RESOLVE_TTL`].
#[derive(Debug)]
struct SharedResolver(Arc<CachingResolver>);

impl Resolver for SharedResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        _config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let authority = uri.authority().ok_or(ureq::Error::HostNotFound)?;
        let port = authority
            .port_u16()
            .or(match uri.scheme_str() {
                Some("https") => Some(443),
                Some("http") => Some(80),
                _ => None,
            })
            .ok_or(ureq::Error::HostNotFound)?;
        let addrs = self
            .0
            .resolve(authority.host(), port, *timeout.after)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::TimedOut => ureq::Error::Timeout(timeout.reason),
                std::io::ErrorKind::NotFound => ureq::Error::HostNotFound,
                _ => ureq::Error::Io(e),
            })?;
        let mut out = self.empty();
        for addr in addrs.iter() {
            if out.try_push(*addr).is_err() {
                break;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The token request (through ureq) and the notify client share one cache: one
    /// lookup per host and TTL, whatever the path, and whoever asks first.
    #[test]
    fn a_host_is_looked_up_once_per_ttl_not_once_per_push() {
        let config = ureq::config::Config::default();
        let a: ureq::http::Uri = "https://localhost:4431/?token=a".parse().unwrap();
        let b: ureq::http::Uri = "https://localhost:4431/?token=b".parse().unwrap();
        let other: ureq::http::Uri = "https://127.0.0.1:4431/".parse().unwrap();
        let shared = Arc::new(CachingResolver::new(RESOLVE_TTL));
        let r = SharedResolver(shared.clone());
        for uri in [&a, &b, &a, &other, &other] {
            let addrs = r.resolve(uri, &config, NextTimeout::default()).unwrap();
            assert!(!addrs.is_empty());
        }
        let t = Duration::from_secs(5);
        for _ in 0..3 {
            assert!(!shared.resolve("localhost", 4431, t).unwrap().is_empty());
        }
        assert_eq!(shared.lookups(), 2, "one per host, whatever the path");
        shared.resolve("localhost", 443, t).unwrap();
        assert_eq!(shared.lookups(), 3, "another port is another entry");
        let fresh = CachingResolver::new(Duration::ZERO);
        for _ in 0..3 {
            fresh.resolve("localhost", 4431, t).unwrap();
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
