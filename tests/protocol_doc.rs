//! docs/PROTOCOL.md is checked against the real binary (issue 10 item 15): every
//! `request` block is sent as written to a running server, in document order, and the
//! `answer` block after it must be what comes back, byte for byte, except for the
//! random node and secret values. The sizes and SHA-256 sums the document states are
//! checked too, so the client vectors stay the ones verified in the research notes.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::util::*;

/// The document, read at test time so an edit is checked without a rebuild.
fn document() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/PROTOCOL.md");
    std::fs::read_to_string(path).unwrap()
}

/// One `request` or `answer` block: its bytes and what the prose line before it says.
#[derive(Debug)]
struct Block {
    kind: String,
    bytes: Vec<u8>,
    /// "N bytes" from the line introducing the block.
    size: Option<usize>,
    /// "SHA-256 `hex`" from that line.
    sha256: Option<String>,
    line: usize,
}

/// The document's notation: the block's line breaks are not bytes; `\r`, `\n`, `\0` and
/// `\\` are escapes; everything else is literal.
fn unescape(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        match chars.next() {
            Some('r') => out.push(b'\r'),
            Some('n') => out.push(b'\n'),
            Some('0') => out.push(0),
            Some('\\') => out.push(b'\\'),
            other => panic!("unknown escape \\{other:?} in docs/PROTOCOL.md"),
        }
    }
    out
}

fn blocks(doc: &str) -> Vec<Block> {
    let lines: Vec<&str> = doc.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let kind = match lines[i].strip_prefix("```") {
            Some(k @ ("request" | "answer")) => k.to_owned(),
            _ => {
                i += 1;
                continue;
            }
        };
        let intro = lines[..i]
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .copied()
            .unwrap_or("");
        let size = intro
            .split(" bytes")
            .next()
            .and_then(|s| s.rsplit(' ').next())
            .and_then(|n| n.parse().ok());
        let sha256 = intro
            .split("SHA-256 `")
            .nth(1)
            .and_then(|s| s.split('`').next())
            .map(str::to_owned);
        let start = i;
        let mut text = String::new();
        i += 1;
        while lines[i] != "```" {
            text.push_str(lines[i]);
            i += 1;
        }
        out.push(Block {
            kind,
            bytes: unescape(&text),
            size,
            sha256,
            line: start + 1,
        });
        i += 1;
    }
    out
}

/// The `node`/`secret` values of an answer, in order.
fn randoms(answer: &Value) -> Vec<String> {
    answer["accounts"]
        .as_array()
        .map(|a| {
            a.iter()
                .flat_map(|acc| {
                    [&acc["node"], &acc["secret"]].map(|v| v.as_str().unwrap().to_owned())
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_example_in_the_protocol_document_is_what_the_server_does() {
    let doc = document();
    let blocks = blocks(&doc);
    let pairs: Vec<(&Block, &Block)> = blocks
        .chunks(2)
        .map(|p| {
            assert!(
                p.len() == 2 && p[0].kind == "request" && p[1].kind == "answer",
                "docs/PROTOCOL.md line {}: each request block must be followed by one answer block",
                p[0].line
            );
            (&p[0], &p[1])
        })
        .collect();
    assert!(pairs.len() >= 10, "only {} examples found", pairs.len());

    // A fake WNS for the test pushes; the examples' own channel host stays allowed
    // (it is never contacted: the device is pointed at the fake before a test push).
    let wns = WnsFixture::start();
    let mut extra = wns.config(json!({
        "wns": {"channel_hosts": ["notify.windows.com", "localhost"]},
    }));
    merge(
        &mut extra,
        &json!({"xmpp": {"bare_jid": "push@example.org"}}),
    );
    let server = Server::start(Setup {
        extra,
        ..Setup::default()
    });
    let client = server.client();

    // Example node/secret → the value the server drew: the same example value must be
    // the same real value (the document claims stability where it repeats one).
    let mut seen: HashMap<String, String> = HashMap::new();
    for (request, answer) in pairs {
        let at = format!("docs/PROTOCOL.md line {}", request.line);
        for b in [request, answer] {
            if let Some(size) = b.size {
                assert_eq!(b.bytes.len(), size, "line {}: stated size", b.line);
            }
            if let Some(sum) = &b.sha256 {
                assert_eq!(
                    &hex::encode(Sha256::digest(&b.bytes)),
                    sum,
                    "line {}: stated SHA-256",
                    b.line
                );
            }
        }
        assert!(
            request.size.is_some() && answer.size.is_some(),
            "{at}: say the size"
        );
        let asked: Value = serde_json::from_slice(&request.bytes[..request.bytes.len() - 1])
            .unwrap_or_else(|e| panic!("{at}: the request is not JSON: {e}"));
        if asked["action"] == "request_test_push" {
            let version = asked["version"].as_u64().unwrap() as u8;
            let device = asked["device_id"].as_str().unwrap();
            let repoint =
                client.send_json(&set_channel(version, device, &wns.fake.channel_uri("doc")));
            assert_eq!(repoint["status"], 1, "{repoint}");
        }
        let got = client.raw(&request.bytes);
        let got_json = parse_answer(&got);
        let expected_json = parse_answer(&answer.bytes);
        // Put the document's example values in place of the random ones.
        let (real, example) = (randoms(&got_json), randoms(&expected_json));
        assert_eq!(real.len(), example.len(), "{at}: {got_json}");
        let mut got_text = String::from_utf8(got).unwrap();
        for (real, example) in real.iter().zip(&example) {
            assert!(
                real.len() == example.len() && real.bytes().all(|b| b.is_ascii_hexdigit()),
                "{at}: {real} is not shaped like {example}"
            );
            let known = seen.entry(example.clone()).or_insert_with(|| real.clone());
            assert_eq!(known, real, "{at}: {example} stands for two values");
            got_text = got_text.replace(&format!("\"{real}\""), &format!("\"{example}\""));
        }
        assert_eq!(
            got_text,
            String::from_utf8(answer.bytes.clone()).unwrap(),
            "{at}: the server's answer differs from the document"
        );
    }
    // Different example values stand for different real ones.
    let distinct: std::collections::HashSet<&String> = seen.values().collect();
    assert_eq!(distinct.len(), seen.len(), "{seen:?}");
    // The test pushes reached the fake WNS, one per request_test_push example.
    let pushes = wns.fake.wait_for("doc", 2, Duration::from_secs(5));
    assert_eq!(pushes.len(), 2);
}

#[test]
fn the_notation_reader_keeps_every_byte() {
    assert_eq!(unescape(r#"{"a": 1}\r\n\0"#), b"{\"a\": 1}\r\n\0");
    assert_eq!(unescape(r"a\\b"), b"a\\b");
    let doc = "Request, 3 bytes:\n\n```request\nab\n\\0\n```\n";
    let b = blocks(doc);
    assert_eq!((b[0].bytes.as_slice(), b[0].size), (&b"ab\0"[..], Some(3)));
}

/// Issue 10 items 12 and 15: a self-hoster learned only late in the README that
/// released clients reach one fixed host and that only the app's own WNS credentials
/// push to them; and the protocol paragraph pointed to notes a user does not have. The
/// first screen (50 lines) keeps the two commands on top and says who can deploy it.
#[test]
fn the_readme_first_screen_says_who_can_deploy_it() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let first: Vec<&str> = readme.lines().take(50).collect();
    let block = first
        .iter()
        .position(|l| *l == "```sh")
        .expect("a command block on the first screen");
    assert!(
        first[block + 1].starts_with("scripts/demo.sh"),
        "{first:#?}"
    );
    assert!(
        first[block + 2].starts_with("scripts/test.sh"),
        "{first:#?}"
    );
    let screen = first.join("\n");
    for needle in [
        "## Who can deploy it",
        "`push.uwpx.org:1997`",
        "`wns.packet_id`",
        "`wns.client_secret`",
        "Package SID and client secret of the app package",
        "your own client build",
    ] {
        assert!(
            screen.contains(needle),
            "{needle:?} not in the first screen"
        );
    }
    assert!(!readme.contains("reference notes"));
    assert!(readme.contains("(docs/PROTOCOL.md)"));
}
