//! The DICOM File Format header (PS3.10 §7.1): the 128-byte preamble, the `DICM` prefix and the
//! File Meta Information group (0002), which together come before the dataset in every file.

use std::fmt;

use crate::implementation::{IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME};

/// Length of the File Preamble, which PS3.10 §7.1 leaves to the application; we write zeros.
pub const PREAMBLE_LEN: usize = 128;

/// The DICOM prefix that follows the preamble (PS3.10 §7.1).
const PREFIX: &[u8; 4] = b"DICM";

/// Version 1 of the File Meta Information (0002,0001): a two-byte OB with bit 0 of byte 1 set.
const META_VERSION: [u8; 2] = [0x00, 0x01];

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

    // The group length counts the bytes after its own element, so patch it in at the end.
    push_element_header(&mut out, 0x0000, *b"UL", 4);
    let length_at = out.len();
    out.extend_from_slice(&[0; 4]);
    let group_start = out.len();

    push_ob(&mut out, 0x0001, &META_VERSION);
    push_text(&mut out, TextElement::uid(0x0002, "MediaStorageSOPClassUID"), meta.media_storage_sop_class_uid)?;
    push_text(&mut out, TextElement::uid(0x0003, "MediaStorageSOPInstanceUID"), meta.media_storage_sop_instance_uid)?;
    push_text(&mut out, TextElement::uid(0x0010, "TransferSyntaxUID"), meta.transfer_syntax_uid)?;
    push_text(&mut out, TextElement::uid(0x0012, "ImplementationClassUID"), IMPLEMENTATION_CLASS_UID)?;
    push_text(&mut out, TextElement::SH_VERSION_NAME, IMPLEMENTATION_VERSION_NAME)?;
    if !meta.source_ae_title.is_empty() {
        push_text(&mut out, TextElement::AE_SOURCE, meta.source_ae_title)?;
    }

    let group_length = u32::try_from(out.len() - group_start).expect("at most eight elements of at most 64 KiB each");
    out[length_at..group_start].copy_from_slice(&group_length.to_le_bytes());
    Ok(out)
}

/// A text element of group 0002 and how its VR pads values to even length.
struct TextElement {
    element: u16,
    keyword: &'static str,
    vr: [u8; 2],
    padding: u8,
}

impl TextElement {
    const SH_VERSION_NAME: Self =
        Self { element: 0x0013, keyword: "ImplementationVersionName", vr: *b"SH", padding: b' ' };
    const AE_SOURCE: Self =
        Self { element: 0x0016, keyword: "SourceApplicationEntityTitle", vr: *b"AE", padding: b' ' };

    const fn uid(element: u16, keyword: &'static str) -> Self {
        Self { element, keyword, vr: *b"UI", padding: 0 }
    }
}

/// Appends a text element with a 16-bit length (PS3.5 §7.1.2, the short explicit VR form).
fn push_text(out: &mut Vec<u8>, e: TextElement, value: &str) -> Result<(), FileMetaError> {
    let padded_len = value.len() + value.len() % 2;
    if padded_len > MAX_SHORT_VALUE_LEN {
        return Err(FileMetaError { element: e.keyword, len: value.len() });
    }
    push_element_header(out, e.element, e.vr, padded_len as u16);
    out.extend_from_slice(value.as_bytes());
    if padded_len > value.len() {
        out.push(e.padding);
    }
    Ok(())
}

/// Appends an OB element: two reserved bytes, then a 32-bit length (PS3.5 §7.1.2).
fn push_ob(out: &mut Vec<u8>, element: u16, value: &[u8]) {
    push_tag(out, element);
    out.extend_from_slice(b"OB\0\0");
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value);
}

/// Tag, VR and 16-bit length of a short-form element.
fn push_element_header(out: &mut Vec<u8>, element: u16, vr: [u8; 2], len: u16) {
    push_tag(out, element);
    out.extend_from_slice(&vr);
    out.extend_from_slice(&len.to_le_bytes());
}

fn push_tag(out: &mut Vec<u8>, element: u16) {
    out.extend_from_slice(&0x0002u16.to_le_bytes());
    out.extend_from_slice(&element.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    const META: FileMeta<'static> = FileMeta {
        media_storage_sop_class_uid: "1.2.840.10008.5.1.4.1.1.2",
        media_storage_sop_instance_uid: "1.2.3.4.5",
        transfer_syntax_uid: "1.2.840.10008.1.2.1",
        source_ae_title: "MODALITY1",
    };

    /// One element read back by hand: (element number, VR, value bytes).
    type Parsed<'a> = (u16, [u8; 2], &'a [u8]);

    fn parse_group(mut bytes: &[u8]) -> Vec<Parsed<'_>> {
        let mut elements = Vec::new();
        while !bytes.is_empty() {
            assert_eq!(&bytes[..2], &[0x02, 0x00], "group 0002");
            let element = u16::from_le_bytes([bytes[2], bytes[3]]);
            let vr = [bytes[4], bytes[5]];
            let (len, header) = if &vr == b"OB" {
                assert_eq!(&bytes[6..8], &[0, 0], "OB reserved bytes");
                (u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize, 12)
            } else {
                (u16::from_le_bytes([bytes[6], bytes[7]]) as usize, 8)
            };
            assert_eq!(len % 2, 0, "element {element:04X} has odd length {len}");
            elements.push((element, vr, &bytes[header..header + len]));
            bytes = &bytes[header + len..];
        }
        elements
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
            (0x0001, *b"OB", &[0x00, 0x01]),
            (0x0002, *b"UI", b"1.2.840.10008.5.1.4.1.1.2\0"),
            (0x0003, *b"UI", b"1.2.3.4.5\0"),
            (0x0010, *b"UI", b"1.2.840.10008.1.2.1\0"),
            (0x0012, *b"UI", IMPLEMENTATION_CLASS_UID.as_bytes()),
            (0x0013, *b"SH", IMPLEMENTATION_VERSION_NAME.as_bytes()),
            (0x0016, *b"AE", b"MODALITY1 "),
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
