//! The forwarding engine: sends stored instances on to other nodes, job by job. A job is a
//! destination and the items to send it, in order, on one association (`association`),
//! proposing one presentation context per (SOP class, stored transfer syntax) of its items
//! (`job`); each data set is streamed from its file byte for byte as stored (`stored`).
//! Python submits jobs in batches and takes their outcomes in batches (`outcome`), each
//! classified as PS3.4 and the routers' practice say (`classify`); `cancel` and `stop` reach
//! running jobs through `control`. The engine owns its runtime: forwarding never takes a
//! worker from the receiver's.
//!
//! Built on the requestor (`client`) and on reading back stored files (`storage::read_back`);
//! what to forward, where, and what to do with an outcome (retries, the queue) is Python's.

mod association;
pub mod classify;
mod control;
pub mod job;
pub mod outcome;
mod stored;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tokio::sync::Semaphore;

use crate::client::{Client, ClientError, ClientOptions};
use association::Settings;
use classify::Stage;
use control::{Halt, Registry};
use job::{ForwardJob, ForwarderConfig};
use outcome::{ForwardOutcome, OutcomeSink, OutcomeSource};

/// The engine: its runtime, the jobs running on it, and their outcomes.
pub struct Forwarder {
    runtime: Option<Runtime>,
    settings: Arc<Settings>,
    jobs: Arc<Registry>,
    sink: OutcomeSink,
    source: OutcomeSource,
    stopped: std::sync::atomic::AtomicBool,
}

impl Forwarder {
    /// An engine with its own runtime; why not when the configuration is unusable.
    pub fn new(config: &ForwarderConfig) -> Result<Forwarder, String> {
        let timeout = config.checked_timeout()?;
        // Sending is waiting on sockets and files: a couple of workers carry many
        // associations; more would only take cores from the receiver.
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("oxidip-forward")
            .on_thread_start(yield_to_receiving(thread_niceness()))
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the forwarding runtime: {e}"))?;
        let settings = Arc::new(Settings {
            timeout,
            max_pdu_length: config.max_pdu_length,
            associations: Arc::new(Semaphore::new(config.max_associations)),
        });
        let jobs = Arc::new(Registry::default());
        let (sink, source) = outcome::channel(jobs.clone());
        Ok(Forwarder { runtime: Some(runtime), settings, jobs, sink, source, stopped: false.into() })
    }

    /// Starts the jobs and returns at once. After `stop`, each ends at once, cancelled.
    pub fn submit(&self, jobs: Vec<ForwardJob>) {
        let runtime = self.runtime.as_ref().expect("the runtime lives until drop");
        let stopped = self.stopped.load(std::sync::atomic::Ordering::SeqCst);
        for job in jobs {
            let level = if stopped { Halt::Stop } else { Halt::Run };
            let (reporter, halt) = self.sink.begin(job.job_id, level);
            runtime.spawn(association::run(job, self.settings.clone(), halt, reporter));
        }
    }

    /// Up to `max` outcomes, waiting up to `timeout` for the first (blocking: call it
    /// without the GIL).
    pub fn next_outcomes(&self, max: usize, timeout: Duration) -> Vec<ForwardOutcome> {
        self.source.next(max, timeout)
    }

    /// A-ABORT the associations of these jobs; each ends `Cancelled`. Unknown or ended ids
    /// are ignored.
    pub fn cancel(&self, job_ids: &[i64]) {
        self.jobs.raise(Some(job_ids), Halt::Cancel);
    }

    /// Stops: no new item is begun (jobs submitted from now on end at once); the items
    /// being sent finish, for up to `timeout`, and their associations are released; then
    /// the rest are aborted. Returns once every job has ended (its `JobEnded` is in the
    /// outcomes), or the aborts themselves have had the engine's timeout to go out.
    pub fn stop(&self, timeout: Duration) {
        self.stopped.store(true, std::sync::atomic::Ordering::SeqCst);
        self.jobs.raise(None, Halt::Stop);
        if self.jobs.wait_none(Instant::now() + timeout) {
            return;
        }
        self.jobs.raise(None, Halt::Abort);
        // An A-ABORT is one bounded write, then the close: each within the timeout.
        self.jobs.wait_none(Instant::now() + 2 * self.settings.timeout + Duration::from_secs(1));
    }

    /// Jobs submitted and not yet ended.
    pub fn running(&self) -> usize {
        self.jobs.len()
    }
}

/// How much lower than the rest of the process the engine's threads run (Linux niceness).
/// Receiving and forwarding share the machine in `oxidip serve`: a modality waiting for its
/// C-STORE responses comes before instances already safe on disk, so under contention for
/// the CPU forwarding yields (on an idle CPU it runs at full speed). 10 gives a forwarding
/// thread about a tenth of a contended CPU (CFS weights 110 against 1024).
const NICENESS: libc::c_int = 10;

/// The calling thread's niceness (0 where it cannot be known).
fn thread_niceness() -> libc::c_int {
    #[cfg(target_os = "linux")]
    // SAFETY: a plain system call on this thread's own id.
    unsafe {
        libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t)
    }
    #[cfg(not(target_os = "linux"))]
    0
}

/// What each engine thread runs first: its niceness becomes `base + NICENESS`, `base` being
/// that of the thread that made the engine (a thread inherits its creator's niceness, and
/// the blocking pool's threads are created by already lowered workers: adding to the
/// inherited value would lower those again). `setpriority` on a thread id applies to that
/// thread alone on Linux; a failure leaves it as it was.
fn yield_to_receiving(base: libc::c_int) -> impl Fn() + Send + Sync + 'static {
    move || {
        #[cfg(target_os = "linux")]
        // SAFETY: a plain system call on this thread's own id.
        unsafe {
            libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, base + NICENESS);
        }
        #[cfg(not(target_os = "linux"))]
        let _ = base;
    }
}

/// C-ECHO (PS3.7 §9.1.5) on a new association with `host`:`port`, released after: the
/// status; why there was no answer otherwise, in the words a job's end uses. Blocking.
pub fn echo(host: &str, port: u16, calling_aet: &str, called_aet: &str, timeout: Duration) -> Result<u16, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let address = job::address(host, port);
    let failure = |e: ClientError| classify::association_failure(&e, &address, timeout, Stage::Connecting).1;
    runtime.block_on(async {
        // No context: the client proposes Verification.
        let options = ClientOptions { timeout, ..ClientOptions::new(calling_aet, called_aet, Vec::new()) };
        let mut client = Client::connect((host, port), options).await.map_err(failure)?;
        let status = client.echo().await.map_err(failure)?;
        // The answer is in; a peer that fumbles the release changes nothing.
        let _ = client.release().await;
        Ok(status)
    })
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        // Without waiting for the tasks: each job still running ends (its reporter, dropped,
        // says so) and its connection closes.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
