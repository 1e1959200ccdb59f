//! Dispatch: a validated publish → node lookup → secret and domain checks → coalescing
//! → a WNS job, and the job's outcome → back to the XMPP thread.
//!
//! Threads: runs on `xmpp-io` (a store read per publish, microseconds; never waits on
//! WNS). Job outcomes are sent back over a channel by `wns-worker-*` threads. Locks:
//! the store's, for one query.

pub mod coalesce;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::store::{NodeTarget, Store, StoreError};
use crate::types::ClientGeneration;
use crate::wns::payload::{self, Summary};
use crate::wns::{Job, Outcome, WnsPool};
use crate::xmpp::publish::{Publish, jid_domain};
use coalesce::{Admit, Coalescer};

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

/// A job's outcome on its way back to the XMPP thread.
#[derive(Debug)]
pub struct Completed {
    /// The token handed out by [`Dispatcher::publish`].
    pub token: u64,
    /// What WNS did.
    pub outcome: Outcome,
}

/// Whether the reply can be sent now or must wait for WNS.
#[derive(Debug)]
pub enum Decision {
    /// Reply now with this outcome.
    Now(PushOutcome),
    /// Reply when [`Completed`] with this token arrives.
    Later(u64),
}

struct Trailing {
    target: NodeTarget,
    summary: Summary,
}

/// The dispatcher, owned by the XMPP thread.
pub struct Dispatcher {
    store: Arc<Store>,
    pool: Option<Arc<WnsPool>>,
    deadline: Duration,
    require_secret: bool,
    coalescer: Coalescer<Trailing>,
    outcomes: Sender<Completed>,
    next_token: u64,
}

impl Dispatcher {
    /// `require_secret` is true in component mode (the publish-options carry it) and
    /// false in client mode (PEP forwards none; the node name is the capability).
    pub fn new(
        store: Arc<Store>,
        pool: Option<Arc<WnsPool>>,
        deadline: Duration,
        min_interval: Duration,
        require_secret: bool,
        outcomes: Sender<Completed>,
    ) -> Self {
        Self {
            store,
            pool,
            deadline,
            require_secret,
            coalescer: Coalescer::new(min_interval),
            outcomes,
            next_token: 0,
        }
    }

    /// Decides a publish from `from` (the user's server; client mode knows it only
    /// where the event names its publisher, and skips the domain check otherwise).
    pub fn publish(&mut self, from: Option<&str>, p: &Publish, now: Instant) -> Decision {
        let target = match self.store.node_target(&p.node) {
            Ok(Some(t)) => t,
            Ok(None) => return Decision::Now(PushOutcome::UnknownNode),
            Err(e) => return Decision::Now(PushOutcome::Internal(e)),
        };
        if self.require_secret {
            let ok = p.secret.as_deref().is_some_and(|s| target.secret.verify(s));
            if !ok {
                return Decision::Now(PushOutcome::BadSecret);
            }
        }
        if let (Some(domain), Some(from)) = (&target.domain, from)
            && jid_domain(from) != *domain
        {
            return Decision::Now(PushOutcome::ForeignDomain);
        }
        if self.pool.is_none() {
            return Decision::Now(PushOutcome::NoWns);
        }
        let trailing = Trailing {
            target,
            summary: p.summary.clone(),
        };
        match self.coalescer.admit(&p.node, trailing, now) {
            (Admit::Coalesced, _) | (Admit::Send, None) => Decision::Now(PushOutcome::Coalesced),
            (Admit::Send, Some(push)) => {
                self.next_token += 1;
                let token = self.next_token;
                self.submit(push, Some(token), now);
                Decision::Later(token)
            }
        }
    }

    /// Sends trailing pushes whose coalescing window ended.
    pub fn tick(&mut self, now: Instant) {
        for push in self.coalescer.due(now) {
            self.submit(push, None, now);
        }
    }

    /// When [`Dispatcher::tick`] next has work.
    pub fn next_due(&self) -> Option<Instant> {
        self.coalescer.next_due()
    }

    fn submit(&self, push: Trailing, token: Option<u64>, now: Instant) {
        let Some(pool) = &self.pool else { return };
        let t = push.target;
        let generation = ClientGeneration::of(t.version, t.account_form);
        let body = payload::push(generation, t.account_key.as_str(), &push.summary);
        let outcomes = self.outcomes.clone();
        let device = t.device_id.short().to_owned();
        let touch = t.last_seen_at < crate::store::unix_now() - 3600;
        pool.submit(
            Job::new(
                t.device_id,
                t.channel_uri,
                body,
                now + self.deadline,
                Box::new(move |outcome| match token {
                    Some(token) => {
                        let _ = outcomes.send(Completed { token, outcome });
                    }
                    None => log::debug!("push: trailing push to device {device}: {outcome}"),
                }),
            )
            .touch_on_delivery(touch),
        );
    }
}
