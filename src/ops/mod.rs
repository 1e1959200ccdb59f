//! Running the server for years: device expiry and the health and metrics endpoint.
//!
//! Threads: `ops-expiry` (hourly sweep), `ops-http` (only with `metrics.listen`).

pub mod expiry;
pub mod http;
