//! The DICOM File Format header (PS3.10 §7.1): the 128-byte preamble, the `DICM` prefix and the
//! File Meta Information group (0002), which together come before the dataset in every file.

use std::fmt;

use crate::dicom::attributes::Tag;
use crate::dicom::element::{Syntax, Writer};
use crate::dicom::vr::Vr;
use crate::implementation::{IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME};

/// Length of the File Preamble, which PS3.10 §7.1 leaves to the application; we write zeros.
pub const PREAMBLE_LEN: usize = 128;

/// The DICOM prefix that follows the preamble (PS3.10 §7.1).
pub const PREFIX: &[u8; 4] = b"DICM";

/// Version 1 of the File Meta Information (0002,0001): a two-byte OB with bit 0 of byte 1 set.
const META_VERSION: [u8; 2] = [0x00, 0x01];

// Tags of the File Meta Information (PS3.10 table 7.1-1).
pub const FILE_META_GROUP: u16 = 0x0002;
pub const GROUP_LENGTH: Tag = 0x0002_0000;
pub const VERSION: Tag = 0x0002_0001;
pub const MEDIA_STORAGE_SOP_CLASS_UID: Tag = 0x0002_0002;
pub const MEDIA_STORAGE_SOP_INSTANCE_UID: Tag = 0x0002_0003;
pub const TRANSFER_SYNTAX_UID: Tag = 0x0002_0010;
pub const IMPLEMENTATION_CLASS: Tag = 0x0002_0012;
pub const IMPLEMENTATION_VERSION: Tag = 0x0002_0013;
pub const SOURCE_AE_TITLE: Tag = 0x0002_0016;

/// Longest value a 16-bit explicit VR length field can hold once padded to even length.
const MAX_SHORT_VALUE_LEN: usize = u16::MAX as usize - 1;

/// The per-instance fields of the File Meta Information. Values without padding; `begin`
/// and [`encode_file_meta`] add it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMeta<'a> {
    /// (0002,0002), the SOP Class UID of the dataset (Affected SOP Class UID of the C-STORE).
    pub media_storage_sop_class_uid: &'a str,
    /// (0002,0003), the SOP Instance UID of the dataset.
    pub media_storage_sop_instance_uid: &'a str,
    /// (0002,0010), the transfer syntax the dataset bytes are encoded in.
    pub transfer_syntax_uid: &'a str,
    /// (0002,0016), the calling AE title of the association; omitted from the file when empty
    /// (the element is Type 3).
    pub source_ae_title: &'a str,
}

/// A value too long for its file meta element: the sender supplied an absurd UID or AE title.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMetaError {
    /// Keyword of the element.
    pub element: &'static str,
    /// Length of the value, in bytes.
    pub len: usize,
}

impl fmt::Display for FileMetaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is {} bytes long; a file meta element holds at most {MAX_SHORT_VALUE_LEN}",
            self.element, self.len
        )
    }
}

impl std::error::Error for FileMetaError {}

/// Encodes the preamble (128 zero bytes), `DICM`, then group 0002 in explicit VR little endian
/// (PS3.10 §7.1, which mandates that encoding whatever the dataset's transfer syntax):
/// (0002,0000) UL group length, (0002,0001) OB 00\01, (0002,0002), (0002,0003), (0002,0010),
/// (0002,0012), (0002,0013) and, if not empty, (0002,0016). Values are padded to even length
/// (PS3.5 §7.1.1): UIs with NUL, SH and AE with a space.
pub fn encode_file_meta(meta: &FileMeta) -> Result<Vec<u8>, FileMetaError> {
    let mut out = Vec::with_capacity(PREAMBLE_LEN + 256);
    out.resize(PREAMBLE_LEN, 0);
    out.extend_from_slice(PREFIX);
    let mut w = Writer::after(out, Syntax::ExplicitLittle);
    let group = w.group_length(FILE_META_GROUP);
    w.element(VERSION, Vr::OB, &META_VERSION).expect("two bytes fit");
    let mut text = |tag: Tag, vr: Vr, keyword: &'static str, value: &str| {
        w.text(tag, vr, value).map(|_| ()).map_err(|e| FileMetaError { element: keyword, len: e.len })
    };
    text(MEDIA_STORAGE_SOP_CLASS_UID, Vr::UI, "MediaStorageSOPClassUID", meta.media_storage_sop_class_uid)?;
    text(MEDIA_STORAGE_SOP_INSTANCE_UID, Vr::UI, "MediaStorageSOPInstanceUID", meta.media_storage_sop_instance_uid)?;
    text(TRANSFER_SYNTAX_UID, Vr::UI, "TransferSyntaxUID", meta.transfer_syntax_uid)?;
    text(IMPLEMENTATION_CLASS, Vr::UI, "ImplementationClassUID", IMPLEMENTATION_CLASS_UID)?;
    text(IMPLEMENTATION_VERSION, Vr::SH, "ImplementationVersionName", IMPLEMENTATION_VERSION_NAME)?;
    if !meta.source_ae_title.is_empty() {
        text(SOURCE_AE_TITLE, Vr::AE, "SourceApplicationEntityTitle", meta.source_ae_title)?;
    }
    w.end_group(group).expect("at most eight elements of at most 64 KiB each");
    Ok(w.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dicom::element::Reader;

    const META: FileMeta<'static> = FileMeta {
        media_storage_sop_class_uid: "1.2.840.10008.5.1.4.1.1.2",
        media_storage_sop_instance_uid: "1.2.3.4.5",
        transfer_syntax_uid: "1.2.840.10008.1.2.1",
        source_ae_title: "MODALITY1",
    };

    /// One element read back: (element number, VR, value bytes).
    type Parsed<'a> = (u16, Vr, &'a [u8]);

    fn parse_group(bytes: &[u8]) -> Vec<Parsed<'_>> {
        Reader::new(bytes, Syntax::ExplicitLittle)
            .map(|e| {
                let e = e.unwrap();
                assert_eq!(e.tag >> 16, 0x0002, "group 0002");
                assert_eq!(e.value.len() % 2, 0, "element {:08X} has odd length", e.tag);
                (e.tag as u16, e.vr.unwrap(), e.value)
            })
            .collect()
    }

    #[test]
    fn preamble_prefix_and_group_length() {
        let bytes = encode_file_meta(&META).unwrap();
        assert!(bytes[..PREAMBLE_LEN].iter().all(|&b| b == 0));
        assert_eq!(&bytes[PREAMBLE_LEN..PREAMBLE_LEN + 4], b"DICM");
        let group_length = &bytes[PREAMBLE_LEN + 4..PREAMBLE_LEN + 16];
        assert_eq!(&group_length[..8], &[0x02, 0x00, 0x00, 0x00, b'U', b'L', 4, 0]);
        let declared = u32::from_le_bytes(group_length[8..].try_into().unwrap()) as usize;
        assert_eq!(declared, bytes.len() - (PREAMBLE_LEN + 16));
        assert_eq!(bytes.len() % 2, 0);
    }

    #[test]
    fn every_element_in_order_and_padded() {
        let bytes = encode_file_meta(&META).unwrap();
        let elements = parse_group(&bytes[PREAMBLE_LEN + 16..]);
        let expected: Vec<Parsed> = vec![
            (0x0001, Vr::OB, &[0x00, 0x01]),
            (0x0002, Vr::UI, b"1.2.840.10008.5.1.4.1.1.2\0"),
            (0x0003, Vr::UI, b"1.2.3.4.5\0"),
            (0x0010, Vr::UI, b"1.2.840.10008.1.2.1\0"),
            (0x0012, Vr::UI, IMPLEMENTATION_CLASS_UID.as_bytes()),
            (0x0013, Vr::SH, IMPLEMENTATION_VERSION_NAME.as_bytes()),
            (0x0016, Vr::AE, b"MODALITY1 "),
        ];
        assert_eq!(elements, expected);
    }

    #[test]
    fn empty_source_ae_title_is_omitted() {
        let meta = FileMeta { source_ae_title: "", ..META };
        let bytes = encode_file_meta(&meta).unwrap();
        let elements = parse_group(&bytes[PREAMBLE_LEN + 16..]);
        assert_eq!(elements.last().unwrap().0, 0x0013);
    }

    #[test]
    fn oversized_value_is_an_error_not_a_corrupt_header() {
        let huge = "1".repeat(70_000);
        let meta = FileMeta { media_storage_sop_instance_uid: &huge, ..META };
        let err = encode_file_meta(&meta).unwrap_err();
        assert_eq!(err.element, "MediaStorageSOPInstanceUID");
        assert!(err.to_string().contains("70000 bytes"));
    }
}
