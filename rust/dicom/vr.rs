//! Value Representations (PS3.5 §6.2, table 6.2-1): the one table of what each VR's values
//! are (text, UID, binary, sequence), how they are padded to even length, and how long the
//! header of an explicit VR element is (PS3.5 §7.1.2, tables 7.1-1 and 7.1-2).

/// A Value Representation, named by its two letters as PS3.5 writes them.
#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Vr {
    AE,
    AS,
    AT,
    CS,
    DA,
    DS,
    DT,
    FD,
    FL,
    IS,
    LO,
    LT,
    OB,
    OD,
    OF,
    OL,
    OV,
    OW,
    PN,
    SH,
    SL,
    SQ,
    SS,
    ST,
    SV,
    TM,
    UC,
    UI,
    UL,
    UN,
    UR,
    US,
    UT,
    UV,
}

/// What the values of a VR are, which decides their padding (PS3.5 §6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// Character strings, padded with a trailing space (20H).
    Text,
    /// A UID, padded with a trailing NUL (00H) (PS3.5 §9.1).
    Uid,
    /// Numbers and bytes; OB is padded with a trailing NUL, the others have even lengths.
    Binary,
    /// A sequence of items (PS3.5 §7.5): its value is items, never padded.
    Sequence,
}

/// How an explicit VR element of this VR gives its value length (PS3.5 §7.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LengthField {
    /// Table 7.1-2: a 16-bit length right after the VR; an 8-byte header.
    Short,
    /// Table 7.1-1: two reserved bytes, then a 32-bit length; a 12-byte header.
    Long,
}

use LengthField::{Long, Short};
use ValueKind::{Binary, Sequence, Text, Uid};

/// The table: every VR in the order of the enum, its letters, its length field and its
/// values (PS3.5 table 6.2-1, tables 7.1-1 and 7.1-2).
const TABLE: [(Vr, [u8; 2], LengthField, ValueKind); 34] = [
    (Vr::AE, *b"AE", Short, Text),
    (Vr::AS, *b"AS", Short, Text),
    (Vr::AT, *b"AT", Short, Binary),
    (Vr::CS, *b"CS", Short, Text),
    (Vr::DA, *b"DA", Short, Text),
    (Vr::DS, *b"DS", Short, Text),
    (Vr::DT, *b"DT", Short, Text),
    (Vr::FD, *b"FD", Short, Binary),
    (Vr::FL, *b"FL", Short, Binary),
    (Vr::IS, *b"IS", Short, Text),
    (Vr::LO, *b"LO", Short, Text),
    (Vr::LT, *b"LT", Short, Text),
    (Vr::OB, *b"OB", Long, Binary),
    (Vr::OD, *b"OD", Long, Binary),
    (Vr::OF, *b"OF", Long, Binary),
    (Vr::OL, *b"OL", Long, Binary),
    (Vr::OV, *b"OV", Long, Binary),
    (Vr::OW, *b"OW", Long, Binary),
    (Vr::PN, *b"PN", Short, Text),
    (Vr::SH, *b"SH", Short, Text),
    (Vr::SL, *b"SL", Short, Binary),
    (Vr::SQ, *b"SQ", Long, Sequence),
    (Vr::SS, *b"SS", Short, Binary),
    (Vr::ST, *b"ST", Short, Text),
    (Vr::SV, *b"SV", Long, Binary),
    (Vr::TM, *b"TM", Short, Text),
    (Vr::UC, *b"UC", Long, Text),
    (Vr::UI, *b"UI", Short, Uid),
    (Vr::UL, *b"UL", Short, Binary),
    (Vr::UN, *b"UN", Long, Binary),
    (Vr::UR, *b"UR", Long, Text),
    (Vr::US, *b"US", Short, Binary),
    (Vr::UT, *b"UT", Long, Text),
    (Vr::UV, *b"UV", Long, Binary),
];

/// Header of an explicit VR element with a 16-bit length: tag, VR, length.
pub const SHORT_HEADER_LEN: usize = 8;
/// Header of an explicit VR element with a 32-bit length: tag, VR, reserved, length.
pub const LONG_HEADER_LEN: usize = 12;

/// Index of a code in `BY_CODE`, when it is two capital letters.
#[inline]
const fn code_index(code: [u8; 2]) -> Option<usize> {
    if code[0].is_ascii_uppercase() && code[1].is_ascii_uppercase() {
        Some((code[0] - b'A') as usize * 26 + (code[1] - b'A') as usize)
    } else {
        None
    }
}

/// The VR of every two-letter code, so that reading a header costs one lookup.
const BY_CODE: [Option<Vr>; 26 * 26] = {
    let mut by_code = [None; 26 * 26];
    let mut i = 0;
    while i < TABLE.len() {
        let (vr, code, _, _) = TABLE[i];
        match code_index(code) {
            Some(at) => by_code[at] = Some(vr),
            None => panic!("a VR is two capital letters"),
        }
        i += 1;
    }
    by_code
};

// The table is in the order of the enum: `Vr::entry` indexes it by discriminant.
const _: () = {
    let mut i = 0;
    while i < TABLE.len() {
        assert!(TABLE[i].0 as usize == i);
        i += 1;
    }
};

impl Vr {
    /// The VR these two letters name, if it is one PS3.5 defines.
    #[inline]
    pub fn from_code(code: [u8; 2]) -> Option<Vr> {
        code_index(code).and_then(|at| BY_CODE[at])
    }

    #[inline]
    fn entry(self) -> &'static (Vr, [u8; 2], LengthField, ValueKind) {
        &TABLE[self as usize]
    }

    /// Its two letters, as an explicit VR header carries them.
    #[inline]
    pub const fn code(self) -> [u8; 2] {
        TABLE[self as usize].1
    }

    #[inline]
    pub fn kind(self) -> ValueKind {
        self.entry().3
    }

    /// Whether its explicit VR header has the reserved bytes and a 32-bit length (table
    /// 7.1-1) rather than a 16-bit one (table 7.1-2).
    #[inline]
    pub fn has_long_length(self) -> bool {
        self.entry().2 == Long
    }

    /// Size of its element header in explicit VR.
    #[inline]
    pub fn explicit_header_len(self) -> usize {
        if self.has_long_length() {
            LONG_HEADER_LEN
        } else {
            SHORT_HEADER_LEN
        }
    }

    /// Longest value its explicit VR length field holds: 16 bits, or 32 bits less the
    /// undefined length 0xFFFFFFFF (PS3.5 §7.1.1).
    #[inline]
    pub fn max_explicit_len(self) -> u32 {
        if self.has_long_length() {
            u32::MAX - 1
        } else {
            u32::from(u16::MAX)
        }
    }

    /// The byte that pads an odd-length value to even length (PS3.5 §6.2): a space for
    /// text, NUL for UIDs and binary values.
    #[inline]
    pub fn padding(self) -> u8 {
        match self.kind() {
            Text => b' ',
            Uid | Binary | Sequence => 0,
        }
    }
}

/// The explicit VR header length for every value of the two VR bytes, from `TABLE`: 12 or 8
/// for two capital letters (unknown codes: 8), 0 for bytes that are no VR. Indexed by the
/// two bytes as a little-endian u16, so that the receiver's walk pays one load per header.
static HEADER_LEN_BY_BYTES: [u8; 1 << 16] = {
    let mut by_bytes = [0u8; 1 << 16];
    let mut i = 0;
    while i < by_bytes.len() {
        let code = (i as u16).to_le_bytes();
        if let Some(at) = code_index(code) {
            by_bytes[i] = match BY_CODE[at] {
                Some(vr) if matches!(TABLE[vr as usize].2, Long) => LONG_HEADER_LEN as u8,
                _ => SHORT_HEADER_LEN as u8,
            };
        }
        i += 1;
    }
    by_bytes
};

/// Header size of an explicit VR data element whose VR field holds `code` (PS3.5 §7.1.2): 12
/// for the VRs of table 7.1-1, 8 for those of table 7.1-2 and for two capital letters no VR
/// of this table (as dcmtk and pydicom read them: a 16-bit length, PS3.5 §6.2 leaves room
/// for new VRs). None for bytes that are no VR at all.
#[inline]
pub fn explicit_header_len(code: [u8; 2]) -> Option<usize> {
    match HEADER_LEN_BY_BYTES[usize::from(u16::from_le_bytes(code))] {
        0 => None,
        len => Some(usize::from(len)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_maps_back_to_its_vr() {
        for (vr, code, _, _) in TABLE {
            assert_eq!(Vr::from_code(code), Some(vr));
            assert_eq!(vr.code(), code);
        }
        assert_eq!(Vr::from_code(*b"XX"), None);
        assert_eq!(Vr::from_code(*b"ui"), None);
        assert_eq!(Vr::from_code([0, 0]), None);
    }

    #[test]
    fn long_length_vrs_are_those_of_table_7_1_1() {
        let long: Vec<[u8; 2]> = TABLE.iter().filter(|e| e.0.has_long_length()).map(|e| e.1).collect();
        let table_7_1_1 = [b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"];
        assert_eq!(long, table_7_1_1.map(|c| *c).to_vec());
    }

    #[test]
    fn explicit_header_lengths() {
        assert_eq!(explicit_header_len(*b"OB"), Some(12));
        assert_eq!(explicit_header_len(*b"SQ"), Some(12));
        assert_eq!(explicit_header_len(*b"UI"), Some(8));
        assert_eq!(explicit_header_len(*b"XX"), Some(8), "an unknown VR has a 16-bit length");
        assert_eq!(explicit_header_len(*b"U\0"), None);
        assert_eq!(explicit_header_len([0x10, 0x00]), None);
    }

    #[test]
    fn the_header_length_of_every_two_bytes_agrees_with_the_table() {
        for bytes in 0..=u16::MAX {
            let code = bytes.to_le_bytes();
            let expected = match Vr::from_code(code) {
                Some(vr) => Some(vr.explicit_header_len()),
                None if code.iter().all(u8::is_ascii_uppercase) => Some(SHORT_HEADER_LEN),
                None => None,
            };
            assert_eq!(explicit_header_len(code), expected, "{code:?}");
        }
    }

    #[test]
    fn padding_by_kind() {
        assert_eq!(Vr::UI.padding(), 0);
        assert_eq!(Vr::OB.padding(), 0);
        for vr in [Vr::AE, Vr::CS, Vr::LO, Vr::PN, Vr::SH, Vr::UR, Vr::UT, Vr::IS, Vr::DA] {
            assert_eq!(vr.padding(), b' ', "{vr:?}");
        }
    }

    #[test]
    fn maximum_lengths() {
        assert_eq!(Vr::UI.max_explicit_len(), 65535);
        assert_eq!(Vr::OB.max_explicit_len(), 0xFFFF_FFFE);
    }
}
