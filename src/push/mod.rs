//! Dispatch: a validated publish → node lookup → secret and domain checks → coalescing
//! → a WNS job; and the job's outcome → its store side effects ([`effects`]) → the
//! publish's [`Answer`], named by its [`Ticket`].
//!
//! `push` defines what it consumes ([`Publish`]) and what it answers ([`PushOutcome`]);
//! and through what it answers ([`Answer`]); `xmpp` builds the one and implements the
//! other, mapping outcomes to IQ replies, so the dependency runs
//! `xmpp → push → {store, wns}` and never back.
//!
//! Threads: [`Dispatcher`] runs on `xmpp-io` (a store read per publish on SQLite,
//! microseconds; on PostgreSQL one round trip per batch of publishes read together,
//! [`Dispatcher::publish_batch`]; never waits on WNS). Job outcomes come back on `wns-worker-*` threads, which apply
//! the side effects and hand the outcome to the [`Answer`] (which writes the IQ reply
//! on that worker). Locks: the store's, for one query; [`effects::Effects`]'s and the
//! answer's briefly.

pub mod coalesce;
pub mod effects;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clock::Clock;
use crate::store::{NodeTarget, SharedAdmit, Store, StoreError};
use crate::types::{ClientGeneration, Node, Summary, jid_domain};
use crate::wns::{Finished, Job, Outcome, WnsPool, payload};
use coalesce::{Admit, Coalescer};
use effects::Effects;

/// A publish as push consumes it: from a component-mode IQ or a client-mode PEP event.
/// Defined here, by its consumer, so that `xmpp` depends on `push` and not back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// The XEP-0357 node.
    pub node: Node,
    /// The `secret` publish-option, if any.
    pub secret: Option<String>,
    /// The summary counts and texts.
    pub summary: Summary,
}

/// What became of a publish, as far as the user's server is concerned.
#[derive(Debug, Clone)]
pub enum PushOutcome {
    /// WNS gave this outcome.
    Wns(Outcome),
    /// Folded into a push already sent or about to be sent.
    Coalesced,
    /// No such node.
    UnknownNode,
    /// The `secret` publish-option is missing or wrong.
    BadSecret,
    /// The publish came from another domain than the account's (bare_jid clients).
    ForeignDomain,
    /// WNS gave no outcome within `wns.deadline_ms`.
    TimedOut,
    /// WNS delivery is not configured.
    NoWns,
    /// The node lookup failed.
    Internal(StoreError),
}

/// Names one publish waiting for its WNS outcome, so the outcome finds its IQ again.
/// (Not to be confused with the WNS OAuth token.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ticket(u64);

impl Ticket {
    /// A ticket made up by a test that plays the dispatcher's part.
    #[cfg(test)]
    pub(crate) fn for_tests(n: u64) -> Self {
        Self(n)
    }
}

/// Where the outcomes of accepted publishes go: the XMPP side, which answers their IQs.
/// Defined here, by the side that calls it, so that `push` does not depend on `xmpp`.
/// Both calls must be quick and never block on I/O.
pub trait Answer: Send + Sync {
    /// A job for `ticket` is about to be queued (called on the dispatching thread,
    /// before [`Dispatcher::publish`] returns the ticket).
    fn expect(&self, ticket: Ticket);
    /// The job's outcome, its store side effects applied. Called on the WNS worker that
    /// got it, or on the dispatching thread for a job refused at once.
    fn finished(&self, ticket: Ticket, outcome: Outcome);
}

/// Whether the reply can be sent now or must wait for WNS.
#[derive(Debug)]
pub enum Decision {
    /// Reply now with this outcome.
    Now(PushOutcome),
    /// The job is queued: its outcome goes to the [`Answer`] under this ticket.
    Later(Ticket),
}

struct Trailing {
    target: NodeTarget,
    summary: Summary,
}

/// Coalescing windows: in memory for a store of its own (one instance), or in the
/// database when instances share it, so `push.min_interval_ms` holds per node across
/// all of them.
enum Windows {
    Local(Coalescer<Trailing>),
    Shared {
        interval: Duration,
        /// Trailing pushes this instance owns, soonest first: when to take them, and
        /// where they go (their summary is the database's latest at that time).
        owed: Vec<(Instant, Node, NodeTarget)>,
    },
}

/// The dispatcher, owned by the XMPP thread.
pub struct Dispatcher {
    store: Arc<Store>,
    pool: Option<Arc<WnsPool>>,
    effects: Arc<Effects>,
    clock: Clock,
    deadline: Duration,
    require_secret: bool,
    windows: Windows,
    answers: Arc<dyn Answer>,
    next_ticket: u64,
}

/// What a [`Dispatcher`] needs besides its outcome channel.
pub struct DispatchSettings {
    /// The store, for node lookups.
    pub store: Arc<Store>,
    /// The WNS pool; `None` when WNS delivery is not configured.
    pub pool: Option<Arc<WnsPool>>,
    /// The outcomes' store side effects.
    pub effects: Arc<Effects>,
    /// The wall clock (the last-seen shortcut).
    pub clock: Clock,
    /// `wns.deadline_ms`.
    pub deadline: Duration,
    /// `push.min_interval_ms`.
    pub min_interval: Duration,
    /// True in component mode (the publish-options carry the secret); false in client
    /// mode (PEP forwards none; the node name is the capability).
    pub require_secret: bool,
}

impl Dispatcher {
    /// A dispatcher that hands the outcomes of the publishes it accepts to `answers`.
    pub fn new(s: DispatchSettings, answers: Arc<dyn Answer>) -> Self {
        let shared = s.store.is_shared() && !s.min_interval.is_zero();
        Self {
            store: s.store,
            pool: s.pool,
            effects: s.effects,
            clock: s.clock,
            deadline: s.deadline,
            require_secret: s.require_secret,
            windows: if shared {
                Windows::Shared {
                    interval: s.min_interval,
                    owed: Vec::new(),
                }
            } else {
                Windows::Local(Coalescer::new(s.min_interval))
            },
            answers,
            next_ticket: 0,
        }
    }

    /// Decides a publish from `from` (the user's server; client mode knows it only
    /// where the event names its publisher, and skips the domain check otherwise).
    pub fn publish(&mut self, from: Option<&str>, p: &Publish, now: Instant) -> Decision {
        let mut decisions = self.publish_batch(&[(from, p)], now);
        decisions.pop().unwrap_or_else(|| {
            let bug = StoreError::Internal("a publish was left without a decision".into());
            Decision::Now(PushOutcome::Internal(bug))
        })
    }

    /// Decides publishes read together, each with who sent it, and answers in their
    /// order: the same decisions as one [`Dispatcher::publish`] after another, but
    /// with one node lookup for all of them, and on a shared store one coalescing
    /// statement, so PostgreSQL costs a round trip or two per batch, not per publish.
    pub fn publish_batch(
        &mut self,
        items: &[(Option<&str>, &Publish)],
        now: Instant,
    ) -> Vec<Decision> {
        let nodes: Vec<&Node> = items.iter().map(|(_, p)| &p.node).collect();
        let targets = match self.store.node_targets(&nodes) {
            Ok(targets) => targets,
            Err(e) => {
                return items
                    .iter()
                    .map(|_| Decision::Now(PushOutcome::Internal(e.clone())))
                    .collect();
            }
        };
        // Every publish that passes the checks is `Coalesced` until its window lets it
        // through.
        let mut decisions = Vec::with_capacity(items.len());
        let mut passed: Vec<(usize, Trailing)> = Vec::new();
        for (i, (&(from, p), target)) in items.iter().zip(targets).enumerate() {
            decisions.push(Decision::Now(match self.check(from, p, target) {
                Ok(target) => {
                    let summary = p.summary.clone();
                    passed.push((i, Trailing { target, summary }));
                    PushOutcome::Coalesced
                }
                Err(outcome) => outcome,
            }));
        }
        let mut sends = Vec::with_capacity(passed.len());
        match &mut self.windows {
            Windows::Local(c) => {
                for (i, trailing) in passed {
                    if let (Admit::Send, Some(push)) = c.admit(&items[i].1.node, trailing, now) {
                        sends.push((i, push));
                    }
                }
            }
            Windows::Shared { interval, owed } => {
                let asks: Vec<(&Node, &Summary)> = passed
                    .iter()
                    .map(|(i, _)| (&items[*i].1.node, &items[*i].1.summary))
                    .collect();
                // A database that cannot decide is no reason to drop the pushes.
                let admits = self
                    .store
                    .admit_pushes(&asks, *interval)
                    .unwrap_or_else(|_| vec![SharedAdmit::Send; asks.len()]);
                for ((i, trailing), admit) in passed.into_iter().zip(admits) {
                    match admit {
                        SharedAdmit::Send => sends.push((i, trailing)),
                        SharedAdmit::Coalesced => {}
                        SharedAdmit::CoalescedTrailing { due_in } => {
                            let at = now + due_in;
                            let k = owed.partition_point(|(t, _, _)| *t <= at);
                            owed.insert(k, (at, items[i].1.node.clone(), trailing.target));
                        }
                    }
                }
            }
        }
        for (i, push) in sends {
            self.next_ticket += 1;
            let ticket = Ticket(self.next_ticket);
            self.answers.expect(ticket);
            self.submit(push, Some(ticket), now);
            decisions[i] = Decision::Later(ticket);
        }
        decisions
    }

    /// The checks a publish must pass before its window is asked: a known node, the
    /// right secret (component mode), the account's domain (bare_jid clients), and WNS
    /// configured. Gives the push target, or the outcome to answer at once.
    fn check(
        &self,
        from: Option<&str>,
        p: &Publish,
        target: Option<NodeTarget>,
    ) -> Result<NodeTarget, PushOutcome> {
        let target = target.ok_or(PushOutcome::UnknownNode)?;
        if self.require_secret {
            let ok = p.secret.as_deref().is_some_and(|s| target.secret.verify(s));
            if !ok {
                return Err(PushOutcome::BadSecret);
            }
        }
        if let (Some(domain), Some(from)) = (&target.domain, from)
            && jid_domain(from) != *domain
        {
            return Err(PushOutcome::ForeignDomain);
        }
        if self.pool.is_none() {
            return Err(PushOutcome::NoWns);
        }
        Ok(target)
    }

    /// Sends trailing pushes whose coalescing window ended, and lets go of a stale
    /// lookup snapshot.
    pub fn tick(&mut self, now: Instant) {
        self.store.end_stale_read();
        let due: Vec<Trailing> = match &mut self.windows {
            Windows::Local(c) => c.due(now),
            Windows::Shared { owed, .. } => {
                let n = owed.partition_point(|(t, _, _)| *t <= now);
                let store = &self.store;
                owed.drain(..n)
                    .filter_map(|(_, node, target)| match store.take_trailing(&node) {
                        Ok(Some(summary)) => Some(Trailing { target, summary }),
                        Ok(None) => None,
                        Err(e) => {
                            log::warn!("push: cannot take a trailing push: {e}");
                            None
                        }
                    })
                    .collect()
            }
        };
        for push in due {
            self.submit(push, None, now);
        }
    }

    /// When [`Dispatcher::tick`] next has work.
    pub fn next_due(&self) -> Option<Instant> {
        match &self.windows {
            Windows::Local(c) => c.next_due(),
            Windows::Shared { owed, .. } => owed.first().map(|(t, _, _)| *t),
        }
    }

    fn submit(&self, push: Trailing, ticket: Option<Ticket>, now: Instant) {
        let Some(pool) = &self.pool else { return };
        let t = push.target;
        let generation = ClientGeneration::of(t.version, t.account_form);
        let body = payload::push(generation, t.account_key.as_str(), &push.summary);
        let answers = self.answers.clone();
        let effects = self.effects.clone();
        let touch = t.last_seen_at < self.clock.unix_now() - 3600;
        pool.submit(Job::new(
            t.device_id,
            t.channel_uri,
            body,
            now + self.deadline,
            Box::new(move |f: Finished| {
                effects.apply(&f, touch);
                match ticket {
                    Some(ticket) => answers.finished(ticket, f.outcome),
                    None => log::debug!(
                        "push: trailing push to device {}: {}",
                        f.device.short(),
                        f.outcome
                    ),
                }
            }),
        ));
    }
}
