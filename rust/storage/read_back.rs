//! Reading back a stored Part 10 file (PS3.10 §7.1): its file meta and the attributes of its
//! data set, with the same extractor the receiver uses. For journal replay after a crash and
//! for `oxidip reconcile`, which register files that no live association reported.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;
use std::time::SystemTime;

use serde::Serialize;

use crate::dicom::attributes::Attributes;
use crate::dicom::extract::Extractor;
use crate::dicom::transfer_syntax;

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

const PREAMBLE_AND_PREFIX: usize = 132;
/// Bounds what a hostile file can make us allocate for its meta group.
const MAX_META_LEN: u32 = 64 * 1024;
const CHUNK: usize = 64 * 1024;

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

pub fn read_stored(path: &Path) -> io::Result<StoredInstance> {
    let file = File::open(path)?;
    let metadata = file.metadata()?;
    let mut reader = BufReader::with_capacity(CHUNK, file);
    let mut head = [0u8; PREAMBLE_AND_PREFIX + 12];
    reader.read_exact(&mut head).map_err(|e| invalid(format!("not a Part 10 file: {e}")))?;
    if &head[128..132] != b"DICM" || head[132..138] != [2, 0, 0, 0, b'U', b'L'] {
        return Err(invalid("not a Part 10 file: no DICM prefix and group length".into()));
    }
    let group_len = u32::from_le_bytes([head[140], head[141], head[142], head[143]]);
    if group_len > MAX_META_LEN {
        return Err(invalid(format!("file meta group of {group_len} bytes")));
    }
    let mut meta = vec![0u8; group_len as usize];
    reader.read_exact(&mut meta)?;
    let elements = meta_elements(&meta)?;
    let text = |tag: u16| elements.iter().find(|(t, _)| *t == tag).map(|(_, v)| trim(v)).unwrap_or_default();
    let transfer_syntax = text(0x0010);
    let ts = transfer_syntax::lookup(&transfer_syntax)
        .ok_or_else(|| invalid(format!("unsupported transfer syntax {transfer_syntax:?}")))?;
    let mut extractor = Extractor::new(ts.encoding);
    let mut chunk = vec![0u8; CHUNK];
    loop {
        let n = reader.read(&mut chunk)?;
        if n == 0 || extractor.feed(&chunk[..n]).map_err(|e| invalid(e.to_string()))? {
            break;
        }
    }
    let attributes = extractor.finish().map_err(|e| invalid(e.to_string()))?;
    let modified_at = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    Ok(StoredInstance {
        path: path.to_string_lossy().into_owned(),
        size: metadata.len(),
        attributes,
        transfer_syntax,
        source_aet: text(0x0016),
        media_storage_sop_class_uid: text(0x0002),
        media_storage_sop_instance_uid: text(0x0003),
        modified_at: crate::clock::unix_time(modified_at),
    })
}

/// (element, value) of each explicit VR little endian element of group 0002 (PS3.10 §7.1).
fn meta_elements(mut bytes: &[u8]) -> io::Result<Vec<(u16, Vec<u8>)>> {
    let mut elements = Vec::new();
    while bytes.len() >= 8 {
        let element = u16::from_le_bytes([bytes[2], bytes[3]]);
        let vr = [bytes[4], bytes[5]];
        // OB, OW, UN, UT... have a 4-byte length after 2 reserved bytes (PS3.5 §7.1.2).
        let (header, len) =
            if matches!(&vr, b"OB" | b"OW" | b"OD" | b"OF" | b"OL" | b"OV" | b"UN" | b"UT" | b"UC" | b"UR") {
                let b = bytes.get(8..12).ok_or_else(|| invalid("file meta ends inside an element".into()))?;
                (12, u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            } else {
                (8, u16::from_le_bytes([bytes[6], bytes[7]]) as usize)
            };
        let value = bytes.get(header..header + len).ok_or_else(|| invalid("file meta ends inside a value".into()))?;
        elements.push((element, value.to_vec()));
        bytes = &bytes[header + len..];
    }
    Ok(elements)
}

fn trim(value: &[u8]) -> String {
    String::from_utf8_lossy(value).trim_matches(|c: char| c == '\0' || c == ' ').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::file_meta::{encode_file_meta, FileMeta};

    fn element(out: &mut Vec<u8>, group: u16, elem: u16, vr: &[u8; 2], value: &str) {
        let mut v = value.as_bytes().to_vec();
        if v.len() % 2 == 1 {
            v.push(0);
        }
        out.extend_from_slice(&group.to_le_bytes());
        out.extend_from_slice(&elem.to_le_bytes());
        out.extend_from_slice(vr);
        out.extend_from_slice(&(v.len() as u16).to_le_bytes());
        out.extend_from_slice(&v);
    }

    #[test]
    fn reads_meta_and_attributes_of_a_file_we_wrote() {
        let meta = FileMeta {
            media_storage_sop_class_uid: "1.2.840.10008.5.1.4.1.1.7",
            media_storage_sop_instance_uid: "1.2.3.4",
            transfer_syntax_uid: "1.2.840.10008.1.2.1",
            source_ae_title: "PACS",
        };
        let mut bytes = encode_file_meta(&meta).unwrap();
        element(&mut bytes, 0x0008, 0x0018, b"UI", "1.2.3.4");
        element(&mut bytes, 0x0010, 0x0020, b"LO", "PAT");
        element(&mut bytes, 0x0020, 0x000E, b"UI", "1.2.3");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.dcm");
        std::fs::write(&path, &bytes).unwrap();
        let stored = read_stored(&path).unwrap();
        assert_eq!(stored.source_aet, "PACS");
        assert_eq!(stored.media_storage_sop_instance_uid, "1.2.3.4");
        assert_eq!(stored.transfer_syntax, "1.2.840.10008.1.2.1");
        assert_eq!(stored.attributes.patient_id.as_deref(), Some("PAT"));
        assert_eq!(stored.attributes.series_instance_uid.as_deref(), Some("1.2.3"));
        assert_eq!(stored.size, bytes.len() as u64);
    }

    #[test]
    fn rejects_what_is_not_part_10() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.dcm");
        std::fs::write(&path, vec![0u8; 300]).unwrap();
        assert_eq!(read_stored(&path).unwrap_err().kind(), io::ErrorKind::InvalidData);
        std::fs::write(&path, b"short").unwrap();
        assert!(read_stored(&path).is_err());
    }
}
