//! The test push: one notification to one device, waited for. Both the client's
//! `request_test_push` (registration handler) and the operator's `test-push` command
//! call [`send_and_wait`], so the two report the same outcome for the same device
//! (issue 9 §6: they had a copy each).
//!
//! Threads: the caller's (`reg-conn-*` or `main`) blocks here until a WNS worker answers
//! or the deadline plus [`ANSWER_SLACK`] has passed. No locks of its own; the job goes
//! through the pool's bounded queue like every push.
//!
//! It never looks the device up: the caller has the record and picks the generation
//! (the registration handler uses the asking client's version, the admin command the
//! stored one).

use std::time::{Duration, Instant};

use super::{Job, Outcome, WnsPool, payload};
use crate::types::{ChannelUri, ClientGeneration, DeviceId};

/// How long past the job's own deadline the caller still waits for its outcome: the
/// pool answers every job by its deadline, so this only covers a worker stuck in a
/// request that `wns.timeout_ms` has not ended yet.
pub const ANSWER_SLACK: Duration = Duration::from_secs(2);

/// Sends the test push for `generation` to `channel` and returns what WNS made of it.
/// A push that is not answered in time counts as `Transient`.
pub fn send_and_wait(
    pool: &WnsPool,
    device: DeviceId,
    channel: ChannelUri,
    generation: ClientGeneration,
    deadline: Duration,
) -> Outcome {
    let (tx, rx) = crossbeam_channel::bounded(1);
    pool.submit(Job::new(
        device,
        channel,
        payload::test_push(generation),
        Instant::now() + deadline,
        Box::new(move |outcome| {
            // bounded(1) and one reply per job: never blocks the worker.
            let _ = tx.try_send(outcome);
        }),
    ));
    rx.recv_timeout(deadline + ANSWER_SLACK)
        .unwrap_or_else(|_| Outcome::Transient("no answer from WNS in time".into()))
}
