//! Where client mode connects when `xmpp.host` is not set: the DNS SRV records of the
//! JID's domain (RFC 6120 §3.2.1), `_xmpp-client._tcp` (STARTTLS) together with
//! `_xmpps-client._tcp` (TLS from the first byte, XEP-0368), merged and tried in
//! priority order, and by weight within a priority (RFC 2782). A domain without
//! records, or a DNS server that does not answer, falls back to the domain itself on
//! `xmpp.port` (RFC 6120 §3.2.2); a single target of `.` means the domain offers no
//! client service. Target names are resolved by the system (`getaddrinfo`, so
//! /etc/hosts counts), and every address of every target is tried in turn; only when
//! all refuse is the attempt a failure. Whatever the target, the certificate is still
//! verified against the JID's domain (client.rs), so a forged SRV answer cannot
//! redirect the login to a server without the domain's certificate.
//!
//! The query is one UDP packet (TCP if the answer is truncated) to the first
//! `nameserver` of /etc/resolv.conf, built and parsed with `simple-dns`: a blocking
//! socket fits the `xmpp-io` thread, where an async resolver would need a runtime.
//! Tests point it at their own DNS server with the environment variable
//! `UWPX_TEST_NAMESERVER=127.0.0.1:PORT`; nothing else reads it.
//!
//! Threads: `xmpp-io`. No locks.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::time::Duration;

use simple_dns::rdata::RData;
use simple_dns::{CLASS, Name, Packet, PacketFlag, Question, RCODE, TYPE};

use super::XmppError;

/// The environment variable that overrides /etc/resolv.conf, for tests.
pub const TEST_NAMESERVER_ENV: &str = "UWPX_TEST_NAMESERVER";

/// How long one connection attempt and one DNS question may take.
const TIMEOUT: Duration = Duration::from_secs(10);
const DNS_TIMEOUT: Duration = Duration::from_secs(3);

/// How a target expects the stream to be secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// Plain TCP, then STARTTLS (`_xmpp-client._tcp`, or `xmpp.host`).
    StartTls,
    /// TLS from the first byte (`_xmpps-client._tcp`).
    DirectTls,
}

/// One place to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// STARTTLS or direct TLS.
    pub security: Security,
}

/// An SRV record as read from DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Srv {
    priority: u16,
    weight: u16,
    port: u16,
    target: String,
    security: Security,
}

/// The places to try for `domain`, best first. `port` is the fallback port.
pub fn targets(domain: &str, port: u16) -> Result<Vec<Target>, XmppError> {
    let fallback = || {
        vec![Target {
            host: domain.to_owned(),
            port,
            security: Security::StartTls,
        }]
    };
    let Some(ns) = nameserver() else {
        log::debug!("xmpp: no nameserver known; connecting to {domain}:{port}");
        return Ok(fallback());
    };
    let mut records = Vec::new();
    for (prefix, security) in [
        ("_xmpps-client._tcp", Security::DirectTls),
        ("_xmpp-client._tcp", Security::StartTls),
    ] {
        let name = format!("{prefix}.{domain}");
        match query_srv(ns, &name) {
            Ok(found) => records.extend(found.into_iter().map(
                |(priority, weight, port, target)| Srv {
                    priority,
                    weight,
                    port,
                    target,
                    security,
                },
            )),
            Err(e) => log::info!("xmpp: SRV lookup of {name} via {ns} failed: {e}"),
        }
    }
    if records.is_empty() {
        return Ok(fallback());
    }
    if records.len() == 1 && records[0].target.is_empty() {
        return Err(XmppError::Protocol(format!(
            "{domain} says (SRV target \".\") that it offers no XMPP client service"
        )));
    }
    records.retain(|r| !r.target.is_empty());
    Ok(order(records, random_u32)
        .into_iter()
        .map(|r| Target {
            host: r.target,
            port: r.port,
            security: r.security,
        })
        .collect())
}

/// RFC 2782 order: by priority; within one, repeatedly a weighted random pick (zero
/// weights first, so they are picked only by a draw of 0).
fn order(mut records: Vec<Srv>, mut random: impl FnMut() -> u32) -> Vec<Srv> {
    records.sort_by_key(|r| (r.priority, r.weight != 0));
    let mut out = Vec::with_capacity(records.len());
    while !records.is_empty() {
        let priority = records[0].priority;
        let same = records
            .iter()
            .take_while(|r| r.priority == priority)
            .count();
        let total: u32 = records[..same].iter().map(|r| u32::from(r.weight)).sum();
        let draw = if total == 0 {
            0
        } else {
            random() % (total + 1)
        };
        let mut running = 0u32;
        let pick = records[..same]
            .iter()
            .position(|r| {
                running += u32::from(r.weight);
                running >= draw
            })
            .unwrap_or(0);
        out.push(records.remove(pick));
    }
    out
}

/// Connects to the first target and address that accepts, logging each refusal.
pub fn dial_any(targets: &[Target]) -> Result<(TcpStream, Target), XmppError> {
    let mut last = None;
    for t in targets {
        match dial(&t.host, t.port) {
            Ok(tcp) => return Ok((tcp, t.clone())),
            Err(e) => {
                log::info!("xmpp: cannot connect to {}:{}: {e}", t.host, t.port);
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| XmppError::Protocol("no address to connect to".into())))
}

/// Connects to every address of `host` in turn until one accepts; 10 s timeouts for the
/// login phase.
pub fn dial(host: &str, port: u16) -> Result<TcpStream, XmppError> {
    let mut last = None;
    for addr in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, TIMEOUT) {
            Ok(tcp) => {
                tcp.set_nodelay(true)?;
                tcp.set_read_timeout(Some(TIMEOUT))?;
                tcp.set_write_timeout(Some(TIMEOUT))?;
                return Ok(tcp);
            }
            Err(e) => {
                log::debug!("xmpp: {addr} ({host}) refused: {e}");
                last = Some(e);
            }
        }
    }
    Err(last.map_or_else(
        || XmppError::Protocol(format!("{host} does not resolve")),
        XmppError::Io,
    ))
}

/// The DNS server to ask: the test override, else the first of /etc/resolv.conf.
fn nameserver() -> Option<SocketAddr> {
    if let Ok(v) = std::env::var(TEST_NAMESERVER_ENV) {
        return v.parse().ok();
    }
    let mut text = String::new();
    std::fs::File::open("/etc/resolv.conf")
        .ok()?
        .take(64 * 1024)
        .read_to_string(&mut text)
        .ok()?;
    first_nameserver(&text)
}

fn first_nameserver(resolv_conf: &str) -> Option<SocketAddr> {
    resolv_conf.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        (words.next() == Some("nameserver"))
            .then(|| words.next())
            .flatten()
            .and_then(|a| a.parse::<std::net::IpAddr>().ok())
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

/// Asks `ns` for the SRV records of `name`: (priority, weight, port, target without
/// the trailing dot; empty for `.`). No such name is `Ok(empty)`.
fn query_srv(ns: SocketAddr, name: &str) -> Result<Vec<(u16, u16, u16, String)>, String> {
    let id = u16::try_from(random_u32() & 0xffff).unwrap_or(0);
    let mut q = Packet::new_query(id);
    q.set_flags(PacketFlag::RECURSION_DESIRED);
    let qname = Name::new(name).map_err(|e| format!("bad name: {e}"))?;
    q.questions.push(Question::new(
        qname,
        TYPE::SRV.into(),
        CLASS::IN.into(),
        false,
    ));
    let bytes = q.build_bytes_vec().map_err(|e| e.to_string())?;
    let mut answer = ask_udp(ns, &bytes, id)?;
    if Packet::parse(&answer)
        .map_err(|e| e.to_string())?
        .has_flags(PacketFlag::TRUNCATION)
    {
        answer = ask_tcp(ns, &bytes)?;
    }
    let packet = Packet::parse(&answer).map_err(|e| e.to_string())?;
    if packet.id() != id {
        return Err("the answer's id does not match".into());
    }
    match packet.rcode() {
        RCODE::NoError => {}
        RCODE::NameError => return Ok(Vec::new()),
        other => return Err(format!("DNS error {other:?}")),
    }
    Ok(packet
        .answers
        .iter()
        .filter_map(|rr| match &rr.rdata {
            RData::SRV(s) if rr.name.to_string().eq_ignore_ascii_case(name) => Some((
                s.priority,
                s.weight,
                s.port,
                s.target.to_string().trim_end_matches('.').to_owned(),
            )),
            _ => None,
        })
        .collect())
}

fn ask_udp(ns: SocketAddr, query: &[u8], id: u16) -> Result<Vec<u8>, String> {
    let any: SocketAddr = if ns.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let sock = UdpSocket::bind(any).map_err(|e| e.to_string())?;
    sock.connect(ns).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(DNS_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 4096];
    for _ in 0..2 {
        sock.send(query).map_err(|e| e.to_string())?;
        loop {
            match sock.recv(&mut buf) {
                // Ignore stray datagrams with another id (a late answer to a retry).
                Ok(n) if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id => {
                    return Ok(buf[..n].to_vec());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
    Err("no answer".into())
}

fn ask_tcp(ns: SocketAddr, query: &[u8]) -> Result<Vec<u8>, String> {
    let mut tcp = TcpStream::connect_timeout(&ns, DNS_TIMEOUT).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(DNS_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let len = u16::try_from(query.len()).map_err(|e| e.to_string())?;
    tcp.write_all(&len.to_be_bytes())
        .and_then(|()| tcp.write_all(query))
        .map_err(|e| e.to_string())?;
    let mut len = [0u8; 2];
    tcp.read_exact(&mut len).map_err(|e| e.to_string())?;
    let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
    tcp.read_exact(&mut answer).map_err(|e| e.to_string())?;
    Ok(answer)
}

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    u32::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn srv(priority: u16, weight: u16, target: &str) -> Srv {
        Srv {
            priority,
            weight,
            port: 5222,
            target: target.into(),
            security: Security::StartTls,
        }
    }

    #[test]
    fn srv_records_are_tried_by_priority_then_weight() {
        let records = vec![srv(20, 0, "c"), srv(10, 0, "b"), srv(10, 5, "a")];
        // A draw of 0 picks the zero-weight record of priority 10 first.
        let got: Vec<String> = order(records.clone(), || 0)
            .into_iter()
            .map(|r| r.target)
            .collect();
        assert_eq!(got, ["b", "a", "c"]);
        // A draw past the zero weights picks the weighted one first.
        let got: Vec<String> = order(records, || 3).into_iter().map(|r| r.target).collect();
        assert_eq!(got, ["a", "b", "c"]);
    }

    #[test]
    fn the_first_nameserver_of_resolv_conf_is_used() {
        let conf = "# c\nsearch example.org\nnameserver 10.0.0.53\nnameserver 10.0.0.54\n";
        assert_eq!(first_nameserver(conf), "10.0.0.53:53".parse().ok());
        assert_eq!(
            first_nameserver("nameserver ::1\n"),
            "[::1]:53".parse().ok()
        );
        assert_eq!(first_nameserver("search x\n"), None);
    }

    #[test]
    fn every_address_is_tried_until_one_accepts() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_port = closed.local_addr().unwrap().port();
        drop(closed);
        let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open_port = open.local_addr().unwrap().port();
        let targets = [closed_port, open_port].map(|port| Target {
            host: "127.0.0.1".into(),
            port,
            security: Security::StartTls,
        });
        let (_, used) = dial_any(&targets).unwrap();
        assert_eq!(used.port, open_port);
    }
}
