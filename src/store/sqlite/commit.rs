//! Group commit: many writers, one transaction, one fsync.
//!
//! With `synchronous=FULL` every COMMIT waits for an fsync (≈0.17 ms on this machine's
//! disk), and one connection serialises them, which would cap registrations near
//! 5,000/s. Instead each write is queued as a job and whoever holds the connection lock
//! runs *every* queued job in one transaction, each inside its own SAVEPOINT so that one
//! job's failure rolls back only that job, then commits once and hands each job its
//! result. Callers still get their answer only after the COMMIT that contains their
//! write has returned, so "answered means durable" holds unchanged.
//!
//! Leader/follower, no extra thread. A writer queues its job. If no batch is being run,
//! it becomes the leader: it takes the whole queue, runs it under the connection lock,
//! commits, and delivers every result. Jobs queued meanwhile wait; when the leader is
//! done it hands leadership to the oldest waiting job's thread, which runs the next
//! batch. Followers block only on their own result channel, never on the connection
//! lock, so a finished write is answered as soon as its COMMIT returned.
//!
//! A batch that cannot start (another process holds the database locked past the busy
//! timeout) answers every job in it with that error, [`StoreError::Busy`], so each
//! client gets the documented "try again later" answer. The wait is budgeted per job:
//! a batch waits for the lock only as long as its oldest job has left of
//! [`BUSY_TIMEOUT`], so no write waits longer than that in total.
//!
//! Threads: any thread that writes (`reg-conn-*`, `wns-worker-*`, `xmpp-io`,
//! `ops-expiry`). Locks: `state` briefly, then the connection lock for one batch
//! (leader only).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded, select};
use rusqlite::{Connection, Transaction};

use super::{BUSY_TIMEOUT, StoreError};

/// A queued write.
struct Job {
    /// Runs inside a savepoint, reports its own success, and returns the closure that
    /// delivers its result once the batch's COMMIT has returned.
    run: Run,
    /// Answers the job with an error when its batch could not run it at all.
    fail: Box<dyn FnOnce(StoreError) + Send>,
    /// When it was queued: its share of [`BUSY_TIMEOUT`] runs from here.
    queued: Instant,
}

/// A job's write: runs inside a savepoint, says whether it succeeded, and returns how
/// to deliver its result.
type Run = Box<dyn FnOnce(&Transaction<'_>) -> (bool, Deliver) + Send>;
/// Delivers a job's result; gets the COMMIT error if the batch failed to commit.
type Deliver = Box<dyn FnOnce(Option<&StoreError>) + Send>;

struct Pending {
    job: Job,
    /// Wakes the job's thread to lead the next batch.
    lead: Sender<()>,
}

#[derive(Default)]
struct State {
    queue: Vec<Pending>,
    leading: bool,
}

/// The queue of writes waiting for the next batch.
#[derive(Default)]
pub struct Batcher {
    state: Mutex<State>,
    /// Batches committed and jobs run, for the shutdown log line and metrics.
    pub batches: AtomicU64,
    /// Jobs run.
    pub jobs: AtomicU64,
    /// Batches ended (committed or not), counted before any of their writers hears
    /// back: a read snapshot taken before the latest count may miss a write whose
    /// writer was told it is stored (`snapshot`).
    pub ended: AtomicU64,
}

impl Batcher {
    /// Runs `f` in a transaction (possibly shared with other writers' jobs) and returns
    /// its result after that transaction committed. If `f` fails, only its own changes
    /// are rolled back.
    pub fn write<R, F>(&self, conn: &Mutex<Connection>, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<R, StoreError> + Send + 'static,
    {
        let (done_tx, done_rx) = bounded::<Result<R, StoreError>>(1);
        let (lead_tx, lead_rx) = bounded::<()>(1);
        let job = make_job(done_tx, f);
        let leader = {
            let mut state = self.lock_state();
            state.queue.push(Pending { job, lead: lead_tx });
            !std::mem::replace(&mut state.leading, true)
        };
        if !leader {
            select! {
                recv(done_rx) -> r => return r.unwrap_or_else(|_| Err(aborted())),
                recv(lead_rx) -> msg => if msg.is_err() {
                    // Our job was taken into a running batch (which dropped its lead
                    // sender): its result is coming, and we are not to lead.
                    return wait(&done_rx);
                }
            }
        }
        self.lead(conn);
        wait(&done_rx)
    }

    /// Runs one batch with everything queued, then passes leadership on (or ends it).
    fn lead(&self, conn: &Mutex<Connection>) {
        // Passes leadership on when dropped, even if the batch panicked, so writers
        // never wait for a leader that is gone.
        let _hand_over = HandOver(self);
        let batch = std::mem::take(&mut self.lock_state().queue);
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.jobs.fetch_add(batch.len() as u64, Ordering::Relaxed);
        let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
        run_batch(
            &mut guard,
            batch.into_iter().map(|p| p.job).collect(),
            &self.ended,
        );
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct HandOver<'a>(&'a Batcher);

impl Drop for HandOver<'_> {
    fn drop(&mut self) {
        let mut state = self.0.lock_state();
        match state.queue.first() {
            None => state.leading = false,
            // Its thread is parked in `select!` on this channel (capacity 1, unused).
            Some(next) => {
                let _ = next.lead.try_send(());
            }
        }
    }
}

fn wait<R>(rx: &Receiver<Result<R, StoreError>>) -> Result<R, StoreError> {
    rx.recv().unwrap_or_else(|_| Err(aborted()))
}

/// A disconnected result channel can only mean a batch was dropped by a panic.
fn aborted() -> StoreError {
    StoreError::Internal("write batch aborted".into())
}

fn make_job<R, F>(tx: Sender<Result<R, StoreError>>, f: F) -> Job
where
    R: Send + 'static,
    F: FnOnce(&Transaction<'_>) -> Result<R, StoreError> + Send + 'static,
{
    let fail_tx = tx.clone();
    Job {
        run: Box::new(move |t| {
            let result = f(t);
            let ok = result.is_ok();
            let deliver: Deliver = Box::new(move |commit_error| {
                let _ = tx.send(match (commit_error, result) {
                    (Some(e), Ok(_)) => Err(e.clone()),
                    (_, r) => r,
                });
            });
            (ok, deliver)
        }),
        fail: Box::new(move |e| {
            let _ = fail_tx.send(Err(e));
        }),
        queued: Instant::now(),
    }
}

/// Runs `jobs` in one transaction, a savepoint each, commits, then delivers results.
/// Every job is answered: with its own result, with the COMMIT's error, or, if the
/// batch never got to run it, with the error that stopped the batch.
fn run_batch(conn: &mut Connection, jobs: Vec<Job>, ended: &AtomicU64) {
    let total = jobs.len();
    let mut delivers = Vec::with_capacity(total);
    let mut jobs = jobs.into_iter();
    let oldest = jobs.as_slice().iter().map(|j| j.queued).min();
    let budget = oldest.map_or(BUSY_TIMEOUT, |q| BUSY_TIMEOUT.saturating_sub(q.elapsed()));
    let outcome = (|| -> Result<(), StoreError> {
        // Wait for another process's lock only as long as the oldest job has left.
        conn.busy_timeout(budget.max(Duration::from_millis(1)))?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for job in jobs.by_ref() {
            tx.execute_batch("SAVEPOINT job")?;
            let (ok, deliver) = (job.run)(&tx);
            delivers.push(deliver);
            if ok {
                tx.execute_batch("RELEASE job")?;
            } else {
                tx.execute_batch("ROLLBACK TO job; RELEASE job")?;
            }
        }
        tx.commit()?;
        Ok(())
    })();
    ended.fetch_add(1, Ordering::Release);
    let error = outcome.err();
    match &error {
        Some(StoreError::Busy) => log::error!(
            "store: the database is locked by another connection or process (waited {:.1} s); \
             {total} writes answered busy, nothing of them stored",
            budget.as_secs_f64()
        ),
        Some(e) => log::error!("store: write batch of {total} failed, nothing of it stored: {e}"),
        None => {}
    }
    for job in jobs {
        (job.fail)(error.clone().unwrap_or_else(aborted));
    }
    for deliver in delivers {
        deliver(error.as_ref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn concurrent_writes_commit_and_a_failing_one_rolls_back_alone() {
        let conn = Arc::new(Mutex::new(Connection::open_in_memory().unwrap()));
        conn.lock()
            .unwrap()
            .execute_batch("CREATE TABLE t (v INTEGER PRIMARY KEY)")
            .unwrap();
        let batcher = Arc::new(Batcher::default());
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let (conn, batcher) = (conn.clone(), batcher.clone());
                std::thread::spawn(move || {
                    (0..50)
                        .map(|j| {
                            let v = i * 1000 + j;
                            batcher.write(&conn, move |tx| {
                                tx.execute("INSERT INTO t (v) VALUES (?1)", [v])?;
                                if v % 7 == 0 {
                                    return Err(StoreError::Busy); // undone, alone
                                }
                                Ok(v)
                            })
                        })
                        .filter(Result::is_ok)
                        .count()
                })
            })
            .collect();
        let ok: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        let rows: i64 = conn
            .lock()
            .unwrap()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        let failing = (0..8)
            .flat_map(|i| (0..50).map(move |j| i * 1000 + j))
            .filter(|v| v % 7 == 0)
            .count();
        assert_eq!(ok, 400 - failing);
        assert_eq!(rows as usize, ok);
    }

    /// While one batch is slow (an fsync, simulated by a sleep), the writes that arrive
    /// meanwhile must share the next transaction rather than queue one by one.
    #[test]
    fn writes_that_arrive_during_a_slow_commit_share_the_next_one() {
        let conn = Arc::new(Mutex::new(Connection::open_in_memory().unwrap()));
        let batcher = Arc::new(Batcher::default());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (conn, batcher) = (conn.clone(), batcher.clone());
                std::thread::spawn(move || {
                    for _ in 0..10 {
                        batcher
                            .write(&conn, |_| {
                                std::thread::sleep(std::time::Duration::from_millis(2));
                                Ok(())
                            })
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let (batches, jobs) = (
            batcher.batches.load(Ordering::Relaxed),
            batcher.jobs.load(Ordering::Relaxed),
        );
        assert_eq!(jobs, 80);
        assert!(batches < 40, "{batches} transactions for {jobs} writes");
    }
}
