//! Walks a data set while it streams past in fragments of any size, with bounded memory:
//! checks its element structure (PS3.5 §7) and reads the extracted `Attributes` from its top
//! level.
//!
//! Every element header is read; values are skipped by counting their bytes down, except the
//! few extracted ones, which are buffered. Sequences and items are walked, of defined length
//! (the length must hold exactly what it contains, PS3.5 §7.5) or undefined length (ended by
//! a delimitation item, PS3.5 §7.5.2); so are the items of encapsulated pixel data, whose
//! contents are skipped (PS3.5 §A.4). A data set that ends inside an element, a header or a
//! sequence, or whose lengths do not add up, is malformed.
//!
//! Implicit VR says nothing of which defined-length values are sequences (only the data
//! dictionary does, and we carry none): there such a value is skipped whole, its length
//! checked against its container's. Undefined lengths are always sequences or encapsulated
//! pixel data, and walked.
//!
//! The receiver walks every data set to its end ([`Extractor::whole`]). Reading a stored file
//! back needs only the attributes: [`Extractor::new`] stops at the first top-level tag past
//! `LAST_EXTRACTED_TAG` (elements come in ascending tag order, PS3.5 §7.1).

use std::fmt;

use crate::dicom::attributes::{is_extracted, keyword_of, Attributes, Tag, LAST_EXTRACTED_TAG};
use crate::dicom::charset::decode_text;
use crate::dicom::element::{
    Syntax, TagName, ITEM, ITEM_DELIMITATION, ITEM_GROUP, PIXEL_DATA, SEQUENCE_DELIMITATION, UNDEFINED_LENGTH,
};
use crate::dicom::inflate::{InflateError, InflateLimits, Inflated, Inflater};
use crate::dicom::transfer_syntax::Encoding;
use crate::dicom::vr::{self, Vr};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtractError {
    /// The data set is not well-formed (PS3.5 §7), or its deflate stream is corrupt.
    Malformed(String),
    /// Inflating it would pass one of the configured bounds.
    OverLimit(InflateError),
}

impl fmt::Display for ExtractError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExtractError::Malformed(message) => f.write_str(message),
            ExtractError::OverLimit(limit) => limit.fmt(f),
        }
    }
}

impl std::error::Error for ExtractError {}

impl From<InflateError> for ExtractError {
    fn from(e: InflateError) -> Self {
        match e {
            InflateError::Corrupt => ExtractError::Malformed(e.to_string()),
            limit => ExtractError::OverLimit(limit),
        }
    }
}

fn error<T>(message: impl Into<String>) -> Result<T, ExtractError> {
    Err(ExtractError::Malformed(message.into()))
}

/// Longest extracted value we buffer. The longest text VR we extract is LO (64 characters,
/// at most 4 bytes each): anything near this is not a real value.
const MAX_VALUE_LENGTH: u32 = 64 * 1024;
/// Deepest nesting of sequences and items we follow (each counts one).
const MAX_NESTING: usize = 2 * 64;
const SPECIFIC_CHARACTER_SET: Tag = 0x0008_0005;

// The VRs whose headers the walk acts on, as they appear in a header.
const SQ: [u8; 2] = Vr::SQ.code();
const UN: [u8; 2] = Vr::UN.code();

/// Walks a data set fed to it in order, in fragments of any size, and extracts `Attributes`.
pub struct Extractor {
    parser: Parser,
    /// Present for the deflated transfer syntax: the parser then reads its output.
    inflater: Option<Box<Inflater>>,
    /// Set by the first error: later calls report it again.
    failure: Option<ExtractError>,
}

impl Extractor {
    /// Reads the attributes only, and stops after the last one (for files already stored).
    pub fn new(encoding: Encoding) -> Self {
        Self::with(encoding, false, InflateLimits::NONE)
    }

    /// Walks the whole data set, as the receiver does with every instance; a deflated one
    /// is inflated within `limits`.
    pub fn whole(encoding: Encoding, limits: InflateLimits) -> Self {
        Self::with(encoding, true, limits)
    }

    fn with(encoding: Encoding, whole: bool, limits: InflateLimits) -> Self {
        let (syntax, inflater) = match encoding {
            Encoding::ImplicitLittle => (Syntax::ImplicitLittle, None),
            Encoding::ExplicitLittle => (Syntax::ExplicitLittle, None),
            Encoding::ExplicitBig => (Syntax::ExplicitBig, None),
            Encoding::DeflatedExplicitLittle => (Syntax::ExplicitLittle, Some(Box::new(Inflater::new(limits)))),
        };
        Self { parser: Parser::new(syntax, whole), inflater, failure: None }
    }

    /// Whether feeding it means inflating: CPU work worth doing in slices, off the async
    /// workers (see [`Extractor::feed_within`]).
    pub fn inflates(&self) -> bool {
        self.inflater.is_some()
    }

    /// Feeds the next bytes of the data set, in order. Ok(true) once no more input is
    /// needed (only [`Extractor::new`]'s, once past the last extracted attribute); later calls
    /// are then cheap no-ops returning Ok(true).
    pub fn feed(&mut self, chunk: &[u8]) -> Result<bool, ExtractError> {
        self.feed_within(chunk, usize::MAX)?;
        Ok(self.parser.is_done())
    }

    /// As `feed`, but inflates at most about `budget` bytes (a data set not deflated is
    /// always fed whole): the caller passes the rest of `chunk` again while `more` is set.
    pub fn feed_within(&mut self, chunk: &[u8], budget: usize) -> Result<Inflated, ExtractError> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        let fed = match &mut self.inflater {
            None => self.parser.feed(chunk).map(|_| Inflated { consumed: chunk.len(), more: false }),
            Some(inflater) => {
                let parser = &mut self.parser;
                // Once the parser wants no more, neither does the inflater.
                if parser.is_done() {
                    return Ok(Inflated { consumed: chunk.len(), more: false });
                }
                inflater.inflate(chunk, budget, |inflated| parser.feed(inflated))
            }
        };
        fed.inspect_err(|failure| self.failure = Some(failure.clone()))
    }

    /// The data set has ended. Ok(attributes) if it ended between two top-level elements (or
    /// parsing was already done); Err if it ended inside an element, a header or a sequence.
    pub fn finish(self) -> Result<Attributes, ExtractError> {
        if let Some(failure) = self.failure {
            return Err(failure);
        }
        if !self.parser.is_done() {
            if self.inflater.is_some_and(|inflater| !inflater.ended()) {
                return error("deflated dataset is truncated");
            }
            self.parser.check_ended()?;
        }
        Ok(self.parser.attributes)
    }
}

/// An open sequence, item or encapsulated pixel data.
#[derive(Debug, Clone, Copy)]
struct Container {
    kind: ContainerKind,
    /// Encoding of its content: that of the enclosing dataset, except in UN (PS3.5 §6.2.2).
    syntax: Syntax,
    /// Data set offset just past its last byte, for a defined length; None for an undefined
    /// length, which a delimitation item ends (PS3.5 §7.5.2).
    end: Option<u64>,
    /// The end of the innermost defined-length container it is in (itself included), and
    /// that container's kind: nothing inside may go past it.
    limit: Option<(u64, ContainerKind)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ContainerKind {
    /// A sequence of items (PS3.5 §7.5.1).
    Sequence,
    /// Encapsulated pixel data: items whose content is opaque bytes (PS3.5 §A.4).
    Fragments,
    /// An item holding a nested dataset.
    Item,
}

impl ContainerKind {
    fn name(self) -> &'static str {
        match self {
            ContainerKind::Sequence => "sequence",
            ContainerKind::Fragments => "pixel data",
            ContainerKind::Item => "item",
        }
    }
}

#[derive(Debug)]
enum State {
    /// Reading the header of the next element or item.
    Header,
    /// Skipping this many value bytes.
    Skip(u32),
    /// Buffering the value of an extracted top-level element into `Parser::value`.
    Value { tag: Tag, remaining: u32 },
    /// Every extracted attribute has been seen (only when not walking the whole data set).
    Done,
}

/// An element or item header, decoded.
struct Header {
    tag: Tag,
    /// The VR of an explicit VR data element; None in implicit VR and for items.
    vr: Option<[u8; 2]>,
    length: u32,
}

/// The dataset parser: a state machine over the (inflated) dataset bytes.
struct Parser {
    /// Encoding of the top-level dataset.
    syntax: Syntax,
    /// Open sequences and items, innermost last.
    stack: Vec<Container>,
    /// The header being read: at most tag, VR, reserved and a 4-byte length (PS3.5 §7.1.2).
    header: [u8; 12],
    header_len: usize,
    state: State,
    value: Vec<u8>,
    attributes: Attributes,
    /// No header has been decoded yet (see `detect_implicit_vr`).
    at_start: bool,
    /// Data set bytes parsed so far: the offset of the next one.
    position: u64,
    /// Walk to the end of the data set, rather than stop after the last extracted attribute.
    whole: bool,
}

impl Parser {
    fn new(syntax: Syntax, whole: bool) -> Self {
        Self {
            syntax,
            stack: Vec::new(),
            header: [0; 12],
            header_len: 0,
            state: State::Header,
            value: Vec::new(),
            attributes: Attributes::default(),
            at_start: true,
            position: 0,
            whole,
        }
    }

    fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Ok if the dataset may end here: between two top-level elements.
    fn check_ended(&self) -> Result<(), ExtractError> {
        match (&self.state, self.stack.last()) {
            (State::Header, None) if self.header_len == 0 => Ok(()),
            (State::Header, Some(container)) if self.header_len == 0 => {
                error(format!("dataset ends inside a {}", container.kind.name()))
            }
            (State::Header, _) => error("dataset ends inside an element header"),
            _ => error("dataset ends inside an element value"),
        }
    }

    fn feed(&mut self, mut input: &[u8]) -> Result<bool, ExtractError> {
        while !input.is_empty() {
            let used = match self.state {
                State::Header => self.read_header(input)?,
                State::Skip(remaining) => self.skip_value(remaining, input)?,
                State::Value { tag, remaining } => self.read_value(tag, remaining, input),
                State::Done => return Ok(false),
            };
            input = &input[used..];
        }
        Ok(!self.is_done())
    }

    /// Encoding of the elements at the current nesting level.
    fn current_syntax(&self) -> Syntax {
        self.stack.last().map_or(self.syntax, |container| container.syntax)
    }

    /// Whether the next header is an item or a sequence delimiter rather than an element.
    fn in_sequence(&self) -> bool {
        self.stack.last().is_some_and(|container| container.kind != ContainerKind::Item)
    }

    /// Where the innermost defined-length container ends, if any.
    fn limit(&self) -> Option<(u64, ContainerKind)> {
        self.stack.last().and_then(|container| container.limit)
    }

    /// The tag of a header whose first 4 bytes (at least) are `h`. Called for every header
    /// (twice for most): inlined, or its call costs as much as its work.
    #[inline(always)]
    fn tag_of(&self, h: &[u8]) -> Tag {
        let syntax = self.current_syntax();
        let group = syntax.u16([h[0], h[1]]);
        let element = syntax.u16([h[2], h[3]]);
        (u32::from(group) << 16) | u32::from(element)
    }

    /// Reads the next header, then acts on it; returns how many bytes of `input` it used.
    /// A header wholly in `input` (most are) is decoded where it is; one split across
    /// fragments, or the very first (see `detect_implicit_vr`), is gathered in `header`.
    fn read_header(&mut self, input: &[u8]) -> Result<usize, ExtractError> {
        if self.header_len == 0 && !self.at_start && input.len() >= self.header.len() {
            let h = &input[..self.header.len()];
            if self.stops_at(self.tag_of(h)) {
                self.state = State::Done;
                return Ok(0);
            }
            let size = self.header_size(h);
            self.position += size as u64;
            self.on_complete_header(&h[..size])?;
            return Ok(size);
        }
        let mut used = 0;
        loop {
            if self.header_len == 4 && self.stops_at(self.tag_of(&self.header)) {
                self.state = State::Done;
                return Ok(used);
            }
            self.detect_implicit_vr();
            let size = self.header_size(&self.header[..self.header_len]);
            if self.header_len == size {
                self.header_len = 0;
                let header = self.header;
                self.on_complete_header(&header[..size])?;
                return Ok(used);
            }
            let n = (size - self.header_len).min(input.len() - used);
            if n == 0 {
                return Ok(used);
            }
            self.header[self.header_len..self.header_len + n].copy_from_slice(&input[used..used + n]);
            self.header_len += n;
            used += n;
            self.position += n as u64;
        }
    }

    /// Reading only the attributes, parsing stops at the first top-level tag past the last.
    fn stops_at(&self, tag: Tag) -> bool {
        !self.whole && self.stack.is_empty() && tag > LAST_EXTRACTED_TAG
    }

    /// Acts on header `h`, read whole (`position` is past it).
    fn on_complete_header(&mut self, h: &[u8]) -> Result<(), ExtractError> {
        self.at_start = false;
        if let Some((end, kind)) = self.limit() {
            if self.position > end {
                return error(format!("a header runs past the end of its {}", kind.name()));
            }
        }
        let header = self.decode_header(h);
        self.on_header(header)?;
        if matches!(self.state, State::Header) {
            self.close_ended()?;
        }
        Ok(())
    }

    /// Some writers label implicit VR datasets as explicit VR little endian. Like dcmtk and
    /// pydicom, read such a dataset as implicit VR when its very first element has no valid
    /// VR where explicit VR puts one (PS3.5 §7.1.2), instead of refusing the instance.
    fn detect_implicit_vr(&mut self) {
        if self.at_start
            && self.header_len == 6
            && self.syntax == Syntax::ExplicitLittle
            && vr::explicit_header_len([self.header[4], self.header[5]]).is_none()
        {
            self.syntax = Syntax::ImplicitLittle;
        }
    }

    /// The size of a header whose first bytes are `h`, as far as they tell: the tag first,
    /// then in explicit VR the VR, which says whether the length has 2 or 4 bytes (PS3.5
    /// §7.1.2). Bytes that are no VR at all: an implicit VR element (see `element_vr`).
    fn header_size(&self, h: &[u8]) -> usize {
        if h.len() < 4 {
            return 4;
        }
        if !self.has_vr(self.tag_of(h)) {
            return 8;
        }
        if h.len() < 6 {
            return 6;
        }
        vr::explicit_header_len([h[4], h[5]]).unwrap_or(vr::SHORT_HEADER_LEN)
    }

    /// The VR of header `h`, if it has one. Some writers encode elements in implicit VR
    /// inside explicit VR data sets, most often the items of (private) sequences: where the
    /// VR should be, bytes that are no VR at all (not two capital letters) mean an implicit
    /// VR element with its 4-byte length, as pydicom reads them (dcmtk's storescp stores
    /// such data sets too). Refusing them would refuse what other receivers accept.
    fn element_vr(&self, tag: Tag, h: &[u8]) -> Option<[u8; 2]> {
        let vr = [h[4], h[5]];
        (self.has_vr(tag) && vr::explicit_header_len(vr).is_some()).then_some(vr)
    }

    /// Whether the header of this tag has a VR: explicit VR data elements only, not items
    /// and delimiters (PS3.5 §7.1.2, §7.5).
    fn has_vr(&self, tag: Tag) -> bool {
        self.current_syntax() != Syntax::ImplicitLittle && !self.in_sequence() && tag >> 16 != u32::from(ITEM_GROUP)
    }

    /// Decodes a whole header `h` (8 or 12 bytes).
    fn decode_header(&self, h: &[u8]) -> Header {
        let syntax = self.current_syntax();
        let tag = self.tag_of(h);
        let vr = self.element_vr(tag, h);
        let size = h.len();
        let length = match (size, vr) {
            (8, Some(_)) => u32::from(syntax.u16([h[6], h[7]])),
            _ => syntax.u32([h[size - 4], h[size - 3], h[size - 2], h[size - 1]]),
        };
        Header { tag, vr, length }
    }

    fn on_header(&mut self, header: Header) -> Result<(), ExtractError> {
        match self.stack.last().copied() {
            Some(container) if container.kind != ContainerKind::Item => self.on_item_header(header, container),
            _ => self.on_element_header(header),
        }
    }

    /// A header inside a sequence or encapsulated pixel data: an item or the sequence
    /// delimiter (PS3.5 §7.5.1, §7.5.2, §A.4).
    fn on_item_header(&mut self, header: Header, sequence: Container) -> Result<(), ExtractError> {
        match header.tag {
            ITEM if header.length == UNDEFINED_LENGTH => {
                if sequence.kind == ContainerKind::Fragments {
                    return error("pixel data fragment has undefined length");
                }
                self.open(ContainerKind::Item, sequence.syntax, None)
            }
            // A fragment of encapsulated pixel data: opaque bytes.
            ITEM if sequence.kind == ContainerKind::Fragments => self.skip(header.tag, header.length),
            ITEM => self.open(ContainerKind::Item, sequence.syntax, Some(header.length)),
            SEQUENCE_DELIMITATION if sequence.end.is_none() => {
                self.stack.pop();
                Ok(())
            }
            // A sequence delimiter in a defined-length sequence (some writers end one with it,
            // pydicom reads it as the end), or a stray item delimiter: changes nothing, the
            // length still ends the sequence and must add up.
            SEQUENCE_DELIMITATION | ITEM_DELIMITATION => Ok(()),
            tag => error(format!("{} in a sequence, where an item must be", TagName(tag))),
        }
    }

    /// A header in the top-level dataset or in an item's dataset.
    fn on_element_header(&mut self, header: Header) -> Result<(), ExtractError> {
        match header.tag {
            ITEM_DELIMITATION => {
                // It ends an undefined-length item; elsewhere (top level, defined-length item)
                // it changes nothing: tolerated as other readers do.
                if self.stack.last().is_some_and(|item| item.end.is_none()) {
                    self.stack.pop();
                }
                Ok(())
            }
            ITEM | SEQUENCE_DELIMITATION => error(format!("{} outside a sequence", TagName(header.tag))),
            _ if header.length == UNDEFINED_LENGTH => self.open_undefined_length(&header),
            _ if header.vr == Some(SQ) => {
                self.open(ContainerKind::Sequence, self.current_syntax(), Some(header.length))
            }
            tag if self.stack.is_empty() && is_extracted(tag) => self.start_value(tag, header.length),
            tag => self.skip(tag, header.length),
        }
    }

    /// An element with undefined length is a sequence, or encapsulated pixel data (PS3.5
    /// §7.1.2, §A.4). In implicit VR only a sequence can be (PS3.5 §7.5), pixel data aside.
    fn open_undefined_length(&mut self, header: &Header) -> Result<(), ExtractError> {
        let syntax = self.current_syntax();
        let (kind, syntax) = match header.vr {
            Some(vr) if vr == SQ => (ContainerKind::Sequence, syntax),
            // UN of undefined length holds a sequence in implicit VR little endian (§6.2.2).
            Some(vr) if vr == UN => (ContainerKind::Sequence, Syntax::ImplicitLittle),
            Some(_) => (ContainerKind::Fragments, syntax),
            None if header.tag == PIXEL_DATA => (ContainerKind::Fragments, syntax),
            None => (ContainerKind::Sequence, syntax),
        };
        self.open(kind, syntax, None)
    }

    /// Opens a container of `length` bytes (None: undefined length). An empty one is not
    /// opened: there is nothing in it to walk.
    fn open(&mut self, kind: ContainerKind, syntax: Syntax, length: Option<u32>) -> Result<(), ExtractError> {
        if self.stack.len() >= MAX_NESTING {
            return error("sequences nested more than 64 deep");
        }
        let (end, limit) = match length {
            Some(0) => return Ok(()),
            Some(length) => {
                let end = self.end_of(length).or_else(|outer| overrun(kind.name(), outer))?;
                (Some(end), Some((end, kind)))
            }
            None => (None, self.limit()),
        };
        self.stack.push(Container { kind, syntax, end, limit });
        Ok(())
    }

    /// Where a value or container of `length` bytes starting here ends; Err with the kind
    /// of the innermost defined-length container if that is past its end.
    fn end_of(&self, length: u32) -> Result<u64, ContainerKind> {
        let end = self.position + u64::from(length);
        match self.limit() {
            Some((limit, kind)) if end > limit => Err(kind),
            _ => Ok(end),
        }
    }

    /// Closes the defined-length containers that end here. An undefined-length one cannot
    /// end by reaching the end of the container it is in: it needs its delimitation item.
    fn close_ended(&mut self) -> Result<(), ExtractError> {
        while let Some(container) = self.stack.last() {
            if container.end == Some(self.position) {
                self.stack.pop();
            } else if let Some((_, kind)) = container.limit.filter(|(end, _)| *end == self.position) {
                return error(format!("{} not delimited within its {}", container.kind.name(), kind.name()));
            } else {
                break;
            }
        }
        Ok(())
    }

    fn skip(&mut self, tag: Tag, length: u32) -> Result<(), ExtractError> {
        self.end_of(length).or_else(|outer| overrun(TagName(tag), outer))?;
        if length > 0 {
            self.state = State::Skip(length);
        }
        Ok(())
    }

    fn skip_value(&mut self, remaining: u32, input: &[u8]) -> Result<usize, ExtractError> {
        let n = input.len().min(remaining as usize);
        self.position += n as u64;
        match remaining - n as u32 {
            0 => {
                self.state = State::Header;
                self.close_ended()?;
            }
            left => self.state = State::Skip(left),
        }
        Ok(n)
    }

    /// Starts buffering an extracted top-level value (no container: nothing to close after).
    fn start_value(&mut self, tag: Tag, length: u32) -> Result<(), ExtractError> {
        if length > MAX_VALUE_LENGTH {
            let keyword = keyword_of(tag).unwrap_or("value");
            return error(format!("{keyword} is longer than 64 KiB"));
        }
        self.value.clear();
        // Exact, so that the buffer never grows past MAX_VALUE_LENGTH.
        self.value.reserve_exact(length as usize);
        self.state = State::Value { tag, remaining: length };
        if length == 0 {
            self.end_value(tag);
        }
        Ok(())
    }

    fn read_value(&mut self, tag: Tag, remaining: u32, input: &[u8]) -> usize {
        let n = input.len().min(remaining as usize);
        self.value.extend_from_slice(&input[..n]);
        self.position += n as u64;
        match remaining - n as u32 {
            0 => self.end_value(tag),
            left => self.state = State::Value { tag, remaining: left },
        }
        n
    }

    fn end_value(&mut self, tag: Tag) {
        self.store(tag);
        self.state = if tag >= LAST_EXTRACTED_TAG && !self.whole { State::Done } else { State::Header };
    }

    /// Decodes a buffered value and stores it, trimmed of the padding PS3.5 §6.2 allows.
    /// Specific Character Set (0008,0005) sorts first, so it applies to every later value;
    /// its own value is in the default repertoire.
    fn store(&mut self, tag: Tag) {
        let character_set = match tag {
            SPECIFIC_CHARACTER_SET => None,
            _ => self.attributes.specific_character_set.as_deref(),
        };
        let text = decode_text(&self.value, character_set);
        // UI is padded with a trailing NUL, other text with a trailing space (PS3.5 §6.2);
        // leading spaces are insignificant in most text VRs, and never valid in UI.
        let text = text.trim_end_matches(['\0', ' ']);
        let text = if is_uid(tag) { text } else { text.trim_start_matches(' ') };
        // An empty value is treated as a missing one.
        if !text.is_empty() {
            self.attributes.set(tag, text.to_owned());
        }
    }
}

/// Whether an extracted attribute has VR UI.
fn is_uid(tag: Tag) -> bool {
    matches!(tag, 0x0008_0016 | 0x0008_0018 | 0x0020_000D | 0x0020_000E)
}

fn overrun<T>(what: impl fmt::Display, outer: ContainerKind) -> Result<T, ExtractError> {
    error(format!("{what} runs past the end of its {}", outer.name()))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use proptest::prelude::*;

    use super::*;
    use crate::dicom::element::Writer;
    use crate::dicom::inflate::InflateError;

    /// Builds datasets in one syntax with the element writer. `boundaries` records the
    /// offsets between top-level elements: the only places a dataset may be cut without
    /// `finish` failing.
    struct Builder {
        w: Writer,
        depth: usize,
        boundaries: Vec<usize>,
    }

    impl Builder {
        fn new(syntax: Syntax) -> Self {
            Self { w: Writer::new(syntax), depth: 0, boundaries: vec![0] }
        }

        fn bytes(&self) -> &[u8] {
            self.w.bytes()
        }

        /// Bytes as they are (a header cut short, a nested data set of another syntax).
        fn raw(&mut self, bytes: &[u8]) -> &mut Self {
            self.w.raw(bytes);
            self
        }

        fn item_header(&mut self, tag: Tag, length: u32) -> &mut Self {
            self.w.item_header(tag, length);
            self
        }

        fn header(&mut self, tag: Tag, vr: Vr, length: u32) -> &mut Self {
            self.w.header(tag, vr, length).unwrap();
            self
        }

        fn boundary(&mut self) {
            if self.depth == 0 {
                self.boundaries.push(self.w.len());
            }
        }

        fn element(&mut self, tag: Tag, vr: Vr, value: &[u8]) -> &mut Self {
            self.w.element(tag, vr, value).unwrap();
            self.boundary();
            self
        }

        fn text(&mut self, tag: Tag, vr: Vr, value: &str) -> &mut Self {
            self.element(tag, vr, value.as_bytes())
        }

        /// An undefined-length sequence (VR SQ, or UN whose content is then implicit VR LE).
        fn open_sequence(&mut self, tag: Tag, vr: Vr) -> &mut Self {
            self.w.open_sequence(tag, vr).unwrap();
            self.depth += 1;
            self
        }

        fn open_item(&mut self) -> &mut Self {
            self.w.open_item();
            self.depth += 1;
            self
        }

        fn close_item(&mut self) -> &mut Self {
            self.w.close_item();
            self.depth -= 1;
            self
        }

        fn close_sequence(&mut self) -> &mut Self {
            self.w.close_sequence();
            self.depth -= 1;
            self.boundary();
            self
        }

        fn defined_item(&mut self, content: &[u8]) -> &mut Self {
            self.w.item(content).unwrap();
            self
        }

        /// A nested dataset in this builder's syntax, for defined-length items.
        fn nested(&self, build: impl FnOnce(&mut Builder)) -> Vec<u8> {
            let mut nested = Builder::new(self.w.syntax());
            build(&mut nested);
            nested.w.into_bytes()
        }
    }

    fn syntax_of(encoding: Encoding) -> Syntax {
        match encoding {
            Encoding::ImplicitLittle => Syntax::ImplicitLittle,
            Encoding::ExplicitBig => Syntax::ExplicitBig,
            _ => Syntax::ExplicitLittle,
        }
    }

    const ENCODINGS: [Encoding; 4] =
        [Encoding::ImplicitLittle, Encoding::ExplicitLittle, Encoding::ExplicitBig, Encoding::DeflatedExplicitLittle];

    fn deflate(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    /// The bytes on the wire for a built dataset.
    fn wire(encoding: Encoding, dataset: &[u8]) -> Vec<u8> {
        match encoding {
            Encoding::DeflatedExplicitLittle => deflate(dataset),
            _ => dataset.to_vec(),
        }
    }

    /// Feeds the chunks in order; the result of `finish`, and whether feed ever said done.
    /// The receiver walks every data set whole; reading a stored file back stops after the
    /// attributes.
    #[derive(Debug, Clone, Copy)]
    enum Mode {
        Whole,
        Attributes,
    }

    const MODES: [Mode; 2] = [Mode::Whole, Mode::Attributes];

    fn extractor(mode: Mode, encoding: Encoding) -> Extractor {
        match mode {
            Mode::Whole => Extractor::whole(encoding, InflateLimits::NONE),
            Mode::Attributes => Extractor::new(encoding),
        }
    }

    /// As the receiver: the whole data set.
    fn extract(encoding: Encoding, chunks: &[&[u8]]) -> (Result<Attributes, ExtractError>, bool) {
        extract_in(Mode::Whole, encoding, chunks)
    }

    fn extract_in(mode: Mode, encoding: Encoding, chunks: &[&[u8]]) -> (Result<Attributes, ExtractError>, bool) {
        let mut extractor = extractor(mode, encoding);
        let mut done = false;
        for chunk in chunks {
            match extractor.feed(chunk) {
                Ok(d) => done = d,
                Err(e) => return (Err(e), done),
            }
        }
        (extractor.finish(), done)
    }

    fn extract_one(encoding: Encoding, bytes: &[u8]) -> Result<Attributes, ExtractError> {
        extract(encoding, &[bytes]).0
    }

    fn extract_one_in(mode: Mode, encoding: Encoding, bytes: &[u8]) -> Result<Attributes, ExtractError> {
        extract_in(mode, encoding, &[bytes]).0
    }

    /// Every structure the parser must walk or skip, around the extracted attributes.
    fn sample(syntax: Syntax) -> Builder {
        let mut b = Builder::new(syntax);
        b.element(0x0008_0000, Vr::UL, &[0, 0, 0, 0]) // group length, value not checked
            .text(0x0008_0005, Vr::CS, "ISO_IR 100")
            .text(0x0008_0016, Vr::UI, "1.2.840.10008.5.1.4.1.1.2")
            .text(0x0008_0018, Vr::UI, "1.2.3.4.5")
            .text(0x0008_0020, Vr::DA, "20240131")
            .text(0x0008_0050, Vr::SH, "");
        // A defined-length sequence of one defined-length item.
        let item = b.nested(|n| {
            n.text(0x0008_1150, Vr::UI, "1.2.3").text(0x0008_1155, Vr::UI, "1.2.3.4");
        });
        let mut sequence = Vec::new();
        sequence.extend(b.nested(|n| {
            n.defined_item(&item);
        }));
        b.element(0x0008_1110, Vr::SQ, &sequence);
        // An undefined-length sequence with undefined-length items, nested two deep.
        b.open_sequence(0x0008_1115, Vr::SQ)
            .open_item()
            .text(0x0020_000E, Vr::UI, "9.9.9")
            .open_sequence(0x0008_1140, Vr::SQ)
            .open_item()
            .text(0x0008_1150, Vr::UI, "1.2.3")
            .close_item()
            .defined_item(&item)
            .close_sequence()
            .close_item()
            .open_item()
            .close_item()
            .close_sequence();
        // Private tags, a UN of undefined length (implicit VR LE inside), a large OB.
        b.text(0x0009_0010, Vr::LO, "ACME 1.0").element(0x0009_1001, Vr::OB, &[0xAB; 3000]);
        let mut un = Builder::new(Syntax::ImplicitLittle);
        un.open_item().text(0x0010_0010, Vr::PN, "Not^Top^Level").close_item();
        un.item_header(SEQUENCE_DELIMITATION, 0); // part of the UN value: implicit VR LE too
        b.header(0x0009_1002, Vr::UN, UNDEFINED_LENGTH).raw(un.bytes());
        b.boundary();
        b.text(0x0010_0010, Vr::PN, "B\u{fc}c^J\u{e9}r\u{f4}me")
            .text(0x0010_0020, Vr::LO, " P-1 ")
            .text(0x0020_000D, Vr::UI, "1.2.3.4.5.6")
            .text(0x0020_0011, Vr::IS, "3")
            .element(0x0020_0012, Vr::US, &[1, 0]);
        b
    }

    fn expected() -> Attributes {
        Attributes {
            specific_character_set: Some("ISO_IR 100".into()),
            sop_class_uid: Some("1.2.840.10008.5.1.4.1.1.2".into()),
            sop_instance_uid: Some("1.2.3.4.5".into()),
            study_date: Some("20240131".into()),
            patient_name: Some("Büc^Jérôme".into()),
            patient_id: Some("P-1".into()),
            study_instance_uid: Some("1.2.3.4.5.6".into()),
            series_number: Some("3".into()),
            ..Attributes::default()
        }
    }

    /// The sample with its Latin-1 PatientName bytes (the builder writes `text` as UTF-8).
    fn sample_bytes(syntax: Syntax) -> (Vec<u8>, Vec<usize>) {
        let b = sample(syntax);
        let utf8 = "B\u{fc}c^J\u{e9}r\u{f4}me".as_bytes();
        let at = b.bytes().windows(utf8.len()).position(|w| w == utf8).unwrap();
        let mut bytes = b.bytes().to_vec();
        // Same length in Latin-1 once padded: 13 UTF-8 bytes + pad, 10 Latin-1 bytes + 4 spaces.
        bytes[at..at + 14].copy_from_slice(b"B\xfcc^J\xe9r\xf4me    ");
        (bytes, b.boundaries)
    }

    #[test]
    fn whole_dataset_in_every_encoding() {
        for (encoding, mode) in ENCODINGS.into_iter().flat_map(|e| MODES.map(|m| (e, m))) {
            let (dataset, _) = sample_bytes(syntax_of(encoding));
            let got = extract_one_in(mode, encoding, &wire(encoding, &dataset));
            assert_eq!(got, Ok(expected()), "{encoding:?} {mode:?}");
        }
    }

    #[test]
    fn implicit_vr_labelled_explicit_is_read_as_implicit() {
        let (dataset, _) = sample_bytes(Syntax::ImplicitLittle);
        assert_eq!(extract_one(Encoding::ExplicitLittle, &dataset), Ok(expected()));
    }

    #[test]
    fn byte_by_byte_and_every_split_give_the_same_result() {
        for (encoding, mode) in ENCODINGS.into_iter().flat_map(|e| MODES.map(|m| (e, m))) {
            let (dataset, _) = sample_bytes(syntax_of(encoding));
            let bytes = wire(encoding, &dataset);
            let single: Vec<&[u8]> = bytes.chunks(1).collect();
            assert_eq!(extract_in(mode, encoding, &single).0, Ok(expected()), "{encoding:?} {mode:?} byte by byte");
            for at in 0..=bytes.len() {
                let (a, b) = bytes.split_at(at);
                let got = extract_in(mode, encoding, &[a, b]).0;
                assert_eq!(got, Ok(expected()), "{encoding:?} {mode:?} split at {at}");
            }
        }
    }

    #[test]
    fn truncation_is_an_error_except_between_top_level_elements() {
        for encoding in [Encoding::ImplicitLittle, Encoding::ExplicitLittle, Encoding::ExplicitBig] {
            let (dataset, boundaries) = sample_bytes(syntax_of(encoding));
            for (end, mode) in (0..dataset.len()).flat_map(|end| MODES.map(|m| (end, m))) {
                let result = extract_one_in(mode, encoding, &dataset[..end]);
                assert_eq!(result.is_ok(), boundaries.contains(&end), "{encoding:?} {mode:?} cut at {end}: {result:?}");
            }
        }
    }

    #[test]
    fn truncated_deflate_stream_is_an_error() {
        let (dataset, _) = sample_bytes(Syntax::ExplicitLittle);
        let deflated = deflate(&dataset);
        let result = extract_one(Encoding::DeflatedExplicitLittle, &deflated[..deflated.len() / 2]);
        assert!(result.is_err(), "{result:?}");
    }

    #[test]
    fn corrupt_deflate_stream_is_an_error() {
        // Block type 3 is reserved (RFC 1951 §3.2.3).
        let result = extract_one(Encoding::DeflatedExplicitLittle, &[0xFF; 16]);
        assert_eq!(result, Err(ExtractError::Malformed("deflated dataset is corrupt".into())));
    }

    #[test]
    fn reading_attributes_only_stops_after_the_last_extracted_tag() {
        for encoding in [Encoding::ImplicitLittle, Encoding::ExplicitLittle, Encoding::ExplicitBig] {
            let mut b = Builder::new(syntax_of(encoding));
            b.text(0x0008_0018, Vr::UI, "1.2").text(LAST_EXTRACTED_TAG, Vr::IS, "12");
            let mut extractor = extractor(Mode::Attributes, encoding);
            assert_eq!(extractor.feed(b.bytes()), Ok(true));
            assert_eq!(extractor.feed(b"garbage that is never parsed"), Ok(true));
            let attributes = extractor.finish().unwrap();
            assert_eq!(attributes.number_of_series_related_instances.as_deref(), Some("12"));
            assert_eq!(attributes.sop_instance_uid.as_deref(), Some("1.2"));
        }
    }

    #[test]
    fn reading_attributes_only_stops_at_the_first_tag_past_the_last_one() {
        let mut b = Builder::new(Syntax::ExplicitLittle);
        b.text(0x0010_0020, Vr::LO, "P");
        b.raw(&[0x28, 0x00, 0x10, 0x00]); // header cut after the tag (0028,0010): no more is needed
        let (result, done) = extract_in(Mode::Attributes, Encoding::ExplicitLittle, &[b.bytes(), b"\xFF\xFF\xFF"]);
        assert!(done);
        assert_eq!(result.unwrap().patient_id.as_deref(), Some("P"));
    }

    #[test]
    fn reading_attributes_only_stops_inflating_once_done() {
        let mut b = Builder::new(Syntax::ExplicitLittle);
        b.text(0x0008_0018, Vr::UI, "1.2").element(PIXEL_DATA, Vr::OW, &[7; 1 << 20]);
        let deflated = deflate(b.bytes());
        let mut extractor = extractor(Mode::Attributes, Encoding::DeflatedExplicitLittle);
        assert_eq!(extractor.feed(&deflated[..deflated.len() / 2]), Ok(true));
        let inflated = extractor.inflater.as_ref().unwrap().total_out();
        assert!(inflated <= 64 * 1024, "inflated {inflated} bytes");
        assert_eq!(extractor.feed(&deflated[deflated.len() / 2..]), Ok(true));
        assert_eq!(extractor.finish().unwrap().sop_instance_uid.as_deref(), Some("1.2"));
    }

    /// What follows the extracted attributes in an image, well-formed: a defined-length
    /// sequence of defined-length items (one empty, one holding an undefined-length sequence),
    /// encapsulated pixel data with its offset table and a fragment, trailing padding.
    fn sample_with_tail(syntax: Syntax) -> (Vec<u8>, Vec<usize>) {
        let (mut bytes, _) = sample_bytes(syntax);
        let mut b = sample(syntax);
        let nested = b.nested(|n| {
            n.text(0x0008_0100, Vr::SH, "CODE").open_sequence(0x0040_A730, Vr::SQ).open_item();
            n.text(0x0008_0102, Vr::SH, "DCM").close_item().close_sequence();
        });
        let items = b.nested(|n| {
            n.defined_item(&nested).defined_item(&[]);
        });
        b.element(0x0040_0275, Vr::SQ, &items);
        b.open_sequence(PIXEL_DATA, Vr::OB).defined_item(&[]).defined_item(&[0xFF; 100]).close_sequence();
        b.element(0xFFFC_FFFC, Vr::OB, &[0; 4]);
        bytes.extend_from_slice(&b.bytes()[bytes.len()..]);
        (bytes, b.boundaries)
    }

    #[test]
    fn the_whole_data_set_is_walked_and_cut_anywhere_inside_is_an_error() {
        for encoding in [Encoding::ImplicitLittle, Encoding::ExplicitLittle, Encoding::ExplicitBig] {
            let (dataset, boundaries) = sample_with_tail(syntax_of(encoding));
            assert_eq!(extract_one(encoding, &dataset), Ok(expected()), "{encoding:?}");
            for end in 0..dataset.len() {
                let result = extract_one(encoding, &dataset[..end]);
                assert_eq!(result.is_ok(), boundaries.contains(&end), "{encoding:?} cut at {end}: {result:?}");
            }
        }
    }

    #[test]
    fn a_deflated_data_set_is_inflated_to_its_end() {
        let (dataset, _) = sample_with_tail(Syntax::ExplicitLittle);
        let cut = dataset.len() - 2; // inside the value of the trailing padding
        let result = extract_one(Encoding::DeflatedExplicitLittle, &deflate(&dataset[..cut]));
        assert_eq!(result, Err(ExtractError::Malformed("dataset ends inside an element value".into())));
        assert_eq!(extract_one(Encoding::DeflatedExplicitLittle, &deflate(&dataset)), Ok(expected()));
    }

    #[test]
    fn inflating_by_budget_gives_the_same_result() {
        let (dataset, _) = sample_with_tail(Syntax::ExplicitLittle);
        let mut padded = dataset.clone();
        // A large value, so that budgets cut through it.
        let mut b = Builder::new(Syntax::ExplicitLittle);
        b.element(0xFFFC_FFFC, Vr::OB, &vec![0; 3 << 20]);
        padded.extend(b.bytes());
        let deflated = deflate(&padded);
        for budget in [1, 1000, 1 << 20] {
            let mut extractor = Extractor::whole(Encoding::DeflatedExplicitLittle, InflateLimits::NONE);
            for chunk in deflated.chunks(777) {
                let mut at = 0;
                loop {
                    let fed = extractor.feed_within(&chunk[at..], budget).unwrap();
                    at += fed.consumed;
                    if !fed.more {
                        break;
                    }
                }
                assert_eq!(at, chunk.len());
            }
            assert_eq!(extractor.finish(), Ok(expected()), "budget {budget}");
        }
    }

    #[test]
    fn inflating_past_a_bound_is_over_the_limit() {
        let mut b = Builder::new(Syntax::ExplicitLittle);
        b.text(0x0008_0018, Vr::UI, "1.2").element(0x0009_1000, Vr::OB, &vec![0; 4 << 20]);
        let deflated = deflate(b.bytes());
        let limits = InflateLimits { max_size: 2 << 20, max_ratio: u64::MAX };
        let mut extractor = Extractor::whole(Encoding::DeflatedExplicitLittle, limits);
        let error = extractor.feed(&deflated).unwrap_err();
        assert_eq!(error, ExtractError::OverLimit(InflateError::TooLarge { max_mib: 2 }));
        assert_eq!(extractor.finish(), Err(error), "sticky");
        let limits = InflateLimits { max_size: u64::MAX, max_ratio: 50 };
        let error = extract_one_with(limits, &deflated).unwrap_err();
        assert_eq!(error, ExtractError::OverLimit(InflateError::RatioTooHigh { max_ratio: 50 }));
        assert!(extract_one_with(InflateLimits { max_size: 5 << 20, max_ratio: 5000 }, &deflated).is_ok());
    }

    fn extract_one_with(limits: InflateLimits, deflated: &[u8]) -> Result<Attributes, ExtractError> {
        let mut extractor = Extractor::whole(Encoding::DeflatedExplicitLittle, limits);
        extractor.feed(deflated)?;
        extractor.finish()
    }

    /// Explicit VR little endian: the extracted attributes, then `tail`.
    fn with_tail(tail: impl FnOnce(&mut Builder)) -> Result<Attributes, ExtractError> {
        let mut b = Builder::new(Syntax::ExplicitLittle);
        b.text(0x0008_0018, Vr::UI, "1.2").text(0x0020_000D, Vr::UI, "1.2.3");
        tail(&mut b);
        extract_one(Encoding::ExplicitLittle, b.bytes())
    }

    fn malformed(message: &str) -> Result<Attributes, ExtractError> {
        Err(ExtractError::Malformed(message.into()))
    }

    /// The extracted attributes, a defined-length sequence of what `items` builds, Pixel Data.
    fn with_sequence_of(items: impl FnOnce(&mut Builder)) -> Result<Attributes, ExtractError> {
        with_tail(|b| {
            let items = b.nested(items);
            b.element(0x0040_0275, Vr::SQ, &items).element(PIXEL_DATA, Vr::OB, &[0; 100]);
        })
    }

    #[test]
    fn an_item_longer_than_its_sequence_is_an_error() {
        let got = with_sequence_of(|n| {
            n.item_header(ITEM, 100);
            n.text(0x0008_0100, Vr::SH, "CODE");
        });
        assert_eq!(got, malformed("item runs past the end of its sequence"));
    }

    #[test]
    fn an_element_longer_than_its_item_is_an_error() {
        let mut element = Builder::new(Syntax::ExplicitLittle);
        element.text(0x0008_0100, Vr::SH, "CODE");
        let cut = &element.bytes()[..element.bytes().len() - 2];
        let got = with_sequence_of(|n| {
            n.defined_item(cut);
        });
        assert_eq!(got, malformed("(0008,0100) runs past the end of its item"));
    }

    #[test]
    fn a_header_across_the_end_of_its_item_is_an_error() {
        let got = with_sequence_of(|n| {
            n.defined_item(&[0x08, 0x00, 0x00, 0x01, b'S', b'H']);
        });
        assert_eq!(got, malformed("a header runs past the end of its item"));
    }

    #[test]
    fn an_undefined_length_item_must_end_before_its_defined_length_sequence() {
        let got = with_sequence_of(|n| {
            n.open_item().text(0x0008_0100, Vr::SH, "CODE");
        });
        assert_eq!(got, malformed("item not delimited within its sequence"));
    }

    #[test]
    fn a_sequence_delimiter_ending_a_defined_length_sequence_is_tolerated() {
        let got = with_sequence_of(|n| {
            n.defined_item(&[]);
            n.item_header(SEQUENCE_DELIMITATION, 0);
        });
        assert_eq!(got.unwrap().sop_instance_uid.as_deref(), Some("1.2"));
        // The length still counts: an item after the delimiter past the end is an error.
        let got = with_sequence_of(|n| {
            n.item_header(SEQUENCE_DELIMITATION, 0);
            n.item_header(ITEM, 100);
        });
        assert_eq!(got, malformed("item runs past the end of its sequence"));
    }

    #[test]
    fn a_pixel_data_fragment_past_the_end_is_truncation() {
        let got = with_tail(|b| {
            b.open_sequence(PIXEL_DATA, Vr::OB).defined_item(&[]);
            b.item_header(ITEM, 1000);
            b.raw(&[0xFF; 10]);
        });
        assert_eq!(got, malformed("dataset ends inside an element value"));
    }

    #[test]
    fn implicit_vr_defined_length_values_are_skipped_whole() {
        // Without a data dictionary nothing says (0040,0275) is a sequence: its content is
        // not walked, only its length counted.
        let mut b = Builder::new(Syntax::ImplicitLittle);
        b.text(0x0008_0018, Vr::UI, "1.2").element(0x0040_0275, Vr::SQ, b"not items at all");
        let got = extract_one(Encoding::ImplicitLittle, b.bytes()).unwrap();
        assert_eq!(got.sop_instance_uid.as_deref(), Some("1.2"));
    }

    #[test]
    fn large_value_before_the_attributes_is_skipped_in_any_chunking() {
        for encoding in ENCODINGS {
            let mut b = Builder::new(syntax_of(encoding));
            b.text(0x0007_0010, Vr::LO, "ACME").element(0x0007_1000, Vr::OB, &[0x55; 300_000]);
            b.text(0x0010_0020, Vr::LO, "P1");
            let bytes = wire(encoding, b.bytes());
            for size in [1, 7, 4096, 1 << 20] {
                let chunks: Vec<&[u8]> = bytes.chunks(size).collect();
                let got = extract(encoding, &chunks).0.unwrap();
                assert_eq!(got.patient_id.as_deref(), Some("P1"), "{encoding:?} chunk {size}");
            }
        }
    }

    #[test]
    fn value_over_64_kib_is_an_error_naming_the_attribute() {
        for encoding in ENCODINGS {
            let mut b = Builder::new(syntax_of(encoding));
            // PN has a 2-byte length in explicit VR: UN carries the long value there.
            let vr = if encoding == Encoding::ImplicitLittle { Vr::PN } else { Vr::UN };
            b.element(0x0010_0010, vr, &vec![b'A'; 70 * 1024]);
            let error = extract_one(encoding, &wire(encoding, b.bytes())).unwrap_err();
            assert!(error.to_string().contains("PatientName"), "{error}");
            assert!(error.to_string().len() <= 64);
        }
    }

    #[test]
    fn empty_values_are_none() {
        let mut b = Builder::new(Syntax::ExplicitLittle);
        b.text(0x0008_0050, Vr::SH, "").text(0x0008_0060, Vr::CS, "  ").text(0x0010_0020, Vr::LO, "\0");
        assert_eq!(extract_one(Encoding::ExplicitLittle, b.bytes()), Ok(Attributes::default()));
    }

    #[test]
    fn uids_are_the_extracted_attributes_named_uid() {
        for (tag, keyword) in crate::dicom::attributes::EXTRACTED {
            assert_eq!(is_uid(*tag), keyword.ends_with("UID"), "{keyword}");
        }
    }

    #[test]
    fn uid_padding_is_trimmed() {
        let mut b = Builder::new(Syntax::ImplicitLittle);
        b.element(0x0008_0018, Vr::UI, b"1.2.3\0").element(0x0020_000E, Vr::UI, b"1.2 ");
        let got = extract_one(Encoding::ImplicitLittle, b.bytes()).unwrap();
        assert_eq!(got.sop_instance_uid.as_deref(), Some("1.2.3"));
        assert_eq!(got.series_instance_uid.as_deref(), Some("1.2"));
    }

    #[test]
    fn multi_byte_character_set_applies_to_later_values() {
        let mut b = Builder::new(Syntax::ExplicitLittle);
        b.text(0x0008_0005, Vr::CS, "\\ISO 2022 IR 149").element(
            0x0010_0010,
            Vr::PN,
            b"\x1b$)C\xb1\xe8\xc8\xf1\xc1\xdf\x1b(B ",
        );
        let got = extract_one(Encoding::ExplicitLittle, b.bytes()).unwrap();
        assert_eq!(got.patient_name.as_deref(), Some("김희중"));
        assert_eq!(got.specific_character_set.as_deref(), Some("\\ISO 2022 IR 149"));
    }

    #[test]
    fn tags_going_down_at_top_level_are_tolerated() {
        let mut b = Builder::new(Syntax::ExplicitLittle);
        b.text(0x0010_0020, Vr::LO, "P").text(0x0008_0060, Vr::CS, "CT");
        let got = extract_one(Encoding::ExplicitLittle, b.bytes()).unwrap();
        assert_eq!((got.patient_id.as_deref(), got.modality.as_deref()), (Some("P"), Some("CT")));
    }

    #[test]
    fn encapsulated_pixel_data_inside_a_sequence_is_skipped() {
        let mut b = Builder::new(Syntax::ExplicitLittle);
        b.open_sequence(0x0008_1115, Vr::SQ).open_item();
        b.header(PIXEL_DATA, Vr::OB, UNDEFINED_LENGTH);
        b.defined_item(&[]).defined_item(&[0xFE, 0xFF, 0x00, 0xE0]); // offset table, fragment
        b.item_header(SEQUENCE_DELIMITATION, 0);
        b.close_item().close_sequence().text(0x0010_0020, Vr::LO, "P");
        let got = extract_one(Encoding::ExplicitLittle, b.bytes()).unwrap();
        assert_eq!(got.patient_id.as_deref(), Some("P"));
    }

    #[test]
    fn an_element_without_a_vr_in_explicit_vr_is_read_as_implicit_vr() {
        // Implicit VR items in an explicit VR sequence, as some writers make them.
        let mut implicit = Builder::new(Syntax::ImplicitLittle);
        implicit.text(0x0008_0100, Vr::SH, "CODE").text(0x0008_0102, Vr::SH, "DCM");
        let mut b = Builder::new(Syntax::ExplicitLittle);
        b.text(0x0008_0018, Vr::UI, "1.2");
        let items = b.nested(|n| {
            n.defined_item(implicit.bytes());
        });
        b.element(0x0040_0275, Vr::SQ, &items).open_sequence(0x0040_0280, Vr::SQ).open_item();
        b.raw(implicit.bytes());
        b.close_item().close_sequence().text(0x0010_0020, Vr::LO, "P");
        let got = extract_one(Encoding::ExplicitLittle, b.bytes()).unwrap();
        assert_eq!((got.sop_instance_uid.as_deref(), got.patient_id.as_deref()), (Some("1.2"), Some("P")));
    }

    #[test]
    fn an_unknown_vr_has_a_two_byte_length() {
        let dataset = b"\x08\x00\x18\x00UI\x04\x001.2\x00\x09\x00\x10\x00XX\x02\x00ab\x10\x00\x20\x00LO\x02\x00P ";
        let got = extract_one(Encoding::ExplicitLittle, dataset).unwrap();
        assert_eq!(got.patient_id.as_deref(), Some("P"));
    }

    #[test]
    fn element_in_a_sequence_where_an_item_must_be_is_an_error() {
        let mut b = Builder::new(Syntax::ExplicitLittle);
        b.open_sequence(0x0008_1115, Vr::SQ).text(0x0008_1150, Vr::UI, "1.2");
        assert!(extract_one(Encoding::ExplicitLittle, b.bytes()).is_err());
    }

    #[test]
    fn nesting_is_bounded() {
        let mut b = Builder::new(Syntax::ImplicitLittle);
        for _ in 0..65 {
            b.open_sequence(0x0008_1115, Vr::SQ).open_item();
        }
        let error = extract_one(Encoding::ImplicitLittle, b.bytes()).unwrap_err();
        assert_eq!(error.to_string(), "sequences nested more than 64 deep");
        let mut b = Builder::new(Syntax::ImplicitLittle);
        for _ in 0..64 {
            b.open_sequence(0x0008_1115, Vr::SQ).open_item();
        }
        for _ in 0..64 {
            b.close_item().close_sequence();
        }
        assert_eq!(extract_one(Encoding::ImplicitLittle, b.bytes()), Ok(Attributes::default()));
    }

    #[test]
    fn errors_are_sticky() {
        let mut extractor = extractor(Mode::Whole, Encoding::ExplicitLittle);
        let bad = b"\xFE\xFF\x00\xE0\x00\x00\x00\x00"; // an item outside a sequence
        let error = extractor.feed(bad).unwrap_err();
        assert_eq!(extractor.feed(b""), Err(error.clone()));
        assert_eq!(extractor.finish(), Err(error));
    }

    #[test]
    fn memory_stays_bounded() {
        let mut b = Builder::new(Syntax::ExplicitLittle);
        b.element(0x0010_0010, Vr::UN, &vec![b'A'; 64 * 1024]);
        for _ in 0..10 {
            b.element(0x0009_1000, Vr::OB, &[0; 100_000]);
        }
        let mut extractor = extractor(Mode::Whole, Encoding::ExplicitLittle);
        for chunk in b.bytes().chunks(999) {
            extractor.feed(chunk).unwrap();
            assert!(extractor.parser.value.capacity() <= MAX_VALUE_LENGTH as usize);
        }
    }

    fn arbitrary_encoding() -> impl Strategy<Value = Encoding> {
        prop::sample::select(ENCODINGS.to_vec())
    }

    /// Splits bytes at the given cut points (taken modulo the length).
    fn split<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let mut chunks = Vec::new();
        let mut start = 0;
        for cut in cuts.into_iter().chain([bytes.len()]) {
            chunks.push(&bytes[start..cut]);
            start = cut;
        }
        chunks
    }

    proptest! {
        #[test]
        fn random_chunking_gives_the_same_result(
            encoding in arbitrary_encoding(),
            cuts in prop::collection::vec(any::<usize>(), 0..40),
        ) {
            let (dataset, _) = sample_bytes(syntax_of(encoding));
            let bytes = wire(encoding, &dataset);
            for mode in MODES {
                prop_assert_eq!(extract_in(mode, encoding, &split(&bytes, &cuts)).0, Ok(expected()));
            }
        }

        #[test]
        fn random_bytes_never_panic(
            encoding in arbitrary_encoding(),
            bytes in prop::collection::vec(any::<u8>(), 0..2000),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let _ = extract(encoding, &split(&bytes, &cuts));
        }

        #[test]
        fn mutated_datasets_never_panic(
            encoding in arbitrary_encoding(),
            mutations in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let (dataset, _) = sample_bytes(syntax_of(encoding));
            let mut bytes = wire(encoding, &dataset);
            for (at, byte) in mutations {
                let len = bytes.len();
                bytes[at % len] = byte;
            }
            let _ = extract(encoding, &split(&bytes, &cuts));
        }
    }
}
