//! Writing the rest of a large data set on tokio's blocking pool, so that its association goes
//! on reading the socket while earlier fragments are being written.
//!
//! One association reading and writing in turn is bound by the sum of both: on tmpfs, where
//! writing costs the kernel more than receiving, 0.5-0.8 GB/s for 1 GiB instances here; with
//! the writes on another core, 1.1-1.5 GB/s. Small instances never get here (the hand-offs
//! cost more than the overlap saves): see `BACKGROUND_AFTER` in `writer`.
//!
//! Fragments (`Bytes`, slices of the receive buffer, never copied) are queued; a job on the
//! blocking pool writes them in order, one job per instance at a time. The job runs while
//! there is something to write: it drains the queue, lingers `LINGER` for more, and ends
//! when none comes, giving its thread back; the next fragment starts a new job. A sender that
//! goes silent thus holds no thread, however long it stays (a thread waiting on a queue per
//! silent sender would let a few hundred stalled senders exhaust the pool), while a flowing
//! one costs no more than a lock and, when the job waits, a wake-up per fragment. A job also
//! ends after `JOB_BYTES`, so that when the pool is busy, each instance's next job queues
//! behind the others' (none waits for another instance's whole data set).
//!
//! When the queue holds `QUEUE_BYTES`, the association waits for the job to take them: it
//! stops reading, and TCP pushes back on the sender when the disk is slower than the network.
//! Memory stays bounded (what is queued, and what the job is writing).

use std::fs::File;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;

/// Bytes queued at most: with 128 KiB PDUs, 4 fragments.
const QUEUE_BYTES: usize = 512 * 1024;
/// How long a job waits for more fragments before it ends: several PDUs' time at full speed
/// (about 0.1 ms per 128 KiB fragment), little enough that a silent sender holds a thread
/// for no more than that.
const LINGER: Duration = Duration::from_millis(2);
/// Bytes one job writes at most before it ends and a new one queues on the pool.
const JOB_BYTES: usize = 64 << 20;

pub struct BackgroundWriter {
    handoff: Arc<Handoff>,
}

/// What the association and the job writing its file share: the queue between them and the
/// means to wake each other.
struct Handoff {
    state: Mutex<State>,
    /// Wakes a lingering job: fragments came, or the writer is done.
    more: Condvar,
    /// Wakes the association: the job took what was queued, or ended.
    taken: Notify,
}

struct State {
    queue: Vec<Bytes>,
    queued_len: usize,
    /// The file, while no job has it.
    file: Option<File>,
    job_running: bool,
    /// The job waits on `more` (so a fragment must wake it).
    job_lingering: bool,
    /// No more fragments will come: the job ends as soon as the queue is empty.
    closed: bool,
    /// The first write error: nothing is written after it.
    failure: Option<io::Error>,
}

impl BackgroundWriter {
    /// Appends what `write` is given to `file`, in order.
    pub fn start(file: File) -> Self {
        let state = State {
            queue: Vec::new(),
            queued_len: 0,
            file: Some(file),
            job_running: false,
            job_lingering: false,
            closed: false,
            failure: None,
        };
        let handoff = Handoff { state: Mutex::new(state), more: Condvar::new(), taken: Notify::new() };
        BackgroundWriter { handoff: Arc::new(handoff) }
    }

    /// Queues `data` (waiting while the queue is full) and sees that a job writes it. Must
    /// be awaited within a tokio runtime. After a write error nothing more is written; the
    /// error comes with `finish`.
    pub async fn write(&mut self, data: Bytes) {
        loop {
            // Registered before the state is checked, so that no wake-up is missed.
            let taken = self.handoff.taken.notified();
            {
                let mut state = self.handoff.lock();
                if state.failure.is_some() {
                    return;
                }
                if state.queued_len < QUEUE_BYTES {
                    state.queued_len += data.len();
                    state.queue.push(data);
                    self.wake_or_start_job(&mut state);
                    return;
                }
            }
            taken.await;
        }
    }

    /// Waits until everything queued is written; the file back, or the first write error.
    pub async fn finish(self) -> io::Result<File> {
        loop {
            let taken = self.handoff.taken.notified();
            {
                let mut state = self.handoff.lock();
                state.closed = true;
                if !state.job_running {
                    if let Some(e) = state.failure.take() {
                        return Err(e);
                    }
                    return state.file.take().ok_or_else(|| io::Error::other("background writer lost its file"));
                }
                if state.job_lingering {
                    self.handoff.more.notify_one();
                }
            }
            taken.await;
        }
    }

    fn wake_or_start_job(&self, state: &mut MutexGuard<'_, State>) {
        if state.job_lingering {
            self.handoff.more.notify_one();
        } else if !state.job_running {
            state.job_running = true;
            let handoff = Arc::clone(&self.handoff);
            tokio::task::spawn_blocking(move || handoff.run_job());
        }
    }
}

impl Drop for BackgroundWriter {
    /// Given up (association aborted, instance refused): what is queued is not written.
    fn drop(&mut self) {
        let mut state = self.handoff.lock();
        state.closed = true;
        state.queue.clear();
        state.queued_len = 0;
        if state.job_lingering {
            self.handoff.more.notify_one();
        }
    }
}

impl Handoff {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A job that panicked while writing leaves a consistent state: use it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A job: writes what is queued until the queue stays empty for `LINGER` (or the writer is
    /// closed), a write fails, or it has written `JOB_BYTES` (then a new job is started).
    fn run_job(self: Arc<Self>) {
        let Some(mut file) = self.lock().file.take() else {
            return;
        };
        let mut written = 0;
        loop {
            let Some(batch) = self.next_batch(written >= JOB_BYTES) else {
                break;
            };
            self.taken.notify_one();
            let result = batch.iter().try_for_each(|fragment| file.write_all(fragment));
            written += batch.iter().map(Bytes::len).sum::<usize>();
            if let Err(e) = result {
                let mut state = self.lock();
                state.failure = Some(e);
                state.queue.clear();
                state.queued_len = 0;
                break;
            }
        }
        let mut state = self.lock();
        state.file = Some(file);
        let more_to_write = !state.queue.is_empty() && state.failure.is_none();
        if more_to_write {
            // Requeued behind other instances' jobs.
            let handoff = Arc::clone(&self);
            drop(state);
            tokio::task::spawn_blocking(move || handoff.run_job());
            return;
        }
        state.job_running = false;
        drop(state);
        self.taken.notify_one();
    }

    /// What is queued, waiting up to `LINGER` for some; None when the job should end.
    fn next_batch(&self, job_done: bool) -> Option<Vec<Bytes>> {
        let mut state = self.lock();
        if job_done {
            return None;
        }
        if state.queue.is_empty() && !state.closed {
            state.job_lingering = true;
            state = self
                .more
                .wait_timeout_while(state, LINGER, |s| s.queue.is_empty() && !s.closed)
                .map_or_else(|poisoned| poisoned.into_inner().0, |(state, _)| state);
            state.job_lingering = false;
        }
        if state.queue.is_empty() || state.failure.is_some() {
            return None;
        }
        state.queued_len = 0;
        Some(std::mem::take(&mut state.queue))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_in_order_then_gives_the_file_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut writer = BackgroundWriter::start(File::create(&path).unwrap());
        let mut expected = Vec::new();
        for i in 0..200u8 {
            let fragment = vec![i; 10_000 + 100 * usize::from(i)];
            expected.extend_from_slice(&fragment);
            writer.write(Bytes::from(fragment)).await;
            if i % 50 == 0 {
                // A silent sender: the job ends, the next fragment starts another.
                tokio::time::sleep(LINGER * 3).await;
            }
        }
        let mut file = writer.finish().await.unwrap();
        file.write_all(b"end").unwrap();
        expected.extend_from_slice(b"end");
        assert!(std::fs::read(&path).unwrap() == expected);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_job_runs_while_the_sender_is_silent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut writer = BackgroundWriter::start(File::create(&path).unwrap());
        writer.write(Bytes::from(vec![1; 1000])).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while writer.handoff.lock().job_running {
            assert!(std::time::Instant::now() < deadline, "the job never ended");
            tokio::time::sleep(LINGER).await;
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1000, "written before finish");
        writer.finish().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_data_set_is_written_by_successive_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut writer = BackgroundWriter::start(File::create(&path).unwrap());
        let fragment = Bytes::from(vec![7; 128 * 1024]);
        let count = 2 * JOB_BYTES / fragment.len() + 3;
        for _ in 0..count {
            writer.write(fragment.clone()).await;
        }
        writer.finish().await.unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), (count * fragment.len()) as u64);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_error_is_reported_by_finish() {
        // /dev/full: every write fails with ENOSPC, as on a full disk.
        let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
            eprintln!("skipped: no /dev/full");
            return;
        };
        let mut writer = BackgroundWriter::start(full);
        for _ in 0..10 {
            writer.write(Bytes::from_static(&[1; 128 * 1024])).await;
        }
        let err = writer.finish().await.unwrap_err();
        assert_eq!(err.raw_os_error(), Some(28), "{err}");
    }
}
