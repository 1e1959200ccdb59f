//! One authenticated XMPP stream's state: the publishes waiting for WNS, the PEP
//! requests in flight, the keep-alive ping, and the shutdown drain.
//!
//! A [`Session`] never touches the socket. The I/O loop in `mod.rs` hands it what it
//! read and the current time, and writes out what it queued in [`Session::out`]. So
//! every rule here (IQ deadlines, ping timeouts, the shutdown grace) is tested with a
//! hand-moved `now` and no real waiting.
//!
//! Threads: `xmpp-io` only. Locks: none of its own; the store's through the
//! dispatcher and the removed-node list.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use minidom::Element;

use super::Identity;
use super::answers::{Answers, Pending};
use super::pep::{self, PepRequest};
use super::publish::{self, Inbound, IqHeader};
use super::reply;
use crate::metrics::{METRICS, PublishResult};
use crate::push::{Decision, Dispatcher, Publish, PushOutcome, Ticket};
use crate::store::Store;
use crate::types::Node;
use crate::wns::Outcome;

/// How often, at most, the timers run: cheap per stanza under load.
const TIMER_STEP: Duration = Duration::from_millis(2);
/// How often the removed-node list is looked at.
const REMOVED_STEP: Duration = Duration::from_secs(2);
/// The longest sleep: how late an idle session notices shutdown.
const IDLE_WAIT: Duration = Duration::from_millis(200);
/// How often delivered pushes are summed up in one info line (each undelivered one
/// has its own line): one line per push cost the XMPP thread a write, and whoever reads
/// the log (journald, a pipe) a wake-up, per push.
const SUMMARY_EVERY: Duration = Duration::from_secs(10);
/// How many ping intervals of silence give the stream up. Several, because with several
/// instances on one component JID (ejabberd) the answer to our ping may go to another
/// instance: silence, not a missing answer, is the sign of a dead stream.
const SILENT_INTERVALS: u32 = 3;
/// Pings per interval while the stream is silent. Each answer reaches us with a chance
/// of 1/N with N instances, so many cheap pings make a false give-up rare: with 3
/// instances, 20 pings all going elsewhere has a chance of (2/3)^20 ≈ 0.03 %.
const PINGS_WHILE_SILENT: u32 = 10;

/// The session's clocks, from the configuration.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timing {
    /// `xmpp.ping_interval_s`: a ping after this long without any inbound stanza, then
    /// more often while the silence lasts; [`SILENT_INTERVALS`] of it give the stream up.
    pub ping_interval: Duration,
    /// `wns.deadline_ms`: a publish not answered by WNS within it is answered `wait`.
    pub deadline: Duration,
    /// `shutdown_grace_ms`: how long publishes already with WNS may still get their
    /// real answer at shutdown.
    pub grace: Duration,
}

/// A PEP request in flight.
enum PepStep {
    Create(PepRequest),
    Subscribe(PepRequest),
    Delete(Node),
}

/// The state of one stream (see the module docs).
pub(super) struct Session<'a> {
    id: &'a Identity,
    timing: Timing,
    store: &'a Store,
    dispatcher: &'a mut Dispatcher,
    /// The publishes waiting for WNS, answered by the workers.
    answers: &'a Answers,
    peps: &'a Receiver<PepRequest>,
    /// Deadlines in arrival order (all publishes get the same budget), so expiry is a
    /// look at the front, not a scan; entries of answered IQs are skipped.
    deadlines: VecDeque<(Instant, Ticket)>,
    pep_steps: HashMap<String, PepStep>,
    deleting: HashSet<Node>,
    seen_items: publish::RecentItems,
    seq: u64,
    next_timers: Instant,
    next_removed: Instant,
    /// When the last inbound stanza arrived: any stanza proves the stream alive,
    /// including the answer to another instance's ping.
    last_heard: Instant,
    last_ping: Option<Instant>,
    draining: Option<Instant>,
    /// Since when [`Answers`] counts push outcomes for the summary line.
    tally_since: Instant,
    /// Stanzas to write, in order.
    pub out: String,
}

impl<'a> Session<'a> {
    /// A fresh session on a stream that just came up at `now`.
    pub fn new(
        id: &'a Identity,
        timing: Timing,
        store: &'a Store,
        dispatcher: &'a mut Dispatcher,
        links: (&'a Answers, &'a Receiver<PepRequest>),
        now: Instant,
    ) -> Self {
        let (answers, peps) = links;
        Self {
            id,
            timing,
            store,
            dispatcher,
            answers,
            peps,
            deadlines: VecDeque::new(),
            pep_steps: HashMap::new(),
            deleting: HashSet::new(),
            seen_items: publish::RecentItems::new(4096),
            seq: 0,
            next_timers: now,
            next_removed: now,
            tally_since: now,
            last_heard: now,
            last_ping: None,
            draining: None,
            out: String::new(),
        }
    }

    /// How long the I/O thread may sleep when nothing arrives: until the first IQ
    /// deadline or coalesced push is due (not before the timers may run again), at
    /// most [`IDLE_WAIT`]. PEP requests, and bytes a worker could not write, wake it
    /// early.
    pub fn next_wake(&self, now: Instant) -> Duration {
        let mut due = now + IDLE_WAIT;
        if let Some((deadline, _)) = self.deadlines.front() {
            due = due.min(*deadline);
        }
        if let Some(d) = self.dispatcher.next_due() {
            due = due.min(d);
        }
        due.max(self.next_timers).saturating_duration_since(now)
    }

    /// Whether PEP requests wait, or bytes or a broken stream that the workers left.
    pub fn has_work(&self) -> bool {
        !self.peps.is_empty() || self.answers.needs_io()
    }

    /// Whether publishes read together should be decided together
    /// ([`Session::on_publishes`], which itself answers them one by one where that does
    /// not apply): where a lookup is a round trip to a shared database.
    pub fn batches_publishes(&self) -> bool {
        self.store.is_shared()
    }

    /// The stream's default namespace (what `classify` expects of a stanza).
    pub fn stream_ns(&self) -> &'static str {
        self.id.ns
    }

    /// Handles one inbound stanza.
    pub fn on_stanza(&mut self, stanza: &Element, now: Instant) {
        self.on_inbound(publish::classify(stanza, self.id.ns), now);
    }

    /// Handles one inbound stanza, classified already (the reader reads a publish in
    /// the plain shape straight into its fields).
    pub fn on_inbound(&mut self, inbound: Inbound, now: Instant) {
        self.last_heard = now;
        let client = self.id.client;
        match inbound {
            Inbound::Publish(h, _) if self.draining.is_some() => {
                let from = h.from.clone();
                self.answer(&from, Some(&h), &shutting_down());
            }
            Inbound::Publish(h, p) if !client => {
                let from = h.from.clone();
                self.dispatch(Some(&from), Some(h), &p, now);
            }
            Inbound::ForeignNode(h) if !client => {
                let from = h.from.clone();
                self.answer(&from, Some(&h), &PushOutcome::UnknownNode);
            }
            Inbound::Publish(h, _) | Inbound::ForeignNode(h) | Inbound::Unsupported(h) => {
                self.out.push_str(&reply::unsupported(&h))
            }
            Inbound::BadPublish(h, why) => {
                log::info!("xmpp: malformed publish from {}: {why}", h.from);
                self.out.push_str(&reply::bad_request(&h));
            }
            Inbound::DiscoInfo(h) if !client => self.out.push_str(&reply::disco_info(&h)),
            Inbound::DiscoItems(h) if !client => self.out.push_str(&reply::disco_items(&h)),
            Inbound::DiscoInfo(h) | Inbound::DiscoItems(h) => {
                self.out.push_str(&reply::unsupported(&h))
            }
            Inbound::Ping(h) => self.out.push_str(&reply::iq_result(&h, "")),
            Inbound::Response { id, error } => self.on_response(&id, error),
            Inbound::Event {
                from,
                node,
                item_id,
                publisher,
                summary,
            } if client => {
                if bare(&from) != self.id.own.to_lowercase() {
                    log::debug!("xmpp: ignoring a pubsub event from {from}");
                } else if item_id
                    .as_deref()
                    .is_some_and(|i| !self.seen_items.insert(node.as_str(), i))
                {
                    log::debug!("xmpp: duplicate event for node {}", node.as_str());
                } else {
                    let p = Publish {
                        node,
                        secret: None,
                        summary,
                    };
                    self.dispatch(publisher.as_deref(), None, &p, now);
                }
            }
            Inbound::Event { .. } | Inbound::Ignored => {}
        }
    }

    /// Dispatches a publish from `from` (the user's server; client mode knows it only
    /// where the event names its publisher); `header` is the IQ to answer (component
    /// mode).
    fn dispatch(
        &mut self,
        from: Option<&str>,
        header: Option<IqHeader>,
        p: &Publish,
        now: Instant,
    ) {
        let decision = self.dispatcher.publish(from, p, now);
        self.settle(from, header, decision, now);
    }

    /// Handles publish IQs read together (component mode), as [`Session::on_inbound`]
    /// would one after another, but decided in one [`Dispatcher::publish_batch`]: on
    /// PostgreSQL a round trip or two for all of them. Leaves `batch` empty.
    pub fn on_publishes(&mut self, batch: &mut Vec<(IqHeader, Publish)>, now: Instant) {
        if self.draining.is_some() || self.id.client || batch.len() < 2 {
            for (h, p) in batch.drain(..) {
                self.on_inbound(Inbound::Publish(h, p), now);
            }
            return;
        }
        self.last_heard = now;
        METRICS.publishes_in_batch(batch.len());
        let items: Vec<(Option<&str>, &Publish)> = batch
            .iter()
            .map(|(h, p)| (Some(h.from.as_str()), p))
            .collect();
        let decisions = self.dispatcher.publish_batch(&items, now);
        for ((h, _), decision) in batch.drain(..).zip(decisions) {
            let from = h.from.clone();
            self.settle(Some(&from), Some(h), decision, now);
        }
    }

    /// Answers a publish decided now, or waits for WNS's outcome until the deadline.
    fn settle(
        &mut self,
        from: Option<&str>,
        header: Option<IqHeader>,
        decision: Decision,
        now: Instant,
    ) {
        match decision {
            Decision::Now(outcome) => self.answer(from.unwrap_or("pep"), header.as_ref(), &outcome),
            Decision::Later(ticket) => {
                self.answers
                    .register(ticket, Pending { header, since: now });
                self.deadlines
                    .push_back((now + self.timing.deadline, ticket));
            }
        }
    }

    /// Logs and counts a push outcome, and answers its IQ if it has one.
    fn answer(&mut self, from: &str, header: Option<&IqHeader>, outcome: &PushOutcome) {
        self.answers.count(from, outcome);
        if let Some(h) = header {
            self.out
                .push_str(&reply::iq_reply(h, reply::for_outcome(outcome)));
        }
    }

    fn answer_pending(&mut self, p: Pending, outcome: &PushOutcome) {
        let from = p
            .header
            .as_ref()
            .map_or("pep", |h| h.from.as_str())
            .to_owned();
        self.answer(&from, p.header.as_ref(), outcome);
    }

    /// Sends the PEP node requests registration threads queued (client mode).
    pub fn drain_peps(&mut self) {
        while let Ok(req) = self.peps.try_recv() {
            let rid = self.next_id("pep");
            self.out
                .push_str(&pep::create_iq(&rid, &self.id.own, req.node.as_str()));
            self.pep_steps.insert(rid, PepStep::Create(req));
        }
    }

    fn next_id(&mut self, prefix: &str) -> String {
        self.seq += 1;
        format!("{prefix}-{}", self.seq)
    }

    /// Runs the timers due at `now`: IQ deadlines, trailing pushes, the keep-alive
    /// ping, the removed-node list. `Err` says why the stream is to be given up.
    pub fn tick(&mut self, now: Instant) -> Result<(), String> {
        if now < self.next_timers {
            return Ok(());
        }
        self.next_timers = now + TIMER_STEP;
        self.expire_deadlines(now);
        self.dispatcher.tick(now);
        self.keep_alive(now)?;
        if now >= self.next_removed {
            self.next_removed = now + REMOVED_STEP;
            self.work_off_removed();
        }
        if now.saturating_duration_since(self.tally_since) >= SUMMARY_EVERY
            && let Some(line) = self.summary(now)
        {
            log::info!("{line}");
        }
        Ok(())
    }

    /// The push outcomes since the last summary, in one line ("push: 4998 publishes
    /// in the last 10 s: 4996 delivered, 2 channel_gone"), and starts counting again;
    /// `None` if there were none.
    fn summary(&mut self, now: Instant) -> Option<String> {
        let secs = now.saturating_duration_since(self.tally_since).as_secs();
        self.tally_since = now;
        let tally = self.answers.take_tally();
        let total: u64 = tally.iter().sum();
        if total == 0 {
            return None;
        }
        let parts: Vec<String> = tally
            .iter()
            .zip(PublishResult::LABELS)
            .filter(|(n, _)| **n > 0)
            .map(|(n, label)| format!("{n} {label}"))
            .collect();
        Some(format!(
            "push: {total} publishes in the last {secs} s: {}",
            parts.join(", ")
        ))
    }

    /// The keep-alive: after an interval without any inbound stanza, a ping, then
    /// [`PINGS_WHILE_SILENT`] per interval while the silence lasts; after
    /// [`SILENT_INTERVALS`] of silence the stream is given up. Alone on the component,
    /// a dead server is noticed after 3 intervals (3 min with the default 60 s). With
    /// several instances, what answers our pings may be another instance's ping
    /// replies, or anything else the server routed to us: all of it counts.
    fn keep_alive(&mut self, now: Instant) -> Result<(), String> {
        let interval = self.timing.ping_interval;
        let silent = now.saturating_duration_since(self.last_heard);
        if silent >= interval * SILENT_INTERVALS {
            return Err(format!(
                "nothing heard for {} s, not even an answer to our pings",
                silent.as_secs()
            ));
        }
        let cadence = interval / PINGS_WHILE_SILENT;
        if silent >= interval
            && self
                .last_ping
                .is_none_or(|p| now.saturating_duration_since(p) >= cadence)
        {
            let pid = self.next_id("uwpx-ping");
            self.out
                .push_str(&reply::ping(&pid, &self.id.own, &self.id.server));
            self.last_ping = Some(now);
        }
        Ok(())
    }

    /// Answers `wait` to publishes WNS did not answer within `wns.deadline_ms`.
    fn expire_deadlines(&mut self, now: Instant) {
        while self.deadlines.front().is_some_and(|(d, _)| *d <= now) {
            let Some((_, ticket)) = self.deadlines.pop_front() else {
                break;
            };
            if let Some(p) = self.answers.take(ticket) {
                self.answer_pending(p, &PushOutcome::TimedOut);
            }
        }
        if self.answers.waiting() == 0 {
            self.deadlines.clear();
        }
    }

    /// An IQ result or error for us: a ping's answer (ours or, with several instances
    /// on one component, another's: both only prove the stream alive, which
    /// [`Self::on_stanza`] noted), a PEP step, or another instance's request, which is
    /// ignored quietly: never answered, logged at debug only.
    fn on_response(&mut self, rid: &str, error: Option<String>) {
        let Some(step) = self.pep_steps.remove(rid) else {
            if !rid.starts_with("uwpx-ping-") {
                log::debug!("xmpp: ignoring the answer to {rid}, a request we did not send");
            }
            return;
        };
        match step {
            // An existing node (a retry, or a crash before the DB commit) is fine.
            PepStep::Create(req) if error.is_none() || error.as_deref() == Some("conflict") => {
                let rid = self.next_id("pep");
                self.out
                    .push_str(&pep::subscribe_iq(&rid, &self.id.own, req.node.as_str()));
                self.pep_steps.insert(rid, PepStep::Subscribe(req));
            }
            PepStep::Create(req) | PepStep::Subscribe(req) => {
                let result = match error {
                    None => Ok(()),
                    Some(e) => {
                        log::warn!("xmpp: PEP node for a new account failed: {e}");
                        Err(e)
                    }
                };
                let _ = req.reply.send(result);
            }
            PepStep::Delete(node) => {
                self.deleting.remove(&node);
                if error.is_none() || error.as_deref() == Some("item-not-found") {
                    if let Err(e) = self.store.forget_removed_nodes(std::slice::from_ref(&node)) {
                        log::warn!("xmpp: cannot update the removed-node list: {e}");
                    }
                } else {
                    log::warn!("xmpp: deleting a PEP node failed ({error:?}); will retry");
                }
            }
        }
    }

    /// Deletes PEP nodes of removed accounts (client mode); in component mode there are
    /// no PEP nodes, so the list is just cleared.
    fn work_off_removed(&mut self) {
        let store = self.store;
        let removed = match store.removed_nodes(200) {
            Ok(r) if !r.is_empty() => r,
            Ok(_) => return,
            Err(e) => return log::warn!("xmpp: cannot read the removed-node list: {e}"),
        };
        if !self.id.client {
            let _ = store.forget_removed_nodes(&removed);
            return;
        }
        for node in removed {
            if self.deleting.insert(node.clone()) {
                let rid = self.next_id("pep");
                self.out
                    .push_str(&pep::delete_iq(&rid, &self.id.own, node.as_str()));
                self.pep_steps.insert(rid, PepStep::Delete(node));
            }
        }
    }

    /// Starts the shutdown drain (once): publishes already with WNS may still get their
    /// real answer for `grace`; new ones are answered `wait`.
    pub fn begin_shutdown(&mut self, now: Instant) {
        if self.draining.is_none() {
            log::info!(
                "xmpp: shutting down; {} publishes wait for WNS",
                self.answers.waiting()
            );
            self.draining = Some(now);
        }
    }

    /// Whether the drain is over: nothing is waiting, or the grace ran out.
    pub fn is_drained(&self, now: Instant) -> bool {
        self.draining.is_some_and(|since| {
            self.answers.waiting() == 0 || now.duration_since(since) >= self.timing.grace
        })
    }

    /// Answers what is left with `wait`, fails PEP requests, and closes the stream.
    pub fn finish_shutdown(&mut self) {
        for p in self.answers.take_all() {
            self.answer_pending(p, &shutting_down());
        }
        for (_, step) in self.pep_steps.drain() {
            if let PepStep::Create(r) | PepStep::Subscribe(r) = step {
                let _ = r.reply.send(Err("shutting down".into()));
            }
        }
        self.out.push_str("</stream:stream>");
    }
}

impl Drop for Session<'_> {
    /// The outcomes not summed up yet, when the stream ends or the server stops.
    fn drop(&mut self) {
        if let Some(line) = self.summary(Instant::now()) {
            log::info!("{line}");
        }
    }
}

fn shutting_down() -> PushOutcome {
    PushOutcome::Wns(Outcome::Transient("shutting down".into()))
}

/// The bare part of a JID, lowercased.
fn bare(jid: &str) -> String {
    jid.split('/').next().unwrap_or("").to_lowercase()
}

#[cfg(test)]
mod tests;
