//! Process-wide counters and histograms, rendered in the Prometheus text format.
//!
//! One static [`METRICS`] of atomics: recording is a relaxed atomic add on the hot
//! paths (no lock, no allocation), and `/metrics` reads them all. Labels are fixed
//! enums, so every series exists from the start (a zero is an answer too).
//!
//! Threads: recorded from `reg-conn-*`, `xmpp-io`, `wns-worker-*`, `wns-timer`; read by
//! `ops-http`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Registration actions, for `uwpx_registrations_total{action}`.
#[derive(Debug, Clone, Copy)]
pub enum RegAction {
    /// set_channel_uri.
    SetChannelUri,
    /// set_push_accounts / set_accounts.
    SetPushAccounts,
    /// request_test_push.
    RequestTestPush,
    /// A request that could not be decoded.
    Invalid,
}

/// Registration results, for `uwpx_registrations_total{result}`.
#[derive(Debug, Clone, Copy)]
pub enum RegResult {
    /// Answered status 1.
    Ok,
    /// Answered status 0 for a client-side problem (bad input, unknown device, …).
    Rejected,
    /// Answered status 0 for a server-side problem (store, WNS).
    Failed,
}

/// Publish outcomes, for `uwpx_publishes_total{outcome}`.
#[derive(Debug, Clone, Copy)]
pub enum PublishResult {
    /// WNS accepted it.
    Delivered,
    /// Folded into another push.
    Coalesced,
    /// WNS said the channel is gone.
    ChannelGone,
    /// WNS transient failure, queue full, timeout.
    Transient,
    /// Our WNS setup was refused, or our own bug.
    Misconfigured,
    /// No such node.
    UnknownNode,
    /// Missing or wrong secret, or a foreign domain.
    BadSecret,
}

impl PublishResult {
    /// The metric labels, indexed by `result as usize`; the log's summary lines use
    /// them too.
    pub const LABELS: [&'static str; 7] = PUBLISH;
}

/// Token endpoint answers, for `uwpx_wns_token_requests_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenResult {
    /// A token was issued.
    Issued,
    /// Our credentials were refused (400/401/403): a configuration error.
    Rejected,
    /// Unreachable, or an answer that is not a token.
    Failed,
}

const REG_ACTIONS: [&str; 4] = [
    "set_channel_uri",
    "set_push_accounts",
    "request_test_push",
    "invalid",
];
const REG_RESULTS: [&str; 3] = ["ok", "rejected", "failed"];
const TOKEN_RESULTS: [&str; 3] = ["issued", "rejected", "failed"];
const PUBLISH: [&str; 7] = [
    "delivered",
    "coalesced",
    "channel_gone",
    "transient",
    "misconfigured",
    "unknown_node",
    "bad_secret",
];
/// WNS status codes with their own series; others count as "other".
const WNS_CODES: [u16; 12] = [200, 400, 401, 403, 404, 405, 406, 410, 413, 500, 503, 0];
/// Latency buckets in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A fixed-bucket histogram.
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    const fn new() -> Self {
        Self {
            counts: [const { AtomicU64::new(0) }; BUCKETS.len() + 1],
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        cumulative += self.counts[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// All counters.
pub struct Metrics {
    registrations: [[AtomicU64; 3]; 4],
    publishes: [AtomicU64; 7],
    wns_responses: [AtomicU64; WNS_CODES.len() + 1],
    token_requests: [AtomicU64; 3],
    /// 1 while the token endpoint's last answer refused our credentials.
    credentials_rejected: AtomicU64,
    /// Publishes the XMPP thread read straight into their fields, with no XML tree
    /// (`xmpp::quick`): with a server that writes the plain shape, nearly all of them.
    publishes_without_tree: AtomicU64,
    /// Publishes decided together with others read in the same batch (PostgreSQL: one
    /// lookup and one coalescing statement for all of them).
    publishes_in_batches: AtomicU64,
    /// Time of one WNS HTTP request.
    pub wns_latency: Histogram,
    /// Time from a publish IQ's arrival to its reply.
    pub publish_latency: Histogram,
}

/// The process's metrics.
pub static METRICS: Metrics = Metrics::new();

impl Metrics {
    /// All zero.
    const fn new() -> Self {
        Self {
            registrations: [const { [const { AtomicU64::new(0) }; 3] }; 4],
            publishes: [const { AtomicU64::new(0) }; 7],
            wns_responses: [const { AtomicU64::new(0) }; WNS_CODES.len() + 1],
            token_requests: [const { AtomicU64::new(0) }; 3],
            credentials_rejected: AtomicU64::new(0),
            publishes_without_tree: AtomicU64::new(0),
            publishes_in_batches: AtomicU64::new(0),
            wns_latency: Histogram::new(),
            publish_latency: Histogram::new(),
        }
    }

    /// Counts a registration request.
    pub fn registration(&self, action: RegAction, result: RegResult) {
        self.registrations[action as usize][result as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a publish read without a tree.
    pub fn publish_without_tree(&self) {
        self.publishes_without_tree.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `n` publishes decided together.
    pub fn publishes_in_batch(&self, n: usize) {
        self.publishes_in_batches
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts a publish outcome.
    pub fn publish(&self, result: PublishResult) {
        self.publishes[result as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a WNS response by HTTP status; `None` for a transport failure.
    pub fn wns_response(&self, status: Option<u16>) {
        let i = match status {
            None => WNS_CODES.len(),
            Some(code) => WNS_CODES
                .iter()
                .position(|c| *c == code)
                .unwrap_or(WNS_CODES.len() - 1),
        };
        self.wns_responses[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a token endpoint answer; the credentials gauge follows the latest one.
    pub fn token_request(&self, result: TokenResult) {
        self.token_requests[result as usize].fetch_add(1, Ordering::Relaxed);
        self.credentials_rejected.store(
            u64::from(result == TokenResult::Rejected),
            Ordering::Relaxed,
        );
    }

    /// Appends the counters and histograms in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        out.push_str("# HELP uwpx_registrations_total Registration requests by action and result.\n# TYPE uwpx_registrations_total counter\n");
        for (a, action) in REG_ACTIONS.iter().enumerate() {
            for (r, result) in REG_RESULTS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "uwpx_registrations_total{{action=\"{action}\",result=\"{result}\"}} {}",
                    self.registrations[a][r].load(Ordering::Relaxed)
                );
            }
        }
        out.push_str("# HELP uwpx_publishes_total XEP-0357 publishes by outcome.\n# TYPE uwpx_publishes_total counter\n");
        for (i, outcome) in PUBLISH.iter().enumerate() {
            let _ = writeln!(
                out,
                "uwpx_publishes_total{{outcome=\"{outcome}\"}} {}",
                self.publishes[i].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP uwpx_publishes_read_without_tree_total Publishes read straight into their fields (the quick path); the rest were read as XML trees.\n# TYPE uwpx_publishes_read_without_tree_total counter\nuwpx_publishes_read_without_tree_total {}",
            self.publishes_without_tree.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP uwpx_publishes_decided_in_batches_total Publishes decided together with others read at the same time (PostgreSQL: one lookup and one coalescing statement for all).\n# TYPE uwpx_publishes_decided_in_batches_total counter\nuwpx_publishes_decided_in_batches_total {}",
            self.publishes_in_batches.load(Ordering::Relaxed)
        );
        out.push_str("# HELP uwpx_wns_responses_total WNS answers by HTTP status (\"transport\": none).\n# TYPE uwpx_wns_responses_total counter\n");
        for (i, code) in WNS_CODES.iter().enumerate() {
            let label = if *code == 0 {
                "other".to_owned()
            } else {
                code.to_string()
            };
            let _ = writeln!(
                out,
                "uwpx_wns_responses_total{{status=\"{label}\"}} {}",
                self.wns_responses[i].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "uwpx_wns_responses_total{{status=\"transport\"}} {}",
            self.wns_responses[WNS_CODES.len()].load(Ordering::Relaxed)
        );
        out.push_str("# HELP uwpx_wns_token_requests_total WNS token endpoint answers by result.\n# TYPE uwpx_wns_token_requests_total counter\n");
        for (i, result) in TOKEN_RESULTS.iter().enumerate() {
            let _ = writeln!(
                out,
                "uwpx_wns_token_requests_total{{result=\"{result}\"}} {}",
                self.token_requests[i].load(Ordering::Relaxed)
            );
        }
        gauge(
            out,
            "uwpx_wns_credentials_rejected",
            "1 while the WNS token endpoint refuses wns.packet_id/wns.client_secret (a configuration error).",
            self.credentials_rejected.load(Ordering::Relaxed),
        );
        self.wns_latency.render(
            out,
            "uwpx_wns_request_seconds",
            "Time of one WNS HTTP request.",
        );
        self.publish_latency.render(
            out,
            "uwpx_publish_reply_seconds",
            "Time from a publish IQ's arrival to its reply.",
        );
    }
}

/// A gauge line.
pub fn gauge(out: &mut String, name: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_series_with_its_labels() {
        let m = Metrics::new();
        m.registration(RegAction::SetPushAccounts, RegResult::Ok);
        m.publish(PublishResult::ChannelGone);
        m.publish_without_tree();
        m.publish_without_tree();
        m.publishes_in_batch(3);
        m.wns_response(Some(410));
        m.wns_response(Some(418));
        m.wns_response(None);
        m.wns_latency.observe(Duration::from_millis(3));
        let mut out = String::new();
        m.render(&mut out);
        assert!(
            out.contains("uwpx_registrations_total{action=\"set_push_accounts\",result=\"ok\"} 1")
        );
        assert!(out.contains("uwpx_registrations_total{action=\"invalid\",result=\"rejected\"} 0"));
        assert!(out.contains("uwpx_publishes_total{outcome=\"channel_gone\"} 1"));
        assert!(out.contains("\nuwpx_publishes_read_without_tree_total 2\n"));
        assert!(out.contains("\nuwpx_publishes_decided_in_batches_total 3\n"));
        assert!(out.contains("uwpx_wns_responses_total{status=\"410\"} 1"));
        assert!(out.contains("uwpx_wns_responses_total{status=\"other\"} 1"));
        assert!(out.contains("uwpx_wns_responses_total{status=\"transport\"} 1"));
        assert!(out.contains("uwpx_wns_request_seconds_bucket{le=\"0.0025\"} 0"));
        assert!(out.contains("uwpx_wns_request_seconds_bucket{le=\"0.005\"} 1"));
        assert!(out.contains("uwpx_wns_request_seconds_count 1"));
        assert!(out.contains("uwpx_wns_credentials_rejected 0"));
    }

    /// Issue 10 item 16: refused WNS credentials had no metric.
    #[test]
    fn rejected_credentials_show_until_a_token_is_issued() {
        let m = Metrics::new();
        m.token_request(TokenResult::Rejected);
        m.token_request(TokenResult::Rejected);
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("uwpx_wns_token_requests_total{result=\"rejected\"} 2"));
        assert!(out.contains("uwpx_wns_credentials_rejected 1"));
        m.token_request(TokenResult::Issued);
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("uwpx_wns_token_requests_total{result=\"issued\"} 1"));
        assert!(out.contains("uwpx_wns_credentials_rejected 0"));
    }
}
