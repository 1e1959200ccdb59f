//! Running the server for years: device expiry, the health and metrics endpoint, and
//! the process-wide metrics.
//!
//! Threads: `ops-expiry` (hourly sweep), `ops-http` (only with `metrics.listen`).

pub mod expiry;
pub mod http;
pub mod metrics;
