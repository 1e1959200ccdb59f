//! The session's rules with a hand-moved clock: no real waiting anywhere.

use std::sync::Arc;

use crossbeam_channel::unbounded;

use super::*;
use crate::clock::Clock;
use crate::push::effects::Effects;
use crate::push::{Answer, DispatchSettings, Dispatcher};
use crate::xmpp::component::NS_COMPONENT;

const SEC: Duration = Duration::from_secs(1);

fn timing() -> Timing {
    Timing {
        ping_interval: 60 * SEC,
        deadline: 5 * SEC,
        grace: 3 * SEC,
    }
}

fn identity() -> Identity {
    Identity {
        ns: NS_COMPONENT,
        own: "push.localhost".into(),
        server: "localhost".into(),
        client: false,
    }
}

struct Rig {
    id: Identity,
    store: Arc<Store>,
    dispatcher: Dispatcher,
    answers: Arc<Answers>,
    peps: Receiver<PepRequest>,
}

fn rig() -> Rig {
    let store = Arc::new(Store::open_in_memory().unwrap());
    let answers = Arc::new(Answers::new(crate::net::Wake::none()));
    let dispatcher = Dispatcher::new(
        DispatchSettings {
            store: store.clone(),
            pool: None,
            effects: Arc::new(Effects::new(store.clone(), Clock::manual(0))),
            clock: Clock::manual(0),
            deadline: timing().deadline,
            min_interval: Duration::ZERO,
            require_secret: true,
        },
        answers.clone(),
    );
    Rig {
        id: identity(),
        store,
        dispatcher,
        answers,
        peps: unbounded().1,
    }
}

impl Rig {
    fn session(&mut self, now: Instant) -> Session<'_> {
        Session::new(
            &self.id,
            timing(),
            &self.store,
            &mut self.dispatcher,
            (&self.answers, &self.peps),
            now,
        )
    }
}

fn header(id: &str) -> IqHeader {
    IqHeader {
        id: id.into(),
        from: "localhost".into(),
        to: "push.localhost".into(),
    }
}

/// Puts a publish in the waiting state, as a `Decision::Later` would.
fn waiting(s: &mut Session<'_>, ticket: u64, id: &str, now: Instant) {
    let ticket = Ticket::for_tests(ticket);
    s.answers.register(
        ticket,
        Pending {
            header: Some(header(id)),
            since: now,
        },
    );
    s.deadlines.push_back((now + s.timing.deadline, ticket));
}

fn pings(out: &str) -> usize {
    out.matches("<ping xmlns='urn:xmpp:ping'/>").count()
}

fn stanza(xml: &str) -> Element {
    xml.parse().unwrap()
}

/// Another instance's ping answered by the server, routed to us (ejabberd spreads
/// stanzas for one component JID over all its connections).
fn their_ping_answer(n: u32) -> Element {
    stanza(&format!(
        "<iq xmlns='{NS_COMPONENT}' type='result' id='uwpx-ping-{n}' from='localhost' to='push.localhost'/>"
    ))
}

#[test]
fn alone_a_silent_server_is_pinged_more_often_then_given_up_after_three_intervals() {
    let mut r = rig();
    let t0 = Instant::now();
    let mut s = r.session(t0);
    s.tick(t0).unwrap();
    s.tick(t0 + 59 * SEC).unwrap();
    assert_eq!(pings(&s.out), 0, "{}", s.out);
    s.tick(t0 + 60 * SEC).unwrap();
    assert_eq!(pings(&s.out), 1, "{}", s.out);
    // While nothing answers: a ping every interval / 10 (6 s here).
    s.tick(t0 + 65 * SEC).unwrap();
    assert_eq!(pings(&s.out), 1);
    s.tick(t0 + 66 * SEC).unwrap();
    assert_eq!(pings(&s.out), 2);
    let mut t = 66;
    while t < 179 {
        t += 1;
        s.tick(t0 + t * SEC).unwrap();
    }
    assert_eq!(pings(&s.out), 20, "{}", s.out);
    // Three intervals of silence: the stream is given up.
    let end = s.tick(t0 + 180 * SEC).unwrap_err();
    assert!(end.contains("nothing heard for 180 s"), "{end}");
}

#[test]
fn our_answered_ping_resets_the_silence() {
    let mut r = rig();
    let t0 = Instant::now();
    let mut s = r.session(t0);
    s.tick(t0 + 60 * SEC).unwrap();
    assert_eq!(pings(&s.out), 1);
    s.out.clear();
    s.on_stanza(&their_ping_answer(1), t0 + 61 * SEC);
    assert!(s.out.is_empty(), "an answer is not answered: {}", s.out);
    // The next ping an interval after the answer, not after the ping.
    s.tick(t0 + 120 * SEC).unwrap();
    assert_eq!(pings(&s.out), 0);
    s.tick(t0 + 121 * SEC).unwrap();
    assert_eq!(pings(&s.out), 1);
}

#[test]
fn with_several_instances_any_inbound_stanza_keeps_the_stream_alive() {
    // Our pings' answers all go to other instances; we see their answers and the
    // users' servers' stanzas instead. The stream stays up for as long as that goes on.
    let mut r = rig();
    let t0 = Instant::now();
    let mut s = r.session(t0);
    let heard: [(u32, Element); 3] = [
        (70, their_ping_answer(7)),
        (
            150,
            stanza(&format!(
                "<iq xmlns='{NS_COMPONENT}' type='get' id='d1' from='localhost' to='push.localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
            )),
        ),
        (
            200,
            stanza(&format!(
                "<message xmlns='{NS_COMPONENT}' from='localhost' to='push.localhost'/>"
            )),
        ),
    ];
    let mut next = heard.iter().peekable();
    for t in 0..380u32 {
        if let Some((_, e)) = next.next_if(|(at, _)| *at == t) {
            s.on_stanza(e, t0 + t * SEC);
        }
        assert_eq!(s.tick(t0 + t * SEC), Ok(()), "given up at {t} s");
    }
    // ... and after the last stanza (t = 200), three silent intervals end it.
    assert!(s.tick(t0 + 380 * SEC).is_err());
    // Pings kept going out while waiting, each with a fresh id.
    assert!(pings(&s.out) >= 20, "{}", s.out);
    assert!(s.out.contains("id='uwpx-ping-1'") && s.out.contains("id='uwpx-ping-2'"));
}

#[test]
fn a_publish_wns_does_not_answer_in_time_gets_wait_at_its_deadline() {
    let mut r = rig();
    let t0 = Instant::now();
    let mut s = r.session(t0);
    waiting(&mut s, 1, "slow", t0);
    waiting(&mut s, 2, "fast", t0 + SEC);
    // Nothing due soon: the thread may sleep the longest wait (a finished push wakes
    // it); close to the deadline, only until the deadline.
    assert_eq!(s.next_wake(t0), IDLE_WAIT);
    s.tick(t0 + 4 * SEC).unwrap();
    assert!(s.out.is_empty(), "{}", s.out);
    let near = t0 + 4 * SEC + Duration::from_millis(900);
    assert_eq!(s.next_wake(near), Duration::from_millis(100));
    s.tick(t0 + 5 * SEC).unwrap();
    assert!(
        s.out.contains("id='slow'")
            && s.out.contains("type='wait'")
            && s.out.contains("remote-server-timeout"),
        "{}",
        s.out
    );
    assert!(!s.out.contains("id='fast'"));
    // The other one's outcome arrives in time (on a worker): answered `result` (queued:
    // this answers has no socket), and its deadline later passes without a second
    // answer.
    s.out.clear();
    s.answers.finished(Ticket::for_tests(2), Outcome::Delivered);
    let queued = s.answers.queued();
    assert!(queued.contains("id='fast'") && queued.contains("type='result'"));
    assert!(!queued.contains("id='slow'"), "{queued}");
    s.tick(t0 + 7 * SEC).unwrap();
    assert!(s.out.is_empty() && s.answers.waiting() == 0 && s.deadlines.is_empty());
    assert_eq!(s.next_wake(t0 + 7 * SEC), IDLE_WAIT);
}

#[test]
fn shutdown_waits_the_grace_for_wns_then_answers_wait_and_closes() {
    let mut r = rig();
    let t0 = Instant::now();
    let mut s = r.session(t0);
    waiting(&mut s, 1, "inflight", t0);
    assert!(!s.is_drained(t0));
    s.begin_shutdown(t0);
    assert!(!s.is_drained(t0 + 2 * SEC), "within the grace");
    // A new publish during the drain is answered `wait` at once.
    let publish = format!(
        "<iq type='set' id='late' from='localhost' to='push.localhost' xmlns='{NS_COMPONENT}'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='abc'><item/></publish></pubsub></iq>"
    );
    s.on_stanza(&publish.parse().unwrap(), t0 + SEC);
    assert!(s.out.contains("id='late'") && s.out.contains("resource-constraint"));
    assert!(s.is_drained(t0 + 3 * SEC));
    s.out.clear();
    s.finish_shutdown();
    assert!(s.out.contains("id='inflight'") && s.out.contains("type='wait'"));
    assert!(s.out.ends_with("</stream:stream>"));
}

#[test]
fn a_drain_with_nothing_waiting_ends_at_once() {
    let mut r = rig();
    let t0 = Instant::now();
    let mut s = r.session(t0);
    s.begin_shutdown(t0);
    assert!(s.is_drained(t0));
}

#[test]
fn replies_to_requests_we_did_not_send_are_ignored_quietly() {
    let mut r = rig();
    let t0 = Instant::now();
    let mut s = r.session(t0);
    // As they come over the wire: another instance's ping answer, a PEP error, and a
    // result for an id we never used. None is answered, none changes anything.
    for xml in [
        "<iq type='result' id='uwpx-ping-99' from='localhost' to='push.localhost'/>",
        "<iq type='error' id='pep-7' from='localhost' to='push.localhost'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
        "<iq type='result' id='someone-else-3' from='localhost' to='push.localhost'><query xmlns='jabber:iq:version'/></iq>",
    ] {
        let xml = xml.replace("<iq ", &format!("<iq xmlns='{NS_COMPONENT}' "));
        s.on_stanza(&stanza(&xml), t0 + SEC);
    }
    assert!(s.out.is_empty(), "{}", s.out);
    assert!(s.answers.waiting() == 0 && s.pep_steps.is_empty());
    assert_eq!(s.tick(t0 + SEC), Ok(()));
}

/// Delivered pushes are summed up in one info line per SUMMARY_EVERY, with every
/// other outcome counted beside them; a quiet interval writes nothing.
#[test]
fn push_outcomes_are_summed_up_per_interval() {
    let mut r = rig();
    let t0 = Instant::now();
    let mut s = r.session(t0);
    for _ in 0..3 {
        s.answer("localhost", None, &PushOutcome::Wns(Outcome::Delivered));
    }
    s.answer("localhost", None, &PushOutcome::Wns(Outcome::ChannelGone));
    s.answer("localhost", None, &PushOutcome::UnknownNode);
    assert_eq!(
        s.summary(t0 + SUMMARY_EVERY).as_deref(),
        Some("push: 5 publishes in the last 10 s: 3 delivered, 1 channel_gone, 1 unknown_node")
    );
    assert_eq!(s.summary(t0 + SUMMARY_EVERY * 2), None);
    s.answer("localhost", None, &PushOutcome::Coalesced);
    assert_eq!(
        s.summary(t0 + SUMMARY_EVERY * 3).as_deref(),
        Some("push: 1 publishes in the last 10 s: 1 coalesced")
    );
}

/// Publishes read together (what the I/O loop hands over on PostgreSQL) get the answers
/// that one publish after another gets, each to its own IQ, in their order. (The rig has
/// no WNS pool: a publish that passes every check is answered `wait`.)
#[test]
fn publishes_read_together_are_answered_as_one_after_another() {
    use crate::store::AccountSpec;
    use crate::types::{
        AccountForm, AccountKey, ChannelHosts, ChannelUri, DeviceId, ProtocolVersion, Summary,
    };
    let mut r = rig();
    let device = DeviceId::parse("abcd").unwrap();
    let hosts = ChannelHosts::new(vec!["notify.windows.com".into()]);
    let uri = ChannelUri::parse("https://a.notify.windows.com/?token=1", &hosts).unwrap();
    let v2 = ProtocolVersion::V2;
    r.store.set_channel(&device, &uri, v2, 1).unwrap();
    let spec = AccountSpec {
        key: AccountKey::parse("a").unwrap(),
        domain: None,
    };
    let form = Some(AccountForm::AccountId);
    let account = &r
        .store
        .set_accounts(&device, v2, form, &[spec], 1)
        .unwrap()
        .unwrap()[0];
    let (node, secret) = (account.node.clone(), account.secret.expose().to_owned());
    let other = Node::generate().unwrap();
    let publish = |id: &str, node: &Node, secret: Option<&str>| {
        let p = Publish {
            node: node.clone(),
            secret: secret.map(str::to_owned),
            summary: Summary::default(),
        };
        (header(id), p)
    };
    let burst = || {
        vec![
            publish("one", &node, Some(&secret)),
            publish("two", &other, Some(&secret)),
            publish("three", &node, Some("wrong")),
            publish("four", &node, None),
            publish("five", &node, Some(&secret)),
        ]
    };
    let t0 = Instant::now();
    let mut s = r.session(t0);
    let mut batch = burst();
    s.on_publishes(&mut batch, t0);
    assert!(batch.is_empty());
    let together = std::mem::take(&mut s.out);
    for (h, p) in burst() {
        s.on_inbound(Inbound::Publish(h, p), t0);
    }
    assert_eq!(together, s.out);
    let answers: Vec<&str> = together.split("</iq>").filter(|a| !a.is_empty()).collect();
    let expected = [
        ("one", "type='wait'"),
        ("two", "item-not-found"),
        ("three", "forbidden"),
        ("four", "forbidden"),
        ("five", "type='wait'"),
    ];
    assert_eq!(answers.len(), expected.len(), "{together}");
    for (answer, (id, what)) in answers.iter().zip(expected) {
        assert!(
            answer.contains(&format!("id='{id}'")) && answer.contains(what),
            "{answer}"
        );
    }
}
