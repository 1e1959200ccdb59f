//! The benchmarks' registered devices: rows written straight into a SQLite file the
//! server's own schema code made, many times faster than registering each device.
#![allow(dead_code)]

use rusqlite::params;

/// Fills the database with `n` devices, one account each: device `i` has node
/// [`node`]`(i)` and secret `s` followed by `i` in 40 digits.
pub fn populate(db: &std::path::Path, n: usize, channel: &dyn Fn(usize) -> String) {
    // Let the server's own schema code create the file first.
    uwpx_push_server::store::Store::open_sqlite(db, uwpx_push_server::config::Synchronous::Normal)
        .unwrap()
        .close()
        .unwrap();
    let mut conn = rusqlite::Connection::open(db).unwrap();
    let tx = conn.transaction().unwrap();
    // Seen now: the expiry sweep at start must not take them.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    {
        let mut dev = tx.prepare("INSERT INTO devices (device_id, channel_uri, version, account_form, created_at, updated_at, last_seen_at) VALUES (?1, ?2, 2, 'account_id', ?3, ?3, ?3)").unwrap();
        let mut acc = tx.prepare("INSERT INTO accounts (device_id, account_key, domain, node, secret, created_at) VALUES (?1, ?2, NULL, ?3, ?4, 0)").unwrap();
        for i in 0..n {
            let d = format!("{i:064x}");
            dev.execute(params![d, channel(i), now]).unwrap();
            acc.execute(params![
                d,
                format!("{:064x}", i + 7),
                node(i),
                format!("s{i:040}")
            ])
            .unwrap();
        }
    }
    tx.commit().unwrap();
}

/// Node names as the server makes them: 32 random-looking hex characters (a shared
/// prefix would make every index comparison unrealistically long).
pub fn node(i: usize) -> String {
    let mut z = (i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    format!("{z:016x}{:016x}", z.rotate_left(17) ^ i as u64)
}
