//! The jobs running, and how `cancel` and `stop` reach them: each job watches its own
//! [`Halt`] level, raised from Python's threads and awaited by the job's task at the points
//! where it may stop.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::watch;

/// How far a job must stop, in rising order: a level, once raised, never comes down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Halt {
    Run,
    /// `stop`: no new item; the one being sent finishes, then the association is released.
    Stop,
    /// `cancel`: A-ABORT now, even in the middle of an item.
    Cancel,
    /// `stop`'s timeout passed: A-ABORT now.
    Abort,
}

/// What a job's task watches.
pub struct HaltWatch(watch::Receiver<Halt>);

impl HaltWatch {
    pub fn level(&self) -> Halt {
        *self.0.borrow()
    }

    /// Waits until the level is at least `level`; the level then.
    pub async fn reaches(&mut self, level: Halt) -> Halt {
        let reached = self.0.wait_for(|current| *current >= level).await.map(|current| *current);
        match reached {
            Ok(current) => current,
            // The registry never drops a sender before the job ends.
            Err(_) => std::future::pending().await,
        }
    }
}

/// The jobs submitted and not yet ended, by a key of ours (Python may submit a job id again
/// once it has ended; the key tells the two apart).
#[derive(Default)]
pub struct Registry {
    jobs: Mutex<HashMap<u64, (i64, watch::Sender<Halt>)>>,
    next_key: AtomicU64,
    none: Condvar,
}

impl Registry {
    fn jobs(&self) -> MutexGuard<'_, HashMap<u64, (i64, watch::Sender<Halt>)>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A job begins at `level` (Run, or higher once the forwarder stopped); its key.
    pub fn add(&self, job_id: i64, level: Halt) -> (u64, HaltWatch) {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = watch::channel(level);
        self.jobs().insert(key, (job_id, sender));
        (key, HaltWatch(receiver))
    }

    /// The job ends: `report` (sending its JobEnded) runs under the registry's lock, so that
    /// whoever sees the JobEnded sees the job no longer running, and whoever sees no job
    /// running finds every JobEnded sent.
    pub fn end(&self, key: u64, report: impl FnOnce()) {
        let mut jobs = self.jobs();
        report();
        jobs.remove(&key);
        if jobs.is_empty() {
            self.none.notify_all();
        }
    }

    pub fn len(&self) -> usize {
        self.jobs().len()
    }

    /// Raises the level of the jobs with these ids (all, for None).
    pub fn raise(&self, job_ids: Option<&[i64]>, level: Halt) {
        for (job_id, sender) in self.jobs().values() {
            if job_ids.is_none_or(|ids| ids.contains(job_id)) {
                sender.send_if_modified(|current| {
                    let higher = level > *current;
                    if higher {
                        *current = level;
                    }
                    higher
                });
            }
        }
    }

    /// Waits until no job runs, at most until `deadline`; whether none runs.
    pub fn wait_none(&self, deadline: Instant) -> bool {
        let jobs = self.jobs();
        let timeout = deadline.saturating_duration_since(Instant::now());
        let (jobs, _) =
            self.none.wait_timeout_while(jobs, timeout, |jobs| !jobs.is_empty()).unwrap_or_else(|e| e.into_inner());
        jobs.is_empty()
    }
}
