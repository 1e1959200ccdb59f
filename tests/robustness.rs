//! Randomised robustness: thousands of mutated client frames and XMPP streams through the
//! real codec, stanza reader and publish parser must never panic. (A cheap stand-in for
//! the fuzz targets: stable Rust only here.)

use uwpx_push_server::registration::codec::{Rules, decode};
use uwpx_push_server::types::ChannelHosts;
use uwpx_push_server::xmpp::publish::classify;
use uwpx_push_server::xmpp::reader::{ReadError, StanzaReader, StreamEvent};

/// A small deterministic generator, so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Flips, drops, duplicates and inserts bytes.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(8) {
        let i = rng.below(v.len() + 1);
        match rng.below(5) {
            0 if i < v.len() => v[i] ^= 1 << rng.below(8),
            1 if i < v.len() => {
                v.remove(i);
            }
            2 => v.insert(i, rng.next() as u8),
            3 if i < v.len() => {
                let end = (i + rng.below(16)).min(v.len());
                let chunk = v[i..end].to_vec();
                v.splice(i..i, chunk);
            }
            _ => v.insert(i, b"{}[]\",:<>/='\0&;"[rng.below(15)]),
        }
    }
    v
}

const FRAMES: &[&[u8]] = &[
    b"{\r\n  \"version\": 2,\r\n  \"action\": \"set_channel_uri\",\r\n  \"device_id\": \"5486bd868050a620141f4e81c9f1d2c67ab0de27e5e26d218ca41c9394ee806b\",\r\n  \"channel_uri\": \"https://db5p.notify.windows.com/?token=AwYAAAB%2bExample%2fToken%3d\"\r\n}",
    b"{\"version\":1,\"action\":\"set_push_accounts\",\"device_id\":\"ab\",\"accounts\":[{\"bare_jid\":\"someClient@xmpp.uwpx.org\"},{\"account_id\":\"x\"}]}",
    b"{\"version\":2,\"action\":\"request_test_push\",\"device_id\":\"ab\"}",
];

#[test]
fn mutated_client_frames_never_panic() {
    let rules = Rules {
        max_accounts: 32,
        channel_hosts: ChannelHosts::new(vec!["notify.windows.com".into()]),
    };
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    for i in 0..20_000 {
        let frame = mutate(&mut rng, FRAMES[i % FRAMES.len()]);
        let _ = decode(&frame, &rules);
    }
    for _ in 0..2_000 {
        let len = rng.below(300);
        let junk: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let _ = decode(&junk, &rules);
    }
}

const STREAM_HEAD: &str = "<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' id='x'>";
const PUBLISH: &str = "<iq id='2858b90f' to='push.localhost' from='localhost' type='set'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='node-3c37'><item><notification xmlns='urn:xmpp:push:0'><x xmlns='jabber:x:data' type='form'><field var='FORM_TYPE' type='hidden'><value>urn:xmpp:push:summary</value></field><field var='message-count' type='text-single'><value>1</value></field></x></notification></item></publish><publish-options><x xmlns='jabber:x:data' type='submit'><field var='secret'><value>s</value></field></x></publish-options></pubsub></iq><message from='push@localhost'><event xmlns='http://jabber.org/protocol/pubsub#event'><items node='n'><item id='1'><notification xmlns='urn:xmpp:push:0'/></item></items></event></message>";

#[test]
fn mutated_xmpp_streams_never_panic() {
    let mut rng = Rng(0x5EED_1234_ABCD_0002);
    for _ in 0..5_000 {
        let body = mutate(&mut rng, PUBLISH.as_bytes());
        let mut bytes = STREAM_HEAD.as_bytes().to_vec();
        bytes.extend_from_slice(&body);
        let mut reader = StanzaReader::new(std::io::Cursor::new(bytes));
        for _ in 0..50 {
            match reader.next_event() {
                Ok(StreamEvent::Stanza(e)) => {
                    let _ = classify(&e, "jabber:component:accept");
                }
                Ok(_) => {}
                Err(ReadError::Idle) => {}
                Err(_) => break,
            }
        }
    }
}
