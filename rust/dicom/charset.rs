//! Decoding text values per Specific Character Set (0008,0005): PS3.3 §C.12.1.1.2 (defined
//! terms) and PS3.5 §6.1 (character repertoires, ISO 2022 code extensions).
//!
//! Decoding never fails: a receiver must not reject an instance for its text, so unknown terms
//! fall back to the default repertoire and invalid bytes become U+FFFD.

use std::ops::RangeInclusive;

use encoding_rs::Encoding;

const ESC: u8 = 0x1B;

/// Decodes a text value per the dataset's SpecificCharacterSet (0008,0005) value (the raw,
/// possibly multi-valued string, e.g. "ISO_IR 100" or "\\ISO 2022 IR 87"); None = default repertoire.
pub fn decode_text(bytes: &[u8], specific_character_set: Option<&str>) -> String {
    // Every repertoire DICOM allows is ASCII-compatible, and without ESC no code extension
    // can have switched to a multi-byte set (PS3.5 §6.1.2.5.1): plain ASCII is the same text
    // under any Specific Character Set.
    if bytes.iter().all(|&b| b < 0x80 && b != ESC) {
        return bytes.iter().map(|&b| char::from(b)).collect();
    }
    // Value 1 is the repertoire in effect at the start of every value (PS3.5 §6.1.2.5.3);
    // the others only matter through the escape sequences that invoke them.
    let first = specific_character_set.and_then(|terms| terms.split('\\').next());
    let repertoire = first.map_or(Repertoire::DEFAULT, Repertoire::of_term);
    match repertoire {
        Repertoire::Whole(encoding) => decode_lossy(bytes, encoding),
        Repertoire::Iso2022(initial) => decode_iso2022(bytes, initial),
    }
}

/// How a value is decoded, from value 1 of Specific Character Set.
enum Repertoire {
    /// A character set without code extensions (UTF-8, GB18030, GBK: PS3.3 table C.12-5).
    Whole(&'static Encoding),
    /// A set that may be switched with ISO 2022 escape sequences, starting in this state.
    Iso2022(Designation),
}

impl Repertoire {
    /// ISO-IR 6, plus Latin-1 for bytes it lacks rather than failing.
    const DEFAULT: Self = Self::Iso2022(Designation::DEFAULT);

    /// The repertoire of a defined term of PS3.3 tables C.12-2 to C.12-5. Spelling variants
    /// ("ISO IR 100", "iso-ir 100", and "ISO_IR" for "ISO 2022 IR" or the reverse) are
    /// accepted; an unknown term means the default repertoire.
    fn of_term(term: &str) -> Self {
        let normalized: String =
            term.chars().filter(|c| !matches!(c, ' ' | '_' | '-')).map(|c| c.to_ascii_uppercase()).collect();
        let name = normalized.strip_prefix("ISO2022").or_else(|| normalized.strip_prefix("ISO")).unwrap_or(&normalized);
        let g1 = |set| Self::Iso2022(Designation { g0: G0::Ascii, g1: set });
        match name.strip_prefix("IR").unwrap_or(name) {
            "192" => Self::Whole(encoding_rs::UTF_8),
            "GB18030" => Self::Whole(encoding_rs::GB18030),
            "GBK" => Self::Whole(encoding_rs::GBK),
            "100" => g1(G1::Latin1),
            "101" => g1(G1::SingleByte(encoding_rs::ISO_8859_2)),
            "109" => g1(G1::SingleByte(encoding_rs::ISO_8859_3)),
            "110" => g1(G1::SingleByte(encoding_rs::ISO_8859_4)),
            "144" => g1(G1::SingleByte(encoding_rs::ISO_8859_5)),
            "127" => g1(G1::SingleByte(encoding_rs::ISO_8859_6)),
            "126" => g1(G1::SingleByte(encoding_rs::ISO_8859_7)),
            "138" => g1(G1::SingleByte(encoding_rs::ISO_8859_8)),
            "148" => g1(G1::SingleByte(LATIN_5)),
            "166" => g1(G1::SingleByte(THAI)),
            "13" => g1(G1::Katakana),
            "149" => g1(G1::KsX1001),
            "58" => g1(G1::Gb2312),
            // ISO-IR 6; and ISO 2022 IR 87 and 159, G0 sets that only an escape sequence
            // invokes (PS3.3 §C.12.1.1.2: they cannot be value 1).
            _ => Self::DEFAULT,
        }
    }
}

/// ISO 8859-9 (Latin alphabet No. 5). encoding_rs follows the WHATWG Encoding Standard,
/// which decodes it as its superset windows-1254; they differ only at 0x80..=0x9F, which
/// `decode_iso2022` maps to the C1 controls itself.
const LATIN_5: &Encoding = encoding_rs::WINDOWS_1254;
/// TIS 620-2533 (Thai), likewise decoded through its superset windows-874.
const THAI: &Encoding = encoding_rs::WINDOWS_874;

/// The graphic set invoked in the low half (GL, 0x21..=0x7E).
#[derive(Clone, Copy)]
enum G0 {
    /// ISO 646 (ISO-IR 6), and JIS X 0201 Romaji (ISO-IR 14), which DICOM readers treat as
    /// ASCII so that 0x5C stays the value delimiter.
    Ascii,
    /// JIS X 0208 (ISO-IR 87), two bytes per character.
    JisX0208,
    /// JIS X 0212 (ISO-IR 159), two bytes per character.
    JisX0212,
}

/// The graphic set invoked in the high half (GR, 0xA0..=0xFF).
#[derive(Clone, Copy)]
enum G1 {
    /// ISO 8859-1; also the lenient reading of high bytes in the default repertoire.
    Latin1,
    /// One of the other ISO 8859 parts.
    SingleByte(&'static Encoding),
    /// JIS X 0201 Katakana (ISO-IR 13).
    Katakana,
    /// KS X 1001 (ISO-IR 149), two bytes per character.
    KsX1001,
    /// GB 2312 (ISO-IR 58), two bytes per character.
    Gb2312,
}

/// The sets designated to G0 and G1 at some point of a value.
#[derive(Clone, Copy)]
struct Designation {
    g0: G0,
    g1: G1,
}

impl Designation {
    const DEFAULT: Self = Self { g0: G0::Ascii, g1: G1::Latin1 };

    /// Applies the escape sequence made of these intermediate and final bytes (PS3.3 tables
    /// C.12-3 and C.12-4). Returns false for a sequence DICOM does not define.
    fn apply_escape(&mut self, sequence: &[u8]) -> bool {
        match sequence {
            b"(B" | b"(J" => self.g0 = G0::Ascii,
            b"$B" | b"$@" => self.g0 = G0::JisX0208,
            b"$(D" => self.g0 = G0::JisX0212,
            b")I" => self.g1 = G1::Katakana,
            b"$)C" => self.g1 = G1::KsX1001,
            b"$)A" => self.g1 = G1::Gb2312,
            b"-A" => self.g1 = G1::Latin1,
            b"-B" => self.g1 = G1::SingleByte(encoding_rs::ISO_8859_2),
            b"-C" => self.g1 = G1::SingleByte(encoding_rs::ISO_8859_3),
            b"-D" => self.g1 = G1::SingleByte(encoding_rs::ISO_8859_4),
            b"-L" => self.g1 = G1::SingleByte(encoding_rs::ISO_8859_5),
            b"-G" => self.g1 = G1::SingleByte(encoding_rs::ISO_8859_6),
            b"-F" => self.g1 = G1::SingleByte(encoding_rs::ISO_8859_7),
            b"-H" => self.g1 = G1::SingleByte(encoding_rs::ISO_8859_8),
            b"-M" => self.g1 = G1::SingleByte(LATIN_5),
            b"-T" => self.g1 = G1::SingleByte(THAI),
            _ => return false,
        }
        true
    }
}

/// Decodes a value that may use ISO 2022 code extensions (PS3.5 §6.1.2.5), starting with
/// the sets of value 1 of Specific Character Set.
///
/// Each byte is re-encoded into the EUC form of its set (JIS X 0208 and 0212 into EUC-JP,
/// KS X 1001 into EUC-KR, GB 2312 into GBK), and runs of one form are decoded together.
fn decode_iso2022(bytes: &[u8], initial: Designation) -> String {
    let mut text = Text::default();
    let mut sets = initial;
    let mut rest = bytes;
    while let [b, ..] = *rest {
        let used = match b {
            ESC => 1 + escape_sequence(&rest[1..], &mut sets),
            // C0 controls, SPACE and DELETE are the same in every set; a value's delimiters
            // and line ends are among them.
            0x00..=0x20 | 0x7F => text.push_ascii(b),
            0x21..=0x7E => match sets.g0 {
                G0::Ascii => text.push_ascii(b),
                G0::JisX0208 => text.push_pair(rest, GL, &[], encoding_rs::EUC_JP),
                G0::JisX0212 => text.push_pair(rest, GL, &[0x8F], encoding_rs::EUC_JP),
            },
            // C1 controls: never part of a G1 set.
            0x80..=0x9F => text.push_char(char::from(b)),
            0xA0..=0xFF => match sets.g1 {
                G1::Latin1 => text.push_char(char::from(b)),
                G1::SingleByte(encoding) => text.push_byte(b, encoding),
                G1::Katakana => text.push_char(katakana(b)),
                G1::KsX1001 => text.push_pair(rest, GR, &[], encoding_rs::EUC_KR),
                G1::Gb2312 => text.push_pair(rest, GR, &[], encoding_rs::GBK),
            },
        };
        rest = &rest[used..];
    }
    text.finish()
}

/// The bytes of a 94-character set's characters invoked in GL and GR.
const GL: RangeInclusive<u8> = 0x21..=0x7E;
const GR: RangeInclusive<u8> = 0xA1..=0xFE;

/// Reads an escape sequence (intermediate bytes 0x20..=0x2F, then a final byte 0x30..=0x7E)
/// from the bytes after ESC and applies it; returns how many bytes it took. An unknown or
/// truncated sequence is dropped and leaves the sets as they were.
fn escape_sequence(after_esc: &[u8], sets: &mut Designation) -> usize {
    let intermediates = after_esc.iter().take_while(|b| (0x20..=0x2F).contains(*b)).count();
    match after_esc.get(intermediates) {
        Some(0x30..=0x7E) => {
            sets.apply_escape(&after_esc[..=intermediates]);
            intermediates + 1
        }
        _ => intermediates,
    }
}

/// JIS X 0201 Katakana 0xA1..=0xDF are the halfwidth forms U+FF61..=U+FF9F.
fn katakana(b: u8) -> char {
    match b {
        0xA1..=0xDF => char::from_u32(0xFF61 + u32::from(b - 0xA1)).unwrap_or('\u{FFFD}'),
        _ => '\u{FFFD}',
    }
}

/// Text being decoded: finished characters plus a run of bytes in one encoding still to be
/// decoded. Decoding runs rather than characters keeps calls into encoding_rs few.
#[derive(Default)]
struct Text {
    done: String,
    run: Vec<u8>,
    run_encoding: Option<&'static Encoding>,
}

impl Text {
    // Each push returns how many input bytes it used.

    /// ASCII decodes the same in every encoding a run can have.
    fn push_ascii(&mut self, b: u8) -> usize {
        match self.run_encoding {
            Some(_) => self.run.push(b),
            None => self.done.push(char::from(b)),
        }
        1
    }

    fn push_char(&mut self, c: char) -> usize {
        self.flush();
        self.done.push(c);
        1
    }

    fn push_byte(&mut self, b: u8, encoding: &'static Encoding) -> usize {
        self.switch_to(encoding);
        self.run.push(b);
        1
    }

    /// Pushes the two-byte character at the start of `bytes`, re-encoded as `prefix` and the
    /// two bytes with their high bit set, if both are in `range`; else U+FFFD for the first
    /// byte.
    fn push_pair(
        &mut self,
        bytes: &[u8],
        range: RangeInclusive<u8>,
        prefix: &[u8],
        encoding: &'static Encoding,
    ) -> usize {
        match bytes {
            [first, second, ..] if range.contains(first) && range.contains(second) => {
                self.switch_to(encoding);
                self.run.extend_from_slice(prefix);
                self.run.extend_from_slice(&[first | 0x80, second | 0x80]);
                2
            }
            _ => self.push_char('\u{FFFD}'),
        }
    }

    fn switch_to(&mut self, encoding: &'static Encoding) {
        if self.run_encoding != Some(encoding) {
            self.flush();
            self.run_encoding = Some(encoding);
        }
    }

    fn flush(&mut self) {
        if let Some(encoding) = self.run_encoding.take() {
            self.done.push_str(&decode_lossy(&self.run, encoding));
            self.run.clear();
        }
    }

    fn finish(mut self) -> String {
        self.flush();
        self.done
    }
}

fn decode_lossy(bytes: &[u8], encoding: &'static Encoding) -> String {
    encoding.decode_without_bom_handling(bytes).0.into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_is_ascii_under_any_character_set() {
        for scs in [None, Some("ISO_IR 192"), Some("\\ISO 2022 IR 87"), Some("GB18030")] {
            assert_eq!(decode_text(b"Doe^John", scs), "Doe^John");
        }
    }

    #[test]
    fn default_repertoire_reads_high_bytes_as_latin1() {
        assert_eq!(decode_text(b"J\xe9r\xf4me", None), "Jérôme");
        assert_eq!(decode_text(b"J\xe9r\xf4me", Some("")), "Jérôme");
        assert_eq!(decode_text(b"x\xe9", Some("NOT A TERM")), "xé");
    }

    #[test]
    fn latin1_is_iso_8859_1_not_windows_1252() {
        // 0x80 is a C1 control in ISO 8859-1, the euro sign in windows-1252.
        assert_eq!(decode_text(b"\x80\xe4", Some("ISO_IR 100")), "\u{80}ä");
        // Same for Latin-5, which encoding_rs reads as windows-1254.
        assert_eq!(decode_text(b"\x80\xdd", Some("ISO_IR 148")), "\u{80}İ");
    }

    // Bytes and expected strings below are from pydicom's charset_files (PatientName) and
    // pydicom 3's decoding of them.
    #[test]
    fn single_byte_sets() {
        let cases: [(&[u8], &str, &str); 6] = [
            (b"Buc^J\xe9r\xf4me", "ISO_IR 100", "Buc^Jérôme"),
            (b"\xc4neas^R\xfcdiger", "ISO_IR 100", "Äneas^Rüdiger"),
            (b"\xc4\xe9\xef\xed\xf5\xf3\xe9\xef\xf2", "ISO_IR 126", "Διονυσιος"),
            (b"\xe2\xc8\xc7\xe6\xea^\xe4\xe6\xd2\xc7\xd1", "ISO_IR 127", "قباني^لنزار"),
            (b"\xbb\xee\xdace\xdc\xd1yp\xd3", "ISO_IR 144", "Люкceмбypг"),
            (b"\xf9\xf8\xe5\xef^\xe3\xe1\xe5\xf8\xe4", "ISO_IR 138", "שרון^דבורה"),
        ];
        for (bytes, scs, expected) in cases {
            assert_eq!(decode_text(bytes, Some(scs)), expected, "{scs}");
        }
        // Not in the corpus; checked against Python's codecs.
        assert_eq!(decode_text(b"\xb1", Some("ISO_IR 101")), "ą");
        assert_eq!(decode_text(b"\xa1\xe1", Some("ISO_IR 166")), "กแ");
        assert_eq!(decode_text(b"\xd0", Some("ISO_IR 148")), "Ğ");
    }

    #[test]
    fn unicode_and_chinese_sets() {
        let x1 = b"Wang^XiaoDong=\xe7\x8e\x8b^\xe5\xb0\x8f\xe6\x9d\xb1=";
        assert_eq!(decode_text(x1, Some("ISO_IR 192")), "Wang^XiaoDong=王^小東="); // chrX1
        let x2 = b"Wang^XiaoDong=\xcd\xf5^\xd0\xa1\xb6\xab=";
        assert_eq!(decode_text(x2, Some("GB18030")), "Wang^XiaoDong=王^小东="); // chrX2
        assert_eq!(decode_text(b"\xcd\xf5", Some("GBK")), "王");
        assert_eq!(decode_text(b"\xff\xfe", Some("ISO_IR 192")), "\u{FFFD}\u{FFFD}");
    }

    #[test]
    fn japanese_with_code_extensions() {
        // chrH31: value 1 empty (ISO-IR 6), JIS X 0208 invoked with ESC $ B.
        let h31 = b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B";
        assert_eq!(decode_text(h31, Some("\\ISO 2022 IR 87")), "Yamada^Tarou=山田^太郎=やまだ^たろう");
        // chrH32: value 1 is JIS X 0201 (katakana in G1, romaji in G0 via ESC ( J).
        let h32 =
            b"\xd4\xcf\xc0\xde^\xc0\xdb\xb3=\x1b$B;3ED\x1b(J^\x1b$BB@O:\x1b(J=\x1b$B$d$^$@\x1b(J^\x1b$B$?$m$&\x1b(J";
        assert_eq!(decode_text(h32, Some("ISO 2022 IR 13\\ISO 2022 IR 87")), "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう");
        // JIS X 0212 (ESC $ ( D): 0x222F is U+02D8 BREVE.
        assert_eq!(decode_text(b"\x1b$(D\x22\x2f\x1b(B", Some("\\ISO 2022 IR 159")), "˘");
    }

    #[test]
    fn korean_and_chinese_with_code_extensions() {
        // chrI2: KS X 1001 designated to G1 with ESC $ ) C.
        let i2 = b"Hong^Gildong=\x1b$)C\xfb\xf3^\x1b$)C\xd1\xce\xd4\xd7=\x1b$)C\xc8\xab^\x1b$)C\xb1\xe6\xb5\xbf";
        assert_eq!(decode_text(i2, Some("\\ISO 2022 IR 149")), "Hong^Gildong=洪^吉洞=홍^길동");
        let korean_multi = b"\x1b$)C\xb1\xe8\xc8\xf1\xc1\xdf\x1b(B";
        assert_eq!(decode_text(korean_multi, Some("\\ISO 2022 IR 149")), "김희중");
        // With value 1 ISO 2022 IR 149, G1 starts as KS X 1001.
        assert_eq!(decode_text(b"\xc8\xab", Some("ISO 2022 IR 149")), "홍");
        let gb = b"Wang^XiaoDong=\x1b$)A\xcd\xf5^\x1b$)A\xd0\xa1\xb6\xab=";
        assert_eq!(decode_text(gb, Some("\\ISO 2022 IR 58")), "Wang^XiaoDong=王^小东=");
    }

    #[test]
    fn term_spelling_variants() {
        assert_eq!(decode_text(b"\xe9", Some("ISO IR 100")), "é");
        assert_eq!(decode_text(b"\xe9", Some("iso-ir 100")), "é");
        assert_eq!(decode_text(b"\xe9", Some("ISO 2022 IR 100")), "é");
        assert_eq!(decode_text(b"\xc8\xab", Some("ISO_IR 149")), "홍");
        assert_eq!(decode_text(b"\xe7\x8e\x8b", Some("ISO_IR 192")), "王");
    }

    proptest::proptest! {
        #[test]
        fn never_panics(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            term in proptest::sample::select(vec![
                "", "ISO_IR 6", "ISO_IR 100", "ISO_IR 148", "ISO_IR 13", "ISO_IR 192", "GB18030",
                "\\ISO 2022 IR 87", "ISO 2022 IR 13\\ISO 2022 IR 87", "\\ISO 2022 IR 149",
                "\\ISO 2022 IR 58", "\\ISO 2022 IR 159", "unknown",
            ]),
        ) {
            let _ = decode_text(&bytes, Some(term));
        }
    }

    #[test]
    fn latin_sets_switched_with_escapes() {
        let value = b"\x1b-A\xe9\x1b-L\xbb";
        assert_eq!(decode_text(value, Some("ISO 2022 IR 100\\ISO 2022 IR 144")), "éЛ");
    }

    #[test]
    fn broken_input_decodes_lossily() {
        assert_eq!(decode_text(b"\x1b$B;", Some("\\ISO 2022 IR 87")), "\u{FFFD}");
        assert_eq!(decode_text(b"a\x1b", None), "a");
        assert_eq!(decode_text(b"a\x1b$", None), "a");
        assert_eq!(decode_text(b"a\x1b%Zb", None), "ab");
        assert_eq!(decode_text(b"\x1b$)C\xb0A", Some("\\ISO 2022 IR 149")), "\u{FFFD}A");
        assert_eq!(decode_text(b"\xe0", Some("ISO_IR 13")), "\u{FFFD}");
    }
}
