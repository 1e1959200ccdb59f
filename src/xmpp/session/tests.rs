//! The session's rules with a hand-moved clock: no real waiting anywhere.

use std::sync::Arc;

use crossbeam_channel::unbounded;

use super::*;
use crate::clock::Clock;
use crate::push::effects::Effects;
use crate::push::{DispatchSettings, Dispatcher};
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
    outcomes: (crossbeam_channel::Sender<Completed>, Receiver<Completed>),
    peps: Receiver<PepRequest>,
}

fn rig() -> Rig {
    let store = Arc::new(Store::open_in_memory().unwrap());
    let (tx, rx) = unbounded();
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
        tx.clone(),
    );
    Rig {
        id: identity(),
        store,
        dispatcher,
        outcomes: (tx, rx),
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
            (&self.outcomes.1, &self.peps),
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
    s.pending.insert(
        ticket,
        Pending {
            header: Some(header(id)),
            since: now,
        },
    );
    s.deadlines.push_back((now + s.timing.deadline, ticket));
}

#[test]
fn a_ping_goes_out_after_the_interval_and_silence_gives_the_stream_up() {
    let mut r = rig();
    let t0 = Instant::now();
    let mut s = r.session(t0);
    s.tick(t0).unwrap();
    assert!(!s.out.contains("urn:xmpp:ping"), "{}", s.out);
    s.tick(t0 + 60 * SEC).unwrap();
    assert!(s.out.contains("<ping xmlns='urn:xmpp:ping'/>"), "{}", s.out);
    let pid = s.ping_sent.clone().unwrap().0;
    s.out.clear();
    // Answered in time: the next one comes an interval later.
    s.on_response(&pid, None);
    s.tick(t0 + 89 * SEC).unwrap();
    assert!(s.out.is_empty());
    s.tick(t0 + 120 * SEC).unwrap();
    assert!(s.out.contains("urn:xmpp:ping"));
    // Not answered: the timeout is min(interval, 30 s).
    s.tick(t0 + 150 * SEC).unwrap();
    assert_eq!(
        s.tick(t0 + 150 * SEC + TIMER_STEP + Duration::from_millis(1)),
        Err("no answer to our ping".to_owned())
    );
}

#[test]
fn a_publish_wns_does_not_answer_in_time_gets_wait_at_its_deadline() {
    let mut r = rig();
    let done = r.outcomes.0.clone();
    let t0 = Instant::now();
    let mut s = r.session(t0);
    waiting(&mut s, 1, "slow", t0);
    waiting(&mut s, 2, "fast", t0 + SEC);
    assert_eq!(s.read_wait(t0), BUSY_WAIT);
    s.tick(t0 + 4 * SEC).unwrap();
    assert!(s.out.is_empty(), "{}", s.out);
    s.tick(t0 + 5 * SEC).unwrap();
    assert!(
        s.out.contains("id='slow'")
            && s.out.contains("type='wait'")
            && s.out.contains("remote-server-timeout"),
        "{}",
        s.out
    );
    assert!(!s.out.contains("id='fast'"));
    // The other one's outcome arrives in time: answered `result`, and its deadline
    // later passes without a second answer.
    s.out.clear();
    done.send(Completed {
        ticket: Ticket::for_tests(2),
        outcome: Outcome::Delivered,
    })
    .unwrap();
    s.drain_outcomes();
    assert!(s.out.contains("id='fast'") && s.out.contains("type='result'"));
    s.out.clear();
    s.tick(t0 + 7 * SEC).unwrap();
    assert!(s.out.is_empty() && s.pending.is_empty() && s.deadlines.is_empty());
    assert_eq!(s.read_wait(t0), IDLE_WAIT);
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
    s.on_response("uwpx-ping-99", None);
    s.on_response("pep-7", Some("item-not-found".into()));
    assert!(s.out.is_empty());
}
