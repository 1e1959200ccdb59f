//! PEM files: the listener's certificate and key (`tcp.tls`), and extra trusted roots.
//!
//! Threads: `main`, once, while loading. Reads files; no network.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::path::Path;
use std::rc::Rc;

use super::doc::Doc;
use super::files::{MAX_PEM_BYTES, read_regular};
use super::keys::{self, Key, Text};
use super::{ConfigError, Pem, TlsConfig, invalid};

/// Reads the PEM file at `path`, named by `key`: a regular file of bounded size.
/// `if_missing` is appended to the error when the file does not exist.
fn read_file(path: &Path, key: &Key<Text>, if_missing: &str) -> Result<Vec<u8>, ConfigError> {
    read_regular(path, MAX_PEM_BYTES).map_err(|e| {
        let hint = if e.kind() == io::ErrorKind::NotFound {
            if_missing
        } else {
            ""
        };
        invalid(
            key.path,
            format!("cannot read {}: {e}{hint}", path.display()),
        )
    })
}

/// The command that makes a test certificate, also in the README.
pub(super) const TEST_CERT_COMMAND: &str = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=localhost -keyout server.key -out server.crt";

/// Reads a PEM file of certificates named by `key`, if set.
pub(super) fn read_pem(doc: &Doc<'_>, key: &Key<Text>) -> Result<Option<Pem>, ConfigError> {
    let Some(p) = doc.path(key)? else {
        return Ok(None);
    };
    let pem = read_file(&p, key, "")?;
    if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
        return Err(invalid(
            key.path,
            format!("{} holds no PEM certificate", p.display()),
        ));
    }
    Ok(Some(Pem(pem)))
}

/// `tcp.tls.*`: reads both files and builds the identity, so a bad file fails at load.
pub(super) fn load(doc: &Doc<'_>) -> Result<TlsConfig, ConfigError> {
    let cert_path = doc.base().join(doc.required(&keys::TCP_TLS_CERT_PATH)?);
    let key_path = doc.base().join(doc.required(&keys::TCP_TLS_KEY_PATH)?);
    // A missing certificate or key (as with the example configuration copied alone)
    // says what to do.
    let hint = format!(
        "; remove `tcp.tls` for plain TCP, or make a test certificate beside the configuration with `{TEST_CERT_COMMAND}`"
    );
    let cert = read_file(&cert_path, &keys::TCP_TLS_CERT_PATH, &hint)?;
    let key = read_file(&key_path, &keys::TCP_TLS_KEY_PATH, &hint)?;
    let has = |needle: &[u8]| key.windows(needle.len()).any(|w| w == needle);
    if has(b"BEGIN RSA PRIVATE KEY") || has(b"BEGIN EC PRIVATE KEY") {
        return Err(invalid(
            keys::TCP_TLS_KEY_PATH.path,
            "holds a PKCS#1/SEC1 key; convert it with `openssl pkcs8 -topk8 -nocrypt -in old.key -out new.key`",
        ));
    }
    let identity = native_tls::Identity::from_pkcs8(&cert, &key).map_err(|e| {
        invalid(
            keys::TCP_TLS.path,
            format!("certificate or key is not usable: {e}"),
        )
    })?;
    check_pair(&identity).map_err(|e| {
        invalid(
            keys::TCP_TLS_KEY_PATH.path,
            format!(
                "{}: the key does not belong to the certificate {} (the file's first, leaf certificate; a test TLS handshake with them fails: {e})",
                key_path.display(),
                cert_path.display()
            ),
        )
    })?;
    Ok(TlsConfig {
        cert_path,
        key_path,
        identity,
    })
}

/// Proves that the key belongs to the certificate by doing what a client will do: a TLS
/// handshake against an acceptor built from `identity`, over an in-memory pipe, with a
/// connector that accepts any certificate (only the pairing is in question here).
///
/// native-tls has no pair check, and its OpenSSL backend silently drops a key that does
/// not match (every client handshake then fails). This check needs no extra crate and
/// works the same with every native-tls backend; it costs one handshake at load.
fn check_pair(identity: &native_tls::Identity) -> Result<(), String> {
    handshake_in_memory(identity)
        .map_err(|e| e.to_string())?
        .then_some(())
        .ok_or_else(|| "the handshake did not finish".to_owned())
}

/// Whether a handshake with `identity` finishes; an error when either side fails.
fn handshake_in_memory(identity: &native_tls::Identity) -> Result<bool, native_tls::Error> {
    let acceptor = native_tls::TlsAcceptor::builder(identity.clone())
        .min_protocol_version(Some(native_tls::Protocol::Tlsv12))
        .build()?;
    let connector = native_tls::TlsConnector::builder()
        .danger_accept_invalid_certs(true)
        .danger_accept_invalid_hostnames(true)
        .build()?;
    let (client_end, server_end) = MemoryPipe::pair();
    let mut client = Side::from(connector.connect("localhost", client_end))?;
    let mut server = Side::from(acceptor.accept(server_end))?;
    // A TLS 1.2 or 1.3 handshake takes two round trips; a few more are slack.
    for _ in 0..8 {
        if matches!((&client, &server), (Side::Done, Side::Done)) {
            return Ok(true);
        }
        client = client.resume()?;
        server = server.resume()?;
    }
    Ok(false)
}

/// One side of an in-memory handshake.
enum Side {
    Waiting(native_tls::MidHandshakeTlsStream<MemoryPipe>),
    Done,
}

impl Side {
    fn from(
        attempt: Result<native_tls::TlsStream<MemoryPipe>, native_tls::HandshakeError<MemoryPipe>>,
    ) -> Result<Self, native_tls::Error> {
        match attempt {
            Ok(_) => Ok(Self::Done),
            Err(native_tls::HandshakeError::WouldBlock(mid)) => Ok(Self::Waiting(mid)),
            Err(native_tls::HandshakeError::Failure(e)) => Err(e),
        }
    }

    fn resume(self) -> Result<Self, native_tls::Error> {
        match self {
            Self::Waiting(mid) => Self::from(mid.handshake()),
            Self::Done => Ok(Self::Done),
        }
    }
}

/// One end of a pair of in-memory byte queues; reading an empty queue is `WouldBlock`,
/// so each side's handshake returns control instead of waiting.
struct MemoryPipe {
    inbox: Rc<RefCell<VecDeque<u8>>>,
    outbox: Rc<RefCell<VecDeque<u8>>>,
}

impl MemoryPipe {
    fn pair() -> (Self, Self) {
        let (a, b) = (Rc::default(), Rc::default());
        (
            Self {
                inbox: Rc::clone(&a),
                outbox: Rc::clone(&b),
            },
            Self {
                inbox: b,
                outbox: a,
            },
        )
    }
}

impl io::Read for MemoryPipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut inbox = self.inbox.borrow_mut();
        if inbox.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(inbox.len());
        for (dst, src) in buf.iter_mut().zip(inbox.drain(..n)) {
            *dst = src;
        }
        Ok(n)
    }
}

impl io::Write for MemoryPipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outbox.borrow_mut().extend(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
