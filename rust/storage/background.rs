//! Writing the rest of a large data set on tokio's blocking pool, so that its association goes
//! on reading the socket while earlier fragments are being written.
//!
//! One association reading and writing in turn is bound by the sum of both: on tmpfs, where
//! writing costs the kernel more than receiving, 0.5-0.8 GB/s for 1 GiB instances here; with
//! the writes on another core, 1.1-1.5 GB/s. Small instances never get here (the hand-offs
//! cost more than the overlap saves): see `BACKGROUND_AFTER` in `writer`.
//!
//! Fragments (`Bytes`, slices of the receive buffer, never copied) gather into a batch; a full
//! batch goes to the blocking pool as one job, at most one job per instance at a time, so the
//! file is written in order. While a job writes, the next batch gathers; if it is full before
//! the job is done, the association waits for the job: it stops reading, and TCP pushes back
//! on the sender when the disk is slower than the network. Memory stays bounded (two batches
//! per instance), and a thread is held only while there is something to write: a sender that
//! goes silent holds none, however long it stays (a blocking thread waiting on a queue per
//! silent sender would let a few hundred stalled senders exhaust the pool).

use std::fs::File;
use std::io::{self, Write};

use bytes::Bytes;
use tokio::task::JoinHandle;

/// Bytes handed to the blocking pool at once: with 128 KiB PDUs, 4 fragments. A thread
/// hand-off (~10 µs) per batch costs a few percent at 1.5 GB/s; larger batches save little
/// and hold more memory per association (two batches at most).
const BATCH_BYTES: usize = 512 * 1024;

/// A job writing one batch: it gives the file back, with the outcome.
type WriteJob = JoinHandle<(File, io::Result<()>)>;

pub struct BackgroundWriter {
    /// The file, while no job has it.
    file: Option<File>,
    job: Option<WriteJob>,
    batch: Vec<Bytes>,
    batch_len: usize,
    /// The first write error: nothing is written after it.
    failure: Option<io::Error>,
}

impl BackgroundWriter {
    /// Appends what `write` is given to `file`, in order.
    pub fn start(file: File) -> Self {
        BackgroundWriter { file: Some(file), job: None, batch: Vec::new(), batch_len: 0, failure: None }
    }

    /// Queues `data`; once a batch is full, waits for the previous one to be written and
    /// hands it to the blocking pool. Must be awaited within a tokio runtime. After a write
    /// error nothing more is written; the error comes with `finish`.
    pub async fn write(&mut self, data: Bytes) {
        if self.failure.is_some() {
            return;
        }
        self.batch_len += data.len();
        self.batch.push(data);
        if self.batch_len >= BATCH_BYTES {
            self.wait_for_job().await;
            self.hand_off();
        }
    }

    /// Writes what is queued and waits until everything is written; the file back, or the
    /// first write error.
    pub async fn finish(mut self) -> io::Result<File> {
        self.wait_for_job().await;
        self.hand_off();
        self.wait_for_job().await;
        match (self.failure, self.file) {
            (Some(e), _) => Err(e),
            (None, Some(file)) => Ok(file),
            (None, None) => Err(io::Error::other("background writer lost its file")),
        }
    }

    /// Waits for the job in flight, if any, and takes the file back.
    async fn wait_for_job(&mut self) {
        let Some(job) = self.job.take() else {
            return;
        };
        match job.await {
            Ok((file, result)) => {
                self.file = Some(file);
                self.failure = result.err();
            }
            Err(join) => self.failure = Some(io::Error::other(format!("background writer failed: {join}"))),
        }
    }

    /// Starts a job writing the queued batch (none after a failure, or for an empty batch).
    fn hand_off(&mut self) {
        let batch = std::mem::take(&mut self.batch);
        self.batch_len = 0;
        if batch.is_empty() || self.failure.is_some() {
            return;
        }
        let Some(mut file) = self.file.take() else {
            return;
        };
        self.job = Some(tokio::task::spawn_blocking(move || {
            let result = batch.iter().try_for_each(|fragment| file.write_all(fragment));
            (file, result)
        }));
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
        }
        let mut file = writer.finish().await.unwrap();
        file.write_all(b"end").unwrap();
        expected.extend_from_slice(b"end");
        assert!(std::fs::read(&path).unwrap() == expected);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_partial_batch_waits_in_memory_until_finish() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut writer = BackgroundWriter::start(File::create(&path).unwrap());
        writer.write(Bytes::from(vec![1; BATCH_BYTES / 2])).await;
        assert!(writer.job.is_none(), "no job for less than a batch");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        writer.finish().await.unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), (BATCH_BYTES / 2) as u64);
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
