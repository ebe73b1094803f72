//! An item's stored file made ready to send: opened, its file meta read back and checked
//! against what the registry says (`storage::read_back`), and the first chunk of its data
//! set read, while the peer handles the item before it. The rest of the data set is read as
//! it is sent, a chunk ahead, on tokio's blocking pool: memory per association is a few
//! chunks, whatever the instance's size.

use std::fs::File;
use std::future::Future;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::task::JoinHandle;

use super::classify;
use super::job::ForwardItem;
use crate::storage::read_back::{read_stored_for_sending, StoredDataSet};

/// An item's file, checked, its data set about to be sent.
pub struct Prepared {
    /// What the file meta says: the UIDs the C-STORE request names and the context it goes
    /// on (the file's own transfer syntax, which the bytes are in).
    pub data_set: StoredDataSet,
    reader: DataSetReader,
}

impl Prepared {
    /// The data set's bytes, from the first one, as they are in the file.
    pub fn reader(&mut self) -> &mut DataSetReader {
        &mut self.reader
    }

    /// Why reading the file failed while its data set was being sent, if it did.
    pub fn read_failure(&self) -> Option<&io::Error> {
        self.reader.failure.as_ref()
    }
}

/// Opens and checks `item`'s file, reading up to `first_chunk` bytes of its data set; the
/// item's failure in words when it cannot be sent (missing, unreadable, not the instance
/// the registry knows). Blocking, and bounded: the file's head (at most 64 KiB of meta) and
/// one chunk are read.
pub fn prepare(item: &ForwardItem, first_chunk: usize) -> Result<Prepared, String> {
    let unreadable = |e: io::Error| classify::unreadable(&item.path, &e);
    let (data_set, mut file) = read_stored_for_sending(Path::new(&item.path)).map_err(unreadable)?;
    if data_set.sop_instance_uid != item.sop_instance_uid {
        return Err(format!(
            "file changed: SOP Instance UID {} in file {}, the registry has {}",
            data_set.sop_instance_uid, item.path, item.sop_instance_uid
        ));
    }
    // Every encoded data set has an even length (PS3.5 §7.1; a deflated one is padded,
    // A.5), and peers refuse an odd fragment (dcmtk aborts the association): an odd one would
    // end the whole job, on every retry.
    if data_set.len % 2 == 1 {
        return Err(format!(
            "file not sendable: its data set has an odd length ({} bytes): {}",
            data_set.len, item.path
        ));
    }
    file.seek(SeekFrom::Start(data_set.offset)).map_err(unreadable)?;
    let first_len = usize::try_from(data_set.len).unwrap_or(usize::MAX).min(first_chunk);
    let mut current = vec![0; first_len];
    file.read_exact(&mut current).map_err(unreadable)?;
    let reader = DataSetReader {
        file: Arc::new(file),
        offset: data_set.offset + first_len as u64,
        end: data_set.offset + data_set.len,
        chunk: first_chunk.max(1),
        current,
        at: 0,
        ahead: None,
        failure: None,
    };
    Ok(Prepared { data_set, reader })
}

/// The data set's bytes: the chunk read when preparing, then the rest of the file, a chunk
/// at a time, each read on tokio's blocking pool while the chunk before it is being sent
/// (two chunks in memory, whatever the size). Remembers a read error, which the channel
/// would report as any read error: the item failed because of its file, not because of the
/// peer.
pub struct DataSetReader {
    file: Arc<File>,
    /// Where the next chunk to read begins, and where the data set ends.
    offset: u64,
    end: u64,
    chunk: usize,
    /// The chunk being handed out, from `at`.
    current: Vec<u8>,
    at: usize,
    /// The read of the next chunk, under way.
    ahead: Option<JoinHandle<io::Result<Vec<u8>>>>,
    failure: Option<io::Error>,
}

impl DataSetReader {
    /// Starts reading the next chunk into `buffer` (a chunk already sent, reused), unless the
    /// data set has been read to its end.
    fn read_ahead(&mut self, mut buffer: Vec<u8>) {
        if self.offset >= self.end {
            return;
        }
        let len = usize::try_from(self.end - self.offset).unwrap_or(usize::MAX).min(self.chunk);
        buffer.resize(len, 0);
        let (file, at) = (self.file.clone(), self.offset);
        self.offset += len as u64;
        self.ahead = Some(tokio::task::spawn_blocking(move || {
            file.read_exact_at(&mut buffer, at)?;
            Ok(buffer)
        }));
    }

    fn failed(&mut self, e: io::Error) -> Poll<io::Result<()>> {
        self.failure = Some(io::Error::new(e.kind(), e.to_string()));
        Poll::Ready(Err(e))
    }
}

impl AsyncRead for DataSetReader {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.at < this.current.len() {
                if this.at == 0 && this.ahead.is_none() {
                    // The first chunk begins to go out: read the next meanwhile.
                    this.read_ahead(Vec::new());
                }
                let n = buf.remaining().min(this.current.len() - this.at);
                buf.put_slice(&this.current[this.at..this.at + n]);
                this.at += n;
                return Poll::Ready(Ok(()));
            }
            let Some(ahead) = this.ahead.as_mut() else {
                // The end of the data set.
                return Poll::Ready(Ok(()));
            };
            let next = match std::task::ready!(Pin::new(ahead).poll(cx)) {
                Ok(Ok(next)) => next,
                Ok(Err(e)) => return this.failed(e),
                Err(e) => return this.failed(io::Error::other(e)),
            };
            this.ahead = None;
            let sent = std::mem::replace(&mut this.current, next);
            this.at = 0;
            this.read_ahead(sent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn item(path: &Path, sop_instance_uid: &str) -> ForwardItem {
        ForwardItem {
            item_id: 1,
            path: path.to_string_lossy().into_owned(),
            sop_class_uid: crate::loadgen::template::SECONDARY_CAPTURE.into(),
            sop_instance_uid: sop_instance_uid.into(),
            transfer_syntax: crate::dicom::transfer_syntax::EXPLICIT_VR_LITTLE_ENDIAN.into(),
        }
    }

    #[test]
    fn the_data_set_comes_whole_in_chunks_and_the_file_must_hold_the_instance() {
        let dir = tempfile::tempdir().unwrap();
        let (path, uid, data_set) = super::super::tests::stored_file(dir.path(), 1, 100_000);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        for first_chunk in [1000, 100_000, 1 << 20] {
            let mut prepared = prepare(&item(&path, &uid), first_chunk).unwrap();
            assert_eq!(prepared.data_set.len, data_set.len() as u64);
            let mut read = Vec::new();
            runtime.block_on(prepared.reader().read_to_end(&mut read)).unwrap();
            assert!(read == data_set, "read as stored");
            assert!(prepared.read_failure().is_none());
        }
        let changed = prepare(&item(&path, "1.2.3.999"), 1000).err().unwrap();
        assert_eq!(
            changed,
            format!("file changed: SOP Instance UID {uid} in file {}, the registry has 1.2.3.999", path.display())
        );
        let missing = dir.path().join("gone.dcm");
        assert_eq!(prepare(&item(&missing, &uid), 1000).err().unwrap(), format!("file missing: {}", missing.display()));
    }
}
