//! A byte stream over TCP, plain or TLS, that still gives access to its socket for
//! timeouts and half-close. Shared by the registration connections and the XMPP link.
//!
//! Threads: any. No locks.

use std::io::{Read, Write};
use std::net::TcpStream;

use native_tls::TlsStream;

/// A stream whose underlying TCP socket can be reached.
pub trait Socket: Read + Write {
    /// The TCP socket under the stream.
    fn tcp(&self) -> &TcpStream;
}

impl Socket for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Socket for TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref()
    }
}
