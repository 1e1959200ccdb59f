//! PEM files: the listener's certificate and key (`tcp.tls`), and extra trusted roots.
//!
//! Threads: `main`, once, while loading. Reads files; no network.

use std::path::Path;

use super::doc::Doc;
use super::files::{MAX_PEM_BYTES, read_regular};
use super::keys::{self, Key, Text};
use super::{ConfigError, Pem, TlsConfig, invalid};

/// Reads the PEM file at `path`, named by `key`: a regular file of bounded size.
fn read_file(path: &Path, key: &Key<Text>) -> Result<Vec<u8>, ConfigError> {
    read_regular(path, MAX_PEM_BYTES)
        .map_err(|e| invalid(key.path, format!("cannot read {}: {e}", path.display())))
}

/// Reads a PEM file of certificates named by `key`, if set.
pub(super) fn read_pem(doc: &Doc<'_>, key: &Key<Text>) -> Result<Option<Pem>, ConfigError> {
    let Some(p) = doc.path(key)? else {
        return Ok(None);
    };
    let pem = read_file(&p, key)?;
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
    let cert = read_file(&cert_path, &keys::TCP_TLS_CERT_PATH)?;
    let key = read_file(&key_path, &keys::TCP_TLS_KEY_PATH)?;
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
    Ok(TlsConfig {
        cert_path,
        key_path,
        identity,
    })
}
