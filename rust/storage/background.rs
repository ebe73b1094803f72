//! Writing the rest of a large data set on a blocking thread, so that its association goes on
//! reading the socket while earlier fragments are being written.
//!
//! One association reading and writing in turn is bound by the sum of both: on tmpfs, where
//! writing costs the kernel more than receiving, 0.5-0.8 GB/s for 1 GiB instances here; with
//! the writes on another core, 1.1-1.5 GB/s. Small instances never get here (the hand-offs
//! cost more than the overlap saves): see `BACKGROUND_AFTER` in `writer`.
//!
//! Fragments are handed over as `Bytes` (slices of the receive buffer, never copied) through
//! a queue of `QUEUE_FRAGMENTS`: when the disk is slower than the network, the association
//! waits, stops reading, and TCP pushes back on the sender. Memory stays bounded.

use std::fs::File;
use std::io::{self, Write};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Fragments queued at most: with 128 KiB PDUs, half a MiB in flight per association.
const QUEUE_FRAGMENTS: usize = 4;

pub struct BackgroundWriter {
    queue: mpsc::Sender<Bytes>,
    task: JoinHandle<(File, io::Result<()>)>,
}

impl BackgroundWriter {
    /// Moves `file` to a blocking thread (tokio's pool, so threads are reused) that appends
    /// what `write` queues, in order. Must be called within a tokio runtime.
    pub fn start(file: File) -> Self {
        let (queue, mut fragments) = mpsc::channel::<Bytes>(QUEUE_FRAGMENTS);
        let task = tokio::task::spawn_blocking(move || {
            let mut file = file;
            while let Some(fragment) = fragments.blocking_recv() {
                if let Err(e) = file.write_all(&fragment) {
                    // Dropping the queue's receiving end tells `write` to stop.
                    return (file, Err(e));
                }
            }
            (file, Ok(()))
        });
        BackgroundWriter { queue, task }
    }

    /// Queues `data`, waiting while the queue is full. After a write error nothing more is
    /// queued; the error comes with `finish`.
    pub async fn write(&self, data: Bytes) {
        // An error means the writer stopped on a failure, which `finish` reports.
        let _ = self.queue.send(data).await;
    }

    /// Waits until everything queued is written; the file back, or the first write error.
    pub async fn finish(self) -> io::Result<File> {
        drop(self.queue);
        match self.task.await {
            Ok((file, Ok(()))) => Ok(file),
            Ok((_, Err(e))) => Err(e),
            Err(join) => Err(io::Error::other(format!("background writer failed: {join}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_in_order_then_gives_the_file_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let writer = BackgroundWriter::start(File::create(&path).unwrap());
        let mut expected = Vec::new();
        for i in 0..100u8 {
            let fragment = vec![i; 1000 + usize::from(i)];
            expected.extend_from_slice(&fragment);
            writer.write(Bytes::from(fragment)).await;
        }
        let mut file = writer.finish().await.unwrap();
        file.write_all(b"end").unwrap();
        expected.extend_from_slice(b"end");
        assert!(std::fs::read(&path).unwrap() == expected);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_error_is_reported_by_finish() {
        // /dev/full: every write fails with ENOSPC, as on a full disk.
        let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
            eprintln!("skipped: no /dev/full");
            return;
        };
        let writer = BackgroundWriter::start(full);
        for _ in 0..10 {
            writer.write(Bytes::from_static(&[1; 4096])).await;
        }
        let err = writer.finish().await.unwrap_err();
        assert_eq!(err.raw_os_error(), Some(28), "{err}");
    }
}
