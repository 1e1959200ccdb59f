//! The fake WNS as a program, for the demo and manual runs:
//! `cargo run --example fake-wns -- --port 8443 --cert c.pem --key k.pem`
//! It prints every channel POST (path, type, body) to stdout.

#[path = "lib.rs"]
mod fake;

use std::sync::atomic::Ordering;

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut port, mut cert, mut key) = (0u16, None, None);
    while let Some(a) = args.next() {
        let mut val = || args.next().expect("option needs a value");
        match a.as_str() {
            "--port" => port = val().parse().expect("--port N"),
            "--cert" => cert = Some(val()),
            "--key" => key = Some(val()),
            other => {
                eprintln!(
                    "usage: fake-wns --port N --cert CERT.pem --key KEY.pem (PKCS#8); unknown {other}"
                );
                std::process::exit(2);
            }
        }
    }
    let (Some(cert), Some(key)) = (cert, key) else {
        eprintln!("usage: fake-wns --port N --cert CERT.pem --key KEY.pem (PKCS#8)");
        std::process::exit(2);
    };
    let fake = fake::FakeWns::start(
        &std::fs::read(cert).expect("read cert"),
        &std::fs::read(key).expect("read key"),
        port,
        false,
    );
    fake.verbose.store(true, Ordering::Relaxed);
    println!(
        "[fake WNS] listening on https://localhost:{}",
        fake.addr.port()
    );
    println!("[fake WNS] token endpoint {}", fake.token_url());
    loop {
        std::thread::park();
    }
}
