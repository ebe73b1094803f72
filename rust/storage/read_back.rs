//! Reading back a stored Part 10 file (PS3.10 §7.1): its file meta, the attributes of its
//! data set (with the same extractor the receiver uses), and where the data set lies in the
//! file. For journal replay after a crash and `oxidip reconcile`, which register files that no
//! live association reported ([`read_stored`]), and for sending a stored file on, which
//! streams its data set from disk byte for byte ([`read_stored_for_sending`]).

use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::path::Path;
use std::time::SystemTime;

use serde::Serialize;

use crate::dicom::attributes::{Attributes, Tag};
use crate::dicom::element::{ReadError, Reader, Syntax, TagName};
use crate::dicom::extract::{ExtractError, Extractor};
use crate::dicom::transfer_syntax;
use crate::storage::file_meta::{
    FILE_META_GROUP, GROUP_LENGTH, MEDIA_STORAGE_SOP_CLASS_UID, MEDIA_STORAGE_SOP_INSTANCE_UID, PREAMBLE_LEN, PREFIX,
    SOURCE_AE_TITLE, TRANSFER_SYNTAX_UID,
};

/// What registration needs of a stored file.
#[derive(Debug, Clone, Serialize)]
pub struct StoredInstance {
    pub path: String,
    pub size: u64,
    pub attributes: Attributes,
    pub transfer_syntax: String,
    /// Source Application Entity Title (0002,0016): the calling AE that sent it to us.
    pub source_aet: String,
    pub media_storage_sop_class_uid: String,
    pub media_storage_sop_instance_uid: String,
    /// Last modification, unix seconds: when the file was stored.
    pub modified_at: f64,
}

/// What sending a stored file needs: the UIDs of its C-STORE request and presentation
/// context, and where its data set is, to be streamed from the file as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredDataSet {
    /// Media Storage SOP Class UID (0002,0002), which is the data set's SOP Class UID.
    pub sop_class_uid: String,
    /// Media Storage SOP Instance UID (0002,0003), which is the data set's SOP Instance UID.
    pub sop_instance_uid: String,
    /// Transfer Syntax UID (0002,0010): how the data set bytes are encoded.
    pub transfer_syntax_uid: String,
    /// Offset of the data set's first byte in the file: just past the file meta group.
    pub offset: u64,
    /// Length of the data set: the rest of the file.
    pub len: u64,
}

const PREAMBLE_AND_PREFIX: usize = PREAMBLE_LEN + PREFIX.len();
/// Bounds what a hostile file can make us read as its meta group.
const MAX_META_LEN: usize = 64 * 1024;
/// Read at once: the preamble, a meta group of the largest size and the first tag after it;
/// then the size of each read of the data set.
const HEAD_LEN: usize = PREAMBLE_AND_PREFIX + MAX_META_LEN + 4;

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// The values of the file meta group read back, trimmed of their padding.
#[derive(Debug, Default)]
struct MetaValues {
    sop_class_uid: String,
    sop_instance_uid: String,
    transfer_syntax_uid: String,
    source_aet: String,
}

/// A Part 10 file opened, its file meta read.
struct Part10 {
    file: File,
    metadata: Metadata,
    meta: MetaValues,
    /// Offset of the data set: the first byte past the file meta group.
    data_set_offset: usize,
    /// The first bytes of the file, read with the meta: the data set starts in it.
    head: Vec<u8>,
}

impl Part10 {
    fn open(path: &Path) -> io::Result<Part10> {
        let mut file = File::open(path)?;
        let metadata = file.metadata()?;
        let mut head = Vec::with_capacity(HEAD_LEN);
        (&mut file).take(HEAD_LEN as u64).read_to_end(&mut head)?;
        if head.get(PREAMBLE_LEN..PREAMBLE_AND_PREFIX) != Some(PREFIX) {
            return Err(invalid("not a Part 10 file: no DICM prefix after a 128-byte preamble".into()));
        }
        let file_goes_on = head.len() == HEAD_LEN;
        let (meta, meta_len) = read_meta_group(&head[PREAMBLE_AND_PREFIX..], file_goes_on)?;
        Ok(Part10 { file, metadata, meta, data_set_offset: PREAMBLE_AND_PREFIX + meta_len, head })
    }

    /// The attributes of the data set (read up to the last one we extract), for which its
    /// transfer syntax must be one we know.
    fn attributes(&mut self) -> io::Result<Attributes> {
        let uid = &self.meta.transfer_syntax_uid;
        if uid.is_empty() {
            return Err(missing(TRANSFER_SYNTAX_UID, "TransferSyntaxUID"));
        }
        let ts = transfer_syntax::lookup(uid).ok_or_else(|| invalid(format!("unsupported transfer syntax {uid:?}")))?;
        let mut extractor = Extractor::new(ts.encoding);
        let malformed = |e: ExtractError| invalid(format!("data set: {e}"));
        let feed = |extractor: &mut Extractor, bytes: &[u8]| extractor.feed(bytes).map_err(malformed);
        let done = feed(&mut extractor, &self.head[self.data_set_offset..])?;
        // A head shorter than its buffer is the whole file: nothing more to read (and the
        // buffer is not zeroed for nothing, which cost more than the rest of a small file's
        // reading back).
        if !done && self.head.len() == HEAD_LEN {
            // The rest of the data set is read in chunks into the head's buffer.
            let mut chunk = std::mem::take(&mut self.head);
            loop {
                let n = self.file.read(&mut chunk)?;
                if n == 0 || feed(&mut extractor, &chunk[..n])? {
                    break;
                }
            }
        }
        extractor.finish().map_err(malformed)
    }
}

/// Reads the elements of group 0002 at the start of `bytes` (PS3.10 §7.1: explicit VR little
/// endian, whatever the data set's transfer syntax) up to the first element of another group,
/// where the data set starts; returns the values and the group's length. As pydicom and dcmtk
/// do, the group ends where its elements do; a group length (0002,0000) that says otherwise
/// is an error (PS3.10 makes it Type 1; a file without it is read all the same).
/// `file_goes_on`: `bytes` ends before the file does.
fn read_meta_group(bytes: &[u8], file_goes_on: bool) -> io::Result<(MetaValues, usize)> {
    let too_long = || invalid(format!("file meta group longer than {} KiB", MAX_META_LEN / 1024));
    let no_meta = || invalid("not a Part 10 file: no file meta group (0002) after DICM".into());
    let mut reader = Reader::new(bytes, Syntax::ExplicitLittle);
    let mut meta = MetaValues::default();
    let mut group_length = None;
    loop {
        let (at, rest) = (reader.position(), bytes.len() - reader.position());
        match reader.peek_tag() {
            Some(tag) if tag >> 16 == Tag::from(FILE_META_GROUP) => {}
            // The data set's first element.
            Some(_) if at > 0 => break,
            Some(_) => return Err(no_meta()),
            None if rest == 0 && at == 0 => return Err(no_meta()),
            // The file ends with its meta: an empty data set.
            None if rest == 0 && !file_goes_on => break,
            None if file_goes_on => return Err(too_long()),
            None => {
                let e = ReadError::HeaderTruncated { offset: at };
                return Err(invalid(format!("file meta group truncated: {e}")));
            }
        }
        let element = match reader.next().expect("a tag was peeked") {
            Ok(element) => element,
            Err(ReadError::HeaderTruncated { .. } | ReadError::ValueTruncated { .. }) if file_goes_on => {
                return Err(too_long())
            }
            Err(e @ (ReadError::HeaderTruncated { .. } | ReadError::ValueTruncated { .. })) => {
                return Err(invalid(format!("file meta group truncated: {e}")))
            }
            Err(e) => return Err(invalid(format!("file meta group: {e}"))),
        };
        let text = element.text();
        match element.tag {
            GROUP_LENGTH => {
                let value = <[u8; 4]>::try_from(element.value)
                    .map_err(|_| invalid("file meta group length (0002,0000) is not 4 bytes".into()))?;
                group_length = Some((u32::from_le_bytes(value) as usize, reader.position()));
            }
            MEDIA_STORAGE_SOP_CLASS_UID => meta.sop_class_uid = text,
            MEDIA_STORAGE_SOP_INSTANCE_UID => meta.sop_instance_uid = text,
            TRANSFER_SYNTAX_UID => meta.transfer_syntax_uid = text,
            SOURCE_AE_TITLE => meta.source_aet = text,
            _ => {}
        }
    }
    let end = reader.position();
    if end > MAX_META_LEN {
        return Err(too_long());
    }
    if let Some((declared, from)) = group_length {
        if declared != end - from {
            let actual = end - from;
            return Err(invalid(format!(
                "file meta group length (0002,0000) says {declared} bytes, its elements take {actual}"
            )));
        }
    }
    Ok((meta, end))
}

/// A stored file's meta and the attributes of its data set, for registration.
pub fn read_stored(path: &Path) -> io::Result<StoredInstance> {
    let mut part10 = Part10::open(path)?;
    let attributes = part10.attributes()?;
    let Part10 { metadata, meta, .. } = part10;
    let modified_at = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    Ok(StoredInstance {
        path: path.to_string_lossy().into_owned(),
        size: metadata.len(),
        attributes,
        transfer_syntax: meta.transfer_syntax_uid,
        source_aet: meta.source_aet,
        media_storage_sop_class_uid: meta.sop_class_uid,
        media_storage_sop_instance_uid: meta.sop_instance_uid,
        modified_at: crate::clock::unix_time(modified_at),
    })
}

/// A stored file's UIDs and the byte range of its data set, for sending it on, with the
/// file still open: stream the range from this file, not from the path again, which a later
/// copy of the instance may have replaced meanwhile (duplicates overwrite by rename).
///
/// A C-STORE request names the data set's SOP Class and Instance UIDs (PS3.7 §9.1.1.1), so
/// the file meta must name the same ones as the data set, and a transfer syntax we know: the
/// data set is read up to its last extracted attribute to check both.
pub fn read_stored_for_sending(path: &Path) -> io::Result<(StoredDataSet, File)> {
    let mut part10 = Part10::open(path)?;
    if part10.meta.sop_class_uid.is_empty() {
        return Err(missing(MEDIA_STORAGE_SOP_CLASS_UID, "MediaStorageSOPClassUID"));
    }
    if part10.meta.sop_instance_uid.is_empty() {
        return Err(missing(MEDIA_STORAGE_SOP_INSTANCE_UID, "MediaStorageSOPInstanceUID"));
    }
    let attributes = part10.attributes()?;
    let Part10 { file, metadata, meta, data_set_offset, .. } = part10;
    let check = |keyword: &str, in_meta: &str, in_data_set: Option<&str>| match in_data_set {
        Some(value) if value == in_meta => Ok(()),
        Some(value) => Err(invalid(format!(
            "file meta MediaStorage{keyword} {in_meta} differs from the data set's {keyword} {value}"
        ))),
        None => Err(invalid(format!("the data set lacks {keyword} (file meta: {in_meta})"))),
    };
    check("SOPClassUID", &meta.sop_class_uid, attributes.sop_class_uid.as_deref())?;
    check("SOPInstanceUID", &meta.sop_instance_uid, attributes.sop_instance_uid.as_deref())?;
    let offset = data_set_offset as u64;
    let data_set = StoredDataSet {
        sop_class_uid: meta.sop_class_uid,
        sop_instance_uid: meta.sop_instance_uid,
        transfer_syntax_uid: meta.transfer_syntax_uid,
        offset,
        len: metadata.len().saturating_sub(offset),
    };
    Ok((data_set, file))
}

fn missing(tag: Tag, keyword: &str) -> io::Error {
    invalid(format!("file meta lacks {} {keyword}", TagName(tag)))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;
    use crate::dicom::element::Writer;
    use crate::dicom::vr::Vr;
    use crate::storage::file_meta::{encode_file_meta, FileMeta};

    const META: FileMeta<'static> = FileMeta {
        media_storage_sop_class_uid: "1.2.840.10008.5.1.4.1.1.7",
        media_storage_sop_instance_uid: "1.2.3.4",
        transfer_syntax_uid: "1.2.840.10008.1.2.1",
        source_ae_title: "PACS",
    };

    /// An explicit VR little endian data set: the SOP UIDs, a patient, a series, pixels.
    fn data_set(sop_class_uid: &str, sop_instance_uid: &str) -> Vec<u8> {
        let mut w = Writer::new(Syntax::ExplicitLittle);
        w.text(0x0008_0016, Vr::UI, sop_class_uid).unwrap();
        w.text(0x0008_0018, Vr::UI, sop_instance_uid).unwrap();
        w.text(0x0010_0020, Vr::LO, "PAT").unwrap();
        w.text(0x0020_000E, Vr::UI, "1.2.3").unwrap();
        w.element(0x7FE0_0010, Vr::OB, &[0xA5; 1001]).unwrap();
        w.into_bytes()
    }

    /// A file as the storage writer makes it: the encoded meta, then the data set received.
    fn stored_file(dir: &Path, meta: &FileMeta, data_set: &[u8]) -> std::path::PathBuf {
        let mut bytes = encode_file_meta(meta).unwrap();
        bytes.extend_from_slice(data_set);
        write_file(dir, &bytes)
    }

    fn write_file(dir: &Path, bytes: &[u8]) -> std::path::PathBuf {
        let path = dir.join("x.dcm");
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn error_of<T: std::fmt::Debug>(read: io::Result<T>) -> String {
        let error = read.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
        error.to_string()
    }

    #[test]
    fn reads_meta_and_attributes_of_a_file_we_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let data_set = data_set(META.media_storage_sop_class_uid, "1.2.3.4");
        let path = stored_file(dir.path(), &META, &data_set);
        let stored = read_stored(&path).unwrap();
        assert_eq!(stored.source_aet, "PACS");
        assert_eq!(stored.media_storage_sop_instance_uid, "1.2.3.4");
        assert_eq!(stored.transfer_syntax, "1.2.840.10008.1.2.1");
        assert_eq!(stored.attributes.patient_id.as_deref(), Some("PAT"));
        assert_eq!(stored.attributes.series_instance_uid.as_deref(), Some("1.2.3"));
        assert_eq!(stored.size, std::fs::metadata(&path).unwrap().len());
    }

    #[test]
    fn the_data_set_range_of_a_file_we_wrote_is_the_data_set_received() {
        let dir = tempfile::tempdir().unwrap();
        for source_ae_title in ["PACS", "ODD", ""] {
            let meta = FileMeta { source_ae_title, ..META };
            let data_set = data_set(META.media_storage_sop_class_uid, "1.2.3.4");
            let path = stored_file(dir.path(), &meta, &data_set);
            let (stored, file) = read_stored_for_sending(&path).unwrap();
            let meta_len = encode_file_meta(&meta).unwrap().len() as u64;
            let expected = StoredDataSet {
                sop_class_uid: META.media_storage_sop_class_uid.into(),
                sop_instance_uid: "1.2.3.4".into(),
                transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
                offset: meta_len,
                len: data_set.len() as u64,
            };
            assert_eq!(stored, expected);
            let mut range = vec![0; stored.len as usize];
            file.read_exact_at(&mut range, stored.offset).unwrap();
            assert!(range == data_set, "the range holds the data set exactly");
        }
    }

    #[test]
    fn the_open_file_is_the_one_described_even_once_the_path_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let first = data_set(META.media_storage_sop_class_uid, "1.2.3.4");
        let path = stored_file(dir.path(), &META, &first);
        let (stored, file) = read_stored_for_sending(&path).unwrap();
        // A duplicate with another source AE title (a longer meta) replaces it by rename.
        let mut replacement = encode_file_meta(&FileMeta { source_ae_title: "ANOTHER_SCU", ..META }).unwrap();
        replacement.extend_from_slice(&first);
        let next = dir.path().join("next.dcm");
        std::fs::write(&next, &replacement).unwrap();
        std::fs::rename(&next, &path).unwrap();
        let mut range = vec![0; stored.len as usize];
        file.read_exact_at(&mut range, stored.offset).unwrap();
        assert!(range == first);
    }

    #[test]
    fn a_meta_group_without_its_group_length_ends_where_its_elements_do() {
        let dir = tempfile::tempdir().unwrap();
        let full = encode_file_meta(&META).unwrap();
        // The preamble and prefix, then the meta elements without (0002,0000) UL.
        let mut bytes = full[..PREAMBLE_AND_PREFIX].to_vec();
        bytes.extend_from_slice(&full[PREAMBLE_AND_PREFIX + 12..]);
        let data_set = data_set(META.media_storage_sop_class_uid, "1.2.3.4");
        bytes.extend_from_slice(&data_set);
        let (stored, _) = read_stored_for_sending(&write_file(dir.path(), &bytes)).unwrap();
        assert_eq!((stored.offset, stored.len), ((full.len() - 12) as u64, data_set.len() as u64));
    }

    #[test]
    fn meta_and_data_set_must_name_the_same_instance() {
        let dir = tempfile::tempdir().unwrap();
        let path = stored_file(dir.path(), &META, &data_set(META.media_storage_sop_class_uid, "1.2.3.5"));
        assert_eq!(
            error_of(read_stored_for_sending(&path)),
            "file meta MediaStorageSOPInstanceUID 1.2.3.4 differs from the data set's SOPInstanceUID 1.2.3.5"
        );
        let path = stored_file(dir.path(), &META, &data_set("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4"));
        assert!(error_of(read_stored_for_sending(&path)).contains("data set's SOPClassUID 1.2.840.10008.5.1.4.1.1.2"));
        let path = stored_file(dir.path(), &FileMeta { media_storage_sop_instance_uid: "", ..META }, &[]);
        assert_eq!(error_of(read_stored_for_sending(&path)), "file meta lacks (0002,0003) MediaStorageSOPInstanceUID");
        let path = stored_file(dir.path(), &META, &[]);
        assert_eq!(
            error_of(read_stored_for_sending(&path)),
            "the data set lacks SOPClassUID (file meta: 1.2.840.10008.5.1.4.1.1.7)"
        );
        let path = stored_file(dir.path(), &FileMeta { transfer_syntax_uid: "", ..META }, &[]);
        assert_eq!(error_of(read_stored_for_sending(&path)), "file meta lacks (0002,0010) TransferSyntaxUID");
    }

    #[test]
    fn what_is_not_part_10_or_has_a_broken_meta_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let not_part_10 = "not a Part 10 file: no DICM prefix after a 128-byte preamble";
        assert_eq!(error_of(read_stored_for_sending(&write_file(dir.path(), &[0; 300]))), not_part_10);
        assert_eq!(error_of(read_stored_for_sending(&write_file(dir.path(), b"short"))), not_part_10);
        assert_eq!(error_of(read_stored(&write_file(dir.path(), b"short"))), not_part_10);
        // A bare data set after the prefix.
        let mut bytes = vec![0; PREAMBLE_LEN];
        bytes.extend_from_slice(PREFIX);
        bytes.extend_from_slice(&data_set(META.media_storage_sop_class_uid, "1.2.3.4"));
        let no_meta = "not a Part 10 file: no file meta group (0002) after DICM";
        assert_eq!(error_of(read_stored_for_sending(&write_file(dir.path(), &bytes))), no_meta);
        assert_eq!(error_of(read_stored_for_sending(&write_file(dir.path(), &bytes[..PREAMBLE_AND_PREFIX]))), no_meta);
        // The meta cut anywhere inside an element.
        let meta = encode_file_meta(&META).unwrap();
        let boundaries = meta_element_ends(&meta);
        for end in PREAMBLE_AND_PREFIX + 1..meta.len() {
            let error = error_of(read_stored_for_sending(&write_file(dir.path(), &meta[..end])));
            if boundaries.contains(&end) {
                assert!(error.starts_with("file meta group length (0002,0000) says"), "cut at {end}: {error}");
            } else {
                assert!(error.starts_with("file meta group truncated: ends inside"), "cut at {end}: {error}");
            }
        }
        // A group length that does not add up; one that is not a UL.
        let mut bytes = meta.clone();
        bytes[PREAMBLE_AND_PREFIX + 8] += 2;
        let error = error_of(read_stored_for_sending(&write_file(dir.path(), &bytes)));
        let actual = meta.len() - PREAMBLE_AND_PREFIX - 12;
        assert_eq!(
            error,
            format!("file meta group length (0002,0000) says {} bytes, its elements take {actual}", actual + 2)
        );
        // A VR that is none.
        let mut bytes = meta.clone();
        bytes[PREAMBLE_AND_PREFIX + 12 + 4..PREAMBLE_AND_PREFIX + 12 + 6].copy_from_slice(b"\0\0");
        assert_eq!(
            error_of(read_stored_for_sending(&write_file(dir.path(), &bytes))),
            "file meta group: (0002,0001) has no valid VR (\"\\0\\0\")"
        );
    }

    #[test]
    fn a_meta_group_past_its_bound_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::after(encode_file_meta(&META).unwrap(), Syntax::ExplicitLittle);
        w.element(0x0002_0100, Vr::OB, &vec![0; MAX_META_LEN]).unwrap();
        w.raw(&data_set(META.media_storage_sop_class_uid, "1.2.3.4"));
        let path = write_file(dir.path(), w.bytes());
        assert_eq!(error_of(read_stored_for_sending(&path)), "file meta group longer than 64 KiB");
    }

    /// Offsets in `file` where an element of its meta group ends.
    fn meta_element_ends(file: &[u8]) -> Vec<usize> {
        Reader::new(&file[PREAMBLE_AND_PREFIX..], Syntax::ExplicitLittle)
            .map(|e| {
                let e = e.unwrap();
                PREAMBLE_AND_PREFIX + e.offset + if e.vr.unwrap().has_long_length() { 12 } else { 8 } + e.value.len()
            })
            .collect()
    }
}
