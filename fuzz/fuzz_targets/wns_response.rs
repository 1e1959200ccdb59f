//! Fuzz target: the WNS notify client's HTTP response parser, bytes → response.
//!
//! Input layout: the first byte picks how the bytes arrive (0: all in one read, n: n
//! bytes per read, as TLS reads of any size would hand them over), then EOF. The rest
//! is what the server sends.
//!
//! Besides "no panic" and "no hang", it checks:
//! - how the bytes are split makes no difference (the result equals one whole read);
//! - the body kept is at most `BODY_LIMIT`, the status is final (not 1xx) and in range;
//! - a connection is only ever reusable after a response that ended well.
#![no_main]

use libfuzzer_sys::fuzz_target;
use uwpx_push_server::wns::http::response::{BODY_LIMIT, parse_all};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    let chunk = match mode {
        0 => usize::MAX,
        n => usize::from(n),
    };
    let (response, result) = parse_all(bytes, chunk);
    if chunk != usize::MAX {
        let whole = parse_all(bytes, usize::MAX);
        assert_eq!((&response, &result), (&whole.0, &whole.1), "the split changed the result");
    }
    if let Err(e) = &result {
        assert!(!e.0.is_empty(), "an error that says nothing");
    }
    if let Some(r) = &response {
        assert!(r.body.len() <= BODY_LIMIT);
        assert!((200..=999).contains(&r.status), "status {}", r.status);
        assert!(!r.reusable || result.is_ok(), "reusable after an error");
    }
});
