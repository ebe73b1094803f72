//! Data elements as bytes (PS3.5 §7): a writer that appends them to a buffer and a reader
//! over a buffer that holds them whole, in implicit or explicit VR, little endian (and, for
//! reading retired data and testing, explicit VR big endian). For command sets (PS3.7 §6.3.1),
//! the file meta group (PS3.10 §7.1) and generated data sets; the receiver's streaming walk
//! over data sets is [`crate::dicom::extract`], which shares the VR table and this `Syntax`.

use std::fmt;

use crate::dicom::attributes::Tag;
use crate::dicom::vr::{self, Vr};

/// Value Length 0xFFFFFFFF: a sequence or item ended by a delimitation item (PS3.5 §7.1.1).
pub const UNDEFINED_LENGTH: u32 = 0xFFFF_FFFF;

// Item and delimitation tags (PS3.5 §7.5, table 7.5-3).
pub const ITEM: Tag = 0xFFFE_E000;
pub const ITEM_DELIMITATION: Tag = 0xFFFE_E00D;
pub const SEQUENCE_DELIMITATION: Tag = 0xFFFE_E0DD;
/// Group of the item and delimitation tags, whose headers never carry a VR.
pub const ITEM_GROUP: u16 = 0xFFFE;

/// Pixel Data (7FE0,0010), the one element whose undefined length means encapsulated
/// fragments rather than a sequence (PS3.5 §A.4).
pub const PIXEL_DATA: Tag = 0x7FE0_0010;

/// The byte-level encoding of data elements: whether headers carry the VR (PS3.5 §7.1.2,
/// §7.1.3) and the byte order of numbers (PS3.5 §7.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    ImplicitLittle,
    ExplicitLittle,
    ExplicitBig,
}

impl Syntax {
    #[inline]
    pub fn u16(self, bytes: [u8; 2]) -> u16 {
        match self {
            Syntax::ExplicitBig => u16::from_be_bytes(bytes),
            _ => u16::from_le_bytes(bytes),
        }
    }

    #[inline]
    pub fn u32(self, bytes: [u8; 4]) -> u32 {
        match self {
            Syntax::ExplicitBig => u32::from_be_bytes(bytes),
            _ => u32::from_le_bytes(bytes),
        }
    }

    #[inline]
    fn u16_bytes(self, value: u16) -> [u8; 2] {
        match self {
            Syntax::ExplicitBig => value.to_be_bytes(),
            _ => value.to_le_bytes(),
        }
    }

    #[inline]
    fn u32_bytes(self, value: u32) -> [u8; 4] {
        match self {
            Syntax::ExplicitBig => value.to_be_bytes(),
            _ => value.to_le_bytes(),
        }
    }

    #[inline]
    pub fn is_explicit(self) -> bool {
        self != Syntax::ImplicitLittle
    }

    /// Size of the header of a data element of this VR: always 8 in implicit VR (tag and a
    /// 32-bit length, PS3.5 §7.1.3).
    pub fn header_len(self, vr: Vr) -> usize {
        if self.is_explicit() {
            vr.explicit_header_len()
        } else {
            vr::SHORT_HEADER_LEN
        }
    }

    /// Longest value a header of this VR can give the length of.
    #[inline]
    fn max_len(self, vr: Vr) -> u32 {
        if self.is_explicit() {
            vr.max_explicit_len()
        } else {
            UNDEFINED_LENGTH - 1
        }
    }
}

/// Formats a tag as (gggg,eeee), for messages.
pub struct TagName(pub Tag);

impl fmt::Display for TagName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({:04X},{:04X})", self.0 >> 16, self.0 & 0xFFFF)
    }
}

/// A value longer than its element's length field can say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueTooLong {
    pub tag: Tag,
    pub vr: Vr,
    /// Length of the value, in bytes, before padding.
    pub len: usize,
}

impl fmt::Display for ValueTooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:?} value of {} bytes is longer than its length field holds",
            TagName(self.tag),
            self.vr,
            self.len
        )
    }
}

impl std::error::Error for ValueTooLong {}

/// Where a group length element's value is, to be filled in once the group is written.
#[must_use = "the group length is only right once `end_group` has filled it in"]
pub struct GroupLength {
    tag: Tag,
    value_at: usize,
}

/// Appends data elements to a buffer in one `Syntax`, values padded to even length with
/// their VR's padding (PS3.5 §6.2, §7.1.1).
#[derive(Debug, Clone)]
pub struct Writer {
    bytes: Vec<u8>,
    syntax: Syntax,
}

impl Writer {
    pub fn new(syntax: Syntax) -> Self {
        Self::after(Vec::new(), syntax)
    }

    /// A writer that appends to `bytes` (a file preamble, say).
    pub fn after(bytes: Vec<u8>, syntax: Syntax) -> Self {
        Self { bytes, syntax }
    }

    pub fn syntax(&self) -> Syntax {
        self.syntax
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// Appends bytes as they are: a value streamed after its `header`, or hand-made bytes.
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(bytes);
        self
    }

    fn put_u16(&mut self, value: u16) {
        let bytes = self.syntax.u16_bytes(value);
        self.bytes.extend_from_slice(&bytes);
    }

    fn put_u32(&mut self, value: u32) {
        let bytes = self.syntax.u32_bytes(value);
        self.bytes.extend_from_slice(&bytes);
    }

    fn put_tag(&mut self, tag: Tag) {
        self.put_u16((tag >> 16) as u16);
        self.put_u16(tag as u16);
    }

    /// The header of an element whose value of `length` bytes (or [`UNDEFINED_LENGTH`], for
    /// the VRs that allow it) the caller appends next: tag, then in explicit VR the VR and,
    /// for the VRs of PS3.5 table 7.1-1, two reserved bytes, then the length.
    pub fn header(&mut self, tag: Tag, vr: Vr, length: u32) -> Result<&mut Self, ValueTooLong> {
        let fits = length <= self.syntax.max_len(vr) || (length == UNDEFINED_LENGTH && vr.has_long_length());
        if !fits {
            return Err(ValueTooLong { tag, vr, len: length as usize });
        }
        self.put_header(tag, vr, length);
        Ok(self)
    }

    /// `header`, for a length that fits; gathered on the stack and appended at once, with a
    /// size known at compile time (a copy of a few moves rather than a call to memcpy).
    #[inline]
    fn put_header(&mut self, tag: Tag, vr: Vr, length: u32) {
        let syntax = self.syntax;
        let mut h = [0u8; vr::LONG_HEADER_LEN];
        h[0..2].copy_from_slice(&syntax.u16_bytes((tag >> 16) as u16));
        h[2..4].copy_from_slice(&syntax.u16_bytes(tag as u16));
        if !syntax.is_explicit() {
            h[4..8].copy_from_slice(&syntax.u32_bytes(length));
            self.bytes.extend_from_slice(&h[..vr::SHORT_HEADER_LEN]);
        } else if vr.has_long_length() {
            // Bytes 6 and 7 are the reserved field, zero.
            h[4..6].copy_from_slice(&vr.code());
            h[8..12].copy_from_slice(&syntax.u32_bytes(length));
            self.bytes.extend_from_slice(&h);
        } else {
            h[4..6].copy_from_slice(&vr.code());
            h[6..8].copy_from_slice(&syntax.u16_bytes(length as u16));
            self.bytes.extend_from_slice(&h[..vr::SHORT_HEADER_LEN]);
        }
    }

    /// Appends an element; an odd-length value gets its VR's padding byte. Returns where the
    /// value starts in the buffer, for values patched in place later.
    #[inline]
    pub fn element(&mut self, tag: Tag, vr: Vr, value: &[u8]) -> Result<usize, ValueTooLong> {
        let padded = value.len() + value.len() % 2;
        if padded > self.syntax.max_len(vr) as usize {
            return Err(ValueTooLong { tag, vr, len: value.len() });
        }
        self.put_header(tag, vr, padded as u32);
        let at = self.bytes.len();
        self.bytes.extend_from_slice(value);
        if padded > value.len() {
            self.bytes.push(vr.padding());
        }
        Ok(at)
    }

    /// Appends a text or UID element (padded with a space or a NUL, by its VR).
    #[inline]
    pub fn text(&mut self, tag: Tag, vr: Vr, value: &str) -> Result<usize, ValueTooLong> {
        self.element(tag, vr, value.as_bytes())
    }

    /// Appends a US (or SS) element of one value (2 bytes fit every length field).
    pub fn u16(&mut self, tag: Tag, vr: Vr, value: u16) -> &mut Self {
        self.put_header(tag, vr, 2);
        self.put_u16(value);
        self
    }

    /// Appends a UL (or SL) element of one value.
    pub fn u32(&mut self, tag: Tag, vr: Vr, value: u32) -> &mut Self {
        self.put_header(tag, vr, 4);
        self.put_u32(value);
        self
    }

    /// Starts a group with its group length element (gggg,0000), UL (PS3.5 §7.2), whose
    /// value [`Writer::end_group`] fills in.
    pub fn group_length(&mut self, group: u16) -> GroupLength {
        let tag = Tag::from(group) << 16;
        self.u32(tag, Vr::UL, 0);
        GroupLength { tag, value_at: self.bytes.len() - 4 }
    }

    /// Fills in the group length: the bytes written after its element.
    pub fn end_group(&mut self, group: GroupLength) -> Result<(), ValueTooLong> {
        let len = self.bytes.len() - (group.value_at + 4);
        let length = u32::try_from(len).map_err(|_| ValueTooLong { tag: group.tag, vr: Vr::UL, len })?;
        let bytes = self.syntax.u32_bytes(length);
        self.bytes[group.value_at..group.value_at + 4].copy_from_slice(&bytes);
        Ok(())
    }

    /// An item or delimitation header: tag and a 32-bit length, never a VR (PS3.5 §7.5).
    pub fn item_header(&mut self, tag: Tag, length: u32) -> &mut Self {
        self.put_tag(tag);
        self.put_u32(length);
        self
    }

    /// A sequence (SQ, or UN holding one) of undefined length, ended by `close_sequence`.
    pub fn open_sequence(&mut self, tag: Tag, vr: Vr) -> Result<&mut Self, ValueTooLong> {
        self.header(tag, vr, UNDEFINED_LENGTH)
    }

    pub fn close_sequence(&mut self) -> &mut Self {
        self.item_header(SEQUENCE_DELIMITATION, 0)
    }

    /// An item of undefined length, ended by `close_item`.
    pub fn open_item(&mut self) -> &mut Self {
        self.item_header(ITEM, UNDEFINED_LENGTH)
    }

    pub fn close_item(&mut self) -> &mut Self {
        self.item_header(ITEM_DELIMITATION, 0)
    }

    /// An item of defined length holding `content` (a nested data set, or a fragment).
    pub fn item(&mut self, content: &[u8]) -> Result<&mut Self, ValueTooLong> {
        let length = u32::try_from(content.len())
            .ok()
            .filter(|&length| length != UNDEFINED_LENGTH)
            .ok_or(ValueTooLong { tag: ITEM, vr: Vr::SQ, len: content.len() })?;
        self.item_header(ITEM, length);
        self.bytes.extend_from_slice(content);
        Ok(self)
    }
}

/// One element read whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Element<'a> {
    pub tag: Tag,
    /// Its VR in explicit VR; None in implicit VR, where only a dictionary knows it.
    pub vr: Option<Vr>,
    pub value: &'a [u8],
    /// Where its header starts in the bytes read.
    pub offset: usize,
}

impl Element<'_> {
    /// The value as text, without the padding and the leading spaces PS3.5 §6.2 allows
    /// (default character repertoire: command sets and file meta have no other).
    pub fn text(&self) -> String {
        trimmed_text(self.value)
    }
}

/// Text of a value in the default repertoire, trimmed of its padding (trailing NULs and
/// spaces) and leading spaces (PS3.5 §6.2).
pub fn trimmed_text(value: &[u8]) -> String {
    String::from_utf8_lossy(value).trim_end_matches(['\0', ' ']).trim_start_matches(' ').to_owned()
}

/// Why elements could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// The bytes end inside an element header, at this offset.
    HeaderTruncated { offset: usize },
    /// The value of this element runs past the end of the bytes.
    ValueTruncated { tag: Tag },
    /// Where explicit VR puts a VR, bytes that are no VR of PS3.5.
    UnknownVr { tag: Tag, code: [u8; 2] },
    /// An element of undefined length: a sequence, which only the streaming walk reads.
    UndefinedLength { tag: Tag },
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::HeaderTruncated { offset } => write!(f, "ends inside an element header at byte {offset}"),
            ReadError::ValueTruncated { tag } => write!(f, "ends inside the value of {}", TagName(*tag)),
            ReadError::UnknownVr { tag, code } => {
                write!(f, "{} has no valid VR ({:?})", TagName(*tag), String::from_utf8_lossy(code))
            }
            ReadError::UndefinedLength { tag } => write!(f, "{} has undefined length", TagName(*tag)),
        }
    }
}

impl std::error::Error for ReadError {}

/// Reads the elements of a buffer that holds them whole, in order; stops after the first
/// error.
pub struct Reader<'a> {
    bytes: &'a [u8],
    syntax: Syntax,
    position: usize,
    failed: bool,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8], syntax: Syntax) -> Self {
        Self { bytes, syntax, position: 0, failed: false }
    }

    /// Offset of the next element.
    pub fn position(&self) -> usize {
        self.position
    }

    /// The tag of the next element, if at least its tag is there.
    pub fn peek_tag(&self) -> Option<Tag> {
        let h = self.bytes.get(self.position..self.position + 4)?;
        Some((Tag::from(self.syntax.u16([h[0], h[1]])) << 16) | Tag::from(self.syntax.u16([h[2], h[3]])))
    }

    /// The next element; inlined in `next`, where most of its work is the caller's.
    #[inline(always)]
    fn read(&mut self) -> Result<Element<'a>, ReadError> {
        let offset = self.position;
        let rest = &self.bytes[offset..];
        let truncated = ReadError::HeaderTruncated { offset };
        let h = rest.get(..vr::SHORT_HEADER_LEN).ok_or(truncated.clone())?;
        let syntax = self.syntax;
        let group = syntax.u16([h[0], h[1]]);
        let tag = (Tag::from(group) << 16) | Tag::from(syntax.u16([h[2], h[3]]));
        let (vr, header_len, length) = if syntax.is_explicit() && group != ITEM_GROUP {
            let code = [h[4], h[5]];
            let vr = Vr::from_code(code).ok_or(ReadError::UnknownVr { tag, code })?;
            if vr.has_long_length() {
                let long = rest.get(..vr::LONG_HEADER_LEN).ok_or(truncated)?;
                (Some(vr), vr::LONG_HEADER_LEN, syntax.u32([long[8], long[9], long[10], long[11]]))
            } else {
                (Some(vr), vr::SHORT_HEADER_LEN, u32::from(syntax.u16([h[6], h[7]])))
            }
        } else {
            (None, vr::SHORT_HEADER_LEN, syntax.u32([h[4], h[5], h[6], h[7]]))
        };
        if length == UNDEFINED_LENGTH {
            return Err(ReadError::UndefinedLength { tag });
        }
        let value = rest.get(header_len..header_len + length as usize).ok_or(ReadError::ValueTruncated { tag })?;
        self.position += header_len + value.len();
        Ok(Element { tag, vr, value, offset })
    }
}

impl<'a> Iterator for Reader<'a> {
    type Item = Result<Element<'a>, ReadError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.position == self.bytes.len() {
            return None;
        }
        let read = self.read();
        self.failed = read.is_err();
        Some(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn implicit_vr_elements_are_tag_length_value_padded() {
        let mut w = Writer::new(Syntax::ImplicitLittle);
        let at = w.text(0x0008_0018, Vr::UI, "1.2.3").unwrap();
        w.text(0x0010_0010, Vr::PN, "A^B").unwrap();
        w.u16(0x0028_0010, Vr::US, 512);
        assert_eq!(at, 8);
        assert_eq!(
            w.bytes(),
            b"\x08\x00\x18\x00\x06\x00\x00\x001.2.3\0\x10\x00\x10\x00\x04\x00\x00\x00A^B \x28\x00\x10\x00\x02\x00\x00\x00\x00\x02"
        );
    }

    #[test]
    fn explicit_vr_headers_follow_tables_7_1_1_and_7_1_2() {
        let mut w = Writer::new(Syntax::ExplicitLittle);
        w.text(0x0002_0013, Vr::SH, "OXI").unwrap();
        w.element(0x0002_0001, Vr::OB, &[0, 1]).unwrap();
        w.element(0x0009_1000, Vr::OB, &[7]).unwrap();
        assert_eq!(
            w.bytes(),
            b"\x02\x00\x13\x00SH\x04\x00OXI \x02\x00\x01\x00OB\0\0\x02\x00\x00\x00\x00\x01\x09\x00\x00\x10OB\0\0\x02\x00\x00\x00\x07\x00"
        );
    }

    #[test]
    fn big_endian_swaps_tags_lengths_and_numbers() {
        let mut w = Writer::new(Syntax::ExplicitBig);
        w.u16(0x0028_0010, Vr::US, 0x0102);
        assert_eq!(w.bytes(), b"\x00\x28\x00\x10US\x00\x02\x01\x02");
        let element = Reader::new(w.bytes(), Syntax::ExplicitBig).next().unwrap().unwrap();
        assert_eq!((element.tag, element.vr, element.value), (0x0028_0010, Some(Vr::US), &[1u8, 2][..]));
    }

    #[test]
    fn a_value_too_long_for_a_16_bit_length_is_an_error_and_writes_nothing() {
        let mut w = Writer::new(Syntax::ExplicitLittle);
        let long = "1".repeat(65_535);
        let error = w.text(0x0002_0003, Vr::UI, &long).unwrap_err();
        assert_eq!(error, ValueTooLong { tag: 0x0002_0003, vr: Vr::UI, len: 65_535 });
        assert!(w.is_empty());
        assert!(w.text(0x0002_0003, Vr::UI, &long[1..]).is_ok(), "65534 bytes fit");
        assert!(w.element(0x0002_0003, Vr::UT, long.as_bytes()).is_ok(), "UT has a 32-bit length");
        let mut implicit = Writer::new(Syntax::ImplicitLittle);
        assert!(implicit.text(0x0010_0010, Vr::PN, &long).is_ok(), "implicit VR lengths have 32 bits");
        assert!(w.open_sequence(0x0008_1115, Vr::LO).is_err(), "only long-length VRs are undefined");
    }

    #[test]
    fn group_length_counts_what_follows_it() {
        let mut w = Writer::after(vec![0xAA; 3], Syntax::ImplicitLittle);
        let group = w.group_length(0x0000);
        w.u16(0x0000_0100, Vr::US, 0x0030);
        w.end_group(group).unwrap();
        assert_eq!(&w.bytes()[3..], b"\0\0\0\0\x04\0\0\0\x0a\0\0\0\0\0\x00\x01\x02\0\0\0\x30\0");
    }

    #[test]
    fn reader_reads_back_what_the_writer_wrote() {
        for syntax in [Syntax::ImplicitLittle, Syntax::ExplicitLittle, Syntax::ExplicitBig] {
            let mut w = Writer::new(syntax);
            let group = w.group_length(0x0002);
            w.text(0x0002_0010, Vr::UI, "1.2.840.10008.1.2.1").unwrap();
            w.element(0x0009_1000, Vr::OB, &[1, 2, 3]).unwrap();
            w.end_group(group).unwrap();
            let elements: Vec<Element> = Reader::new(w.bytes(), syntax).collect::<Result<_, _>>().unwrap();
            let vr = |vr| syntax.is_explicit().then_some(vr);
            assert_eq!(elements.len(), 3, "{syntax:?}");
            assert_eq!(elements[0].tag, 0x0002_0000);
            assert_eq!(syntax.u32(elements[0].value.try_into().unwrap()) as usize, w.len() - elements[1].offset);
            assert_eq!((elements[1].vr, elements[1].text()), (vr(Vr::UI), "1.2.840.10008.1.2.1".to_owned()));
            assert_eq!((elements[2].vr, elements[2].value), (vr(Vr::OB), &[1, 2, 3, 0][..]));
        }
    }

    #[test]
    fn sequences_and_items() {
        let mut w = Writer::new(Syntax::ExplicitLittle);
        w.open_sequence(0x0008_1115, Vr::SQ).unwrap().open_item().close_item().close_sequence();
        w.item(&[1, 2]).unwrap();
        assert_eq!(
            w.bytes(),
            b"\x08\x00\x15\x11SQ\0\0\xff\xff\xff\xff\xfe\xff\x00\xe0\xff\xff\xff\xff\xfe\xff\x0d\xe0\0\0\0\0\xfe\xff\xdd\xe0\0\0\0\0\xfe\xff\x00\xe0\x02\0\0\0\x01\x02"
        );
        let mut reader = Reader::new(w.bytes(), Syntax::ExplicitLittle);
        assert_eq!(reader.next(), Some(Err(ReadError::UndefinedLength { tag: 0x0008_1115 })));
        assert_eq!(reader.next(), None, "nothing after an error");
    }

    #[test]
    fn truncation_and_bad_vrs_are_errors() {
        fn read(bytes: &[u8], syntax: Syntax) -> Result<Vec<Element<'_>>, ReadError> {
            Reader::new(bytes, syntax).collect()
        }
        assert_eq!(read(&[0, 0, 0], Syntax::ImplicitLittle), Err(ReadError::HeaderTruncated { offset: 0 }));
        assert_eq!(
            read(&[0, 0, 1, 0, 255, 255, 255, 0], Syntax::ImplicitLittle),
            Err(ReadError::ValueTruncated { tag: 0x0000_0001 })
        );
        assert_eq!(
            read(b"\x02\x00\x01\x00OB\0\0\x02\0", Syntax::ExplicitLittle),
            Err(ReadError::HeaderTruncated { offset: 0 })
        );
        assert_eq!(
            read(b"\x02\x00\x10\x00XX\x02\x0012", Syntax::ExplicitLittle),
            Err(ReadError::UnknownVr { tag: 0x0002_0010, code: *b"XX" })
        );
        assert_eq!(read(&[], Syntax::ExplicitLittle), Ok(vec![]));
        assert_eq!(ReadError::ValueTruncated { tag: 0x0002_0010 }.to_string(), "ends inside the value of (0002,0010)");
    }

    #[test]
    fn padding_and_leading_spaces_are_trimmed() {
        assert_eq!(trimmed_text(b"1.2.3\0"), "1.2.3");
        assert_eq!(trimmed_text(b" AE TITLE  "), "AE TITLE");
        assert_eq!(trimmed_text(b""), "");
    }
}
