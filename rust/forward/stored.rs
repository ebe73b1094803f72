//! An item's stored file made ready to send: opened, its file meta read back and checked
//! against what the registry says (`storage::read_back`), and the first chunk of its data
//! set read, while the peer handles the item before it. The rest of the data set is read as
//! it is sent, a chunk at a time, on tokio's blocking pool: memory per association is a
//! chunk or two, whatever the instance's size.

use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

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
    let mut first = vec![0; first_len];
    file.read_exact(&mut first).map_err(unreadable)?;
    let rest = (data_set.len > first_len as u64).then(|| tokio::fs::File::from_std(file));
    Ok(Prepared { data_set, reader: DataSetReader { first, at: 0, rest, failure: None } })
}

/// The data set's bytes: the chunk read when preparing, then the rest of the file, read on
/// tokio's blocking pool. Remembers a read error, which the channel would report as any
/// read error: the item failed because of its file, not because of the peer.
pub struct DataSetReader {
    first: Vec<u8>,
    at: usize,
    rest: Option<tokio::fs::File>,
    failure: Option<io::Error>,
}

impl AsyncRead for DataSetReader {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at < this.first.len() {
            let n = buf.remaining().min(this.first.len() - this.at);
            buf.put_slice(&this.first[this.at..this.at + n]);
            this.at += n;
            if this.at == this.first.len() {
                // Sent: its memory goes back before the rest is read.
                this.first = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        let Some(rest) = this.rest.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        match Pin::new(rest).poll_read(cx, buf) {
            Poll::Ready(Err(e)) => {
                this.failure = Some(io::Error::new(e.kind(), e.to_string()));
                Poll::Ready(Err(e))
            }
            other => other,
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
