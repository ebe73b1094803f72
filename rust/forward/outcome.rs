//! What the engine reports back to Python, as it happens: serde mirrors of
//! `oxidip._boundary.ItemOutcome` and `JobEnded` (internally tagged by "kind", like the
//! receiver's events), and the channel they go through.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use super::control::{Halt, HaltWatch, Registry};

/// What became of one item (PS3.4 C.4.2.1.5 statuses, classified by `classify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryResult {
    Delivered,
    /// Stored by the destination with a warning (0001, Bxxx): delivered, and recorded.
    Warning,
    /// Refused for good, or never sent (no context, the file missing or changed).
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ItemOutcome {
    pub job_id: i64,
    pub item_id: i64,
    pub result: DeliveryResult,
    /// The destination's DIMSE status; None when the item failed before being sent.
    pub status: Option<u16>,
    /// The destination's ErrorComment (or, without one, what its status means), or our words
    /// for an item never sent.
    pub comment: String,
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobEndKind {
    /// Every item was tried (each has its ItemOutcome) and the association released.
    Ok,
    /// Worth retrying later: the destination was unreachable, busy or went away.
    Transient,
    /// Retrying will not help: the destination rejected the association for good.
    Permanent,
    /// Ended on request (`cancel`, `stop`).
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobEnded {
    pub job_id: i64,
    pub end: JobEndKind,
    /// "" when ok; else what happened, in words.
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind")]
pub enum ForwardOutcome {
    #[serde(rename = "item")]
    Item(ItemOutcome),
    #[serde(rename = "job")]
    Job(JobEnded),
}

/// The sending end of the outcome channel, shared by the job tasks.
#[derive(Clone)]
pub struct OutcomeSink {
    sender: mpsc::Sender<ForwardOutcome>,
    jobs: Arc<Registry>,
}

/// The receiving end, drained by `Forwarder::next_outcomes`.
pub struct OutcomeSource {
    /// One taker at a time (Python may call from several threads).
    receiver: Mutex<mpsc::Receiver<ForwardOutcome>>,
}

/// The outcome channel (unbounded: what it holds is bounded by the items Python submitted),
/// whose jobs are registered in `jobs` while they run.
pub fn channel(jobs: Arc<Registry>) -> (OutcomeSink, OutcomeSource) {
    let (sender, receiver) = mpsc::channel();
    (OutcomeSink { sender, jobs }, OutcomeSource { receiver: Mutex::new(receiver) })
}

impl OutcomeSink {
    /// A job begins at `level`: it is registered (it runs, `cancel` and `stop` reach it)
    /// until its reporter ends it (or is dropped).
    pub fn begin(&self, job_id: i64, level: Halt) -> (JobReporter, HaltWatch) {
        let (key, halt) = self.jobs.add(job_id, level);
        (JobReporter { job_id, key, sink: self.clone(), ended: false }, halt)
    }
}

impl OutcomeSource {
    /// Waits up to `timeout` for a first outcome, then takes those already there, up to
    /// `max` in all; empty on timeout.
    pub fn next(&self, max: usize, timeout: Duration) -> Vec<ForwardOutcome> {
        let mut batch = Vec::new();
        if max == 0 {
            return batch;
        }
        let receiver = self.receiver.lock().unwrap_or_else(|e| e.into_inner());
        match receiver.recv_timeout(timeout) {
            Ok(outcome) => batch.push(outcome),
            Err(_) => return batch,
        }
        while batch.len() < max {
            match receiver.try_recv() {
                Ok(outcome) => batch.push(outcome),
                Err(_) => break,
            }
        }
        batch
    }
}

/// Reports the outcomes of one job; its `JobEnded` is sent by `end`, or, should the task
/// die without ending it (a panic, the runtime shut down), by its drop, so that every job
/// submitted ends exactly once.
pub struct JobReporter {
    job_id: i64,
    key: u64,
    sink: OutcomeSink,
    ended: bool,
}

impl JobReporter {
    pub fn job_id(&self) -> i64 {
        self.job_id
    }

    pub fn item(&self, item_id: i64, result: DeliveryResult, status: Option<u16>, comment: String) {
        let outcome = ItemOutcome { job_id: self.job_id, item_id, result, status, comment };
        // The receiver lives as long as the Forwarder, which outlives its runtime's tasks.
        let _ = self.sink.sender.send(ForwardOutcome::Item(outcome));
    }

    pub fn end(mut self, end: JobEndKind, error: String) {
        self.send_end(end, error);
    }

    fn send_end(&mut self, end: JobEndKind, error: String) {
        if self.ended {
            return;
        }
        self.ended = true;
        let ended = ForwardOutcome::Job(JobEnded { job_id: self.job_id, end, error });
        self.sink.jobs.end(self.key, || {
            let _ = self.sink.sender.send(ended);
        });
    }
}

impl Drop for JobReporter {
    fn drop(&mut self) {
        self.send_end(JobEndKind::Transient, "the forwarding task ended without finishing the job".into());
    }
}
