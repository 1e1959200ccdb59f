//! Fuzz target: the registration codec, bytes → frames → request or rejection → answer.
//!
//! Input layout: the first byte picks how the stream is cut into reads (1 to 64 bytes
//! per read, or all at once) and the request size cap (512 bytes or the default 64 KiB),
//! the rest is the byte stream a client sends. The stream goes through the same steps as
//! a registration connection (`registration/conn.rs`): [`Framer`], [`decode`] for each
//! frame and for the rest at end of input, [`encode`] for the answer.
//!
//! Besides "no panic", it checks what the client relies on (uwpx-protocol.md §3.2):
//! - framing does not depend on how the bytes were cut into reads;
//! - a frame holds no NUL and fits the cap;
//! - every answer is one JSON object followed by exactly one NUL, with `action`
//!   `response`, `status` 0 or 1, and the version the decoder chose;
//! - a set_push_accounts answer echoes each account string byte-exact, in order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use uwpx_push_server::registration::codec::{Action, Frame, Framer, Rules, decode};
use uwpx_push_server::registration::wire::{AccountAnswer, Answer, encode};
use uwpx_push_server::types::{ChannelHosts, Node, ProtocolVersion, Secret};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, stream)) = data.split_first() else {
        return;
    };
    let limit = if mode & 0x80 != 0 { 512 } else { 64 * 1024 };
    let chunk = match mode & 0x7f {
        0 => stream.len().max(1),
        n => usize::from(n % 64) + 1,
    };
    let rules = Rules {
        max_accounts: 32,
        channel_hosts: ChannelHosts::new(vec!["notify.windows.com".into()]),
    };

    let whole = frames(stream, stream.len().max(1), limit);
    let cut = frames(stream, chunk, limit);
    assert_eq!(whole, cut, "framing depends on how the reads were cut");

    for frame in &whole {
        let Frame::Request(bytes) = frame else {
            break; // the connection is answered and closed
        };
        assert!(!bytes.contains(&0), "a frame holds a NUL");
        assert!(bytes.len() < limit, "a frame over the cap got through");
        answer(bytes, &rules);
    }
});

/// The frames of `stream` read `chunk` bytes at a time, up to the first `TooLarge`,
/// then what is left at end of input (as the connection does on EOF).
fn frames(stream: &[u8], chunk: usize, limit: usize) -> Vec<Frame> {
    let mut framer = Framer::new(limit);
    let mut out = Vec::new();
    for part in stream.chunks(chunk) {
        framer.push(part);
        while let Some(frame) = framer.next_frame() {
            let too_large = frame == Frame::TooLarge;
            out.push(frame);
            if too_large {
                return out;
            }
        }
    }
    if let Some(rest) = framer.take_rest() {
        out.push(Frame::Request(rest));
    }
    out
}

/// Decodes one frame, encodes the answer a server would give and checks its shape.
fn answer(frame: &[u8], rules: &Rules) {
    let (version, result, echoes) = match decode(frame, rules) {
        Ok(req) => {
            let (answer, echoes) = match req.action {
                Action::SetPushAccounts(list) => {
                    let mut accounts = Vec::new();
                    let mut echoes = Vec::new();
                    for entry in list.entries {
                        let (Ok(node), Ok(secret), Some(form)) =
                            (Node::generate(), Secret::generate(), list.form)
                        else {
                            return;
                        };
                        echoes.push((form.json_key(), entry.echo.clone()));
                        accounts.push(AccountAnswer {
                            form,
                            echo: entry.echo,
                            node,
                            secret,
                            success: true,
                        });
                    }
                    let answer = Answer::Accounts {
                        push_jid: "push.example.org".into(),
                        accounts,
                    };
                    (answer, echoes)
                }
                Action::SetChannelUri(_) | Action::RequestTestPush => (Answer::Done, Vec::new()),
            };
            (req.version, Ok(answer), echoes)
        }
        Err(rejected) => (rejected.version, Err(rejected.error), Vec::new()),
    };
    let bytes = encode(version, &result);
    let (last, body) = bytes.split_last().expect("an answer is never empty");
    assert_eq!(*last, 0, "an answer ends with a NUL");
    assert!(!body.contains(&0), "an answer holds a second NUL");
    let value: Value = serde_json::from_slice(body).expect("an answer is JSON");
    let obj = value.as_object().expect("an answer is a JSON object");
    assert_eq!(obj.get("action").and_then(Value::as_str), Some("response"));
    let status = obj.get("status").and_then(Value::as_u64);
    assert_eq!(status, Some(u64::from(result.is_ok())));
    assert_eq!(
        obj.get("version").and_then(Value::as_u64),
        Some(u64::from(version.number()))
    );
    assert!(matches!(version, ProtocolVersion::V1 | ProtocolVersion::V2));
    if result.is_err() {
        let error = obj.get("error").and_then(Value::as_str).unwrap_or("");
        assert!(!error.is_empty(), "an error answer says why");
    }
    if !echoes.is_empty() {
        let accounts = obj
            .get("accounts")
            .and_then(Value::as_array)
            .expect("a set_push_accounts answer lists its accounts");
        assert_eq!(accounts.len(), echoes.len());
        for (acc, (key, echo)) in accounts.iter().zip(&echoes) {
            assert_eq!(
                acc.get(*key).and_then(Value::as_str),
                Some(echo.as_str()),
                "the account string is echoed byte-exact"
            );
        }
    }
}
