//! Data sets for the load generator, built in memory once per association.
//!
//! A data set is a header (every element before the pixel data value, the pixel data
//! element's own header included) followed by the pixel data, which is a pattern shared by
//! every association and sent from where it is: a 1 GB instance costs no more memory than a
//! 2 KB one. Each instance only rewrites, in place, the fixed-width digits of its SOP
//! Instance UID and its Instance Number.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::dicom::element::{Syntax, ValueTooLong, Writer, PIXEL_DATA};
use crate::dicom::vr::Vr;

/// Secondary Capture Image Storage (PS3.4 annex B.5).
pub const SECONDARY_CAPTURE: &str = "1.2.840.10008.5.1.4.1.1.7";
/// CT Image Storage.
pub const CT_IMAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
/// Multi-frame Grayscale Word Secondary Capture Image Storage.
pub const MULTIFRAME_WORD_SC: &str = "1.2.840.10008.5.1.4.1.1.7.3";

/// Digits after "2.25.": 39, the most a UUID-derived UID has (PS3.5 §B.2); our numbers start
/// with 1 so they stay below 2^128 and carry no leading zero.
const UID_DIGITS: usize = 39;
/// Digits of the per-instance (or per-series) counter at the end of a UID.
const COUNTER_DIGITS: usize = 17;
/// Width of the Instance Number value: IS allows 12 characters, leading spaces included
/// (PS3.5 §6.2).
const INSTANCE_NUMBER_WIDTH: usize = 12;
/// One CT slice or frame: 512 x 512, 16 bits.
const SLICE_SIDE: usize = 512;
const SLICE_BYTES: usize = SLICE_SIDE * SLICE_SIDE * 2;
/// The shared pixel pattern: long enough that a large instance is few segments.
const PATTERN_LEN: usize = 1 << 20;

/// What the generated instances are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Image {
    /// Secondary Capture, 8-bit monochrome, sized to the requested bytes.
    #[default]
    Sc,
    /// CT Image, one 512 x 512 16-bit slice (about 514 KB; the requested size is ignored).
    Ct,
    /// Multi-frame Grayscale Word Secondary Capture: 512 x 512 16-bit frames, as many as
    /// the requested size holds (at least one).
    Multiframe,
}

impl Image {
    pub fn sop_class(self) -> &'static str {
        match self {
            Image::Sc => SECONDARY_CAPTURE,
            Image::Ct => CT_IMAGE,
            Image::Multiframe => MULTIFRAME_WORD_SC,
        }
    }
}

/// The 39 digits of a UID: "1", the run number (20 digits), a kind digit (1 study, 2 series,
/// 3 instance), the counter (17 digits).
fn uid_digits(run: u128, kind: u8, counter: u64) -> [u8; UID_DIGITS] {
    let text = format!("1{:020}{}{:0width$}", run % 10u128.pow(20), kind, counter, width = COUNTER_DIGITS);
    let mut out = [0u8; UID_DIGITS];
    out.copy_from_slice(text.as_bytes());
    out
}

pub fn uid(run: u128, kind: u8, counter: u64) -> String {
    format!("2.25.{}", std::str::from_utf8(&uid_digits(run, kind, counter)).unwrap_or_default())
}

/// The pixel data of every generated instance: a repeating ramp, shared.
fn pattern() -> &'static [u8] {
    static PATTERN: OnceLock<Vec<u8>> = OnceLock::new();
    PATTERN.get_or_init(|| (0..PATTERN_LEN).map(|i| (i % 251) as u8).collect())
}

/// A data set and where its variable parts are.
pub struct Template {
    pub image: Image,
    header: Vec<u8>,
    pixel_len: usize,
    sop_at: usize,
    series_at: usize,
    study_at: usize,
    instance_number_at: usize,
}

/// Bytes the elements after the identifying ones take, besides the pixel data: the image
/// pixel module's US elements (10 bytes each, implicit or explicit); the pixel data header
/// comes on top.
const IMAGE_ELEMENTS_LEN: usize = 6 * 10;

impl Template {
    /// A data set of `image`, about `size` bytes where the image kind takes a size, in
    /// explicit (or implicit) VR little endian. Pixel data lengths stay even and under 4 GiB.
    pub fn new(image: Image, size: usize, explicit: bool) -> Template {
        let syntax = if explicit { Syntax::ExplicitLittle } else { Syntax::ImplicitLittle };
        Self::build(image, size, syntax).expect("the values are a few bytes, the pixel data under 4 GiB")
    }

    fn build(image: Image, size: usize, syntax: Syntax) -> Result<Template, ValueTooLong> {
        let placeholder = uid(0, 0, 0);
        let mut w = Writer::after(Vec::with_capacity(1024), syntax);
        w.text(0x0008_0016, Vr::UI, image.sop_class())?;
        let sop_at = w.text(0x0008_0018, Vr::UI, &placeholder)? + 5;
        w.text(0x0008_0020, Vr::DA, "20260101")?;
        let modality = if image == Image::Ct { "CT" } else { "OT" };
        w.text(0x0008_0060, Vr::CS, modality)?;
        if image != Image::Ct {
            w.text(0x0008_0064, Vr::CS, "WSD")?;
        }
        w.text(0x0008_103E, Vr::LO, "oxidip load")?;
        w.text(0x0010_0010, Vr::PN, "OXIDIP^BENCH")?;
        w.text(0x0010_0020, Vr::LO, "OXIDIP-BENCH")?;
        let study_at = w.text(0x0020_000D, Vr::UI, &placeholder)? + 5;
        let series_at = w.text(0x0020_000E, Vr::UI, &placeholder)? + 5;
        w.text(0x0020_0011, Vr::IS, "1")?;
        let instance_number_at = w.text(0x0020_0013, Vr::IS, &" ".repeat(INSTANCE_NUMBER_WIDTH))?;
        w.u16(0x0028_0002, Vr::US, 1);
        w.text(0x0028_0004, Vr::CS, "MONOCHROME2")?;
        let (rows, columns, bits, frames) = match image {
            Image::Sc => {
                let header_len = w.len() + IMAGE_ELEMENTS_LEN + syntax.header_len(Vr::OB);
                let pixels = size.saturating_sub(header_len).max(2);
                // One row when it fits (the size is then met to the byte, give or take
                // padding); otherwise at least 256 columns, as many as keep Rows in 16 bits.
                let columns = if pixels <= 65534 { pixels } else { pixels.div_ceil(65535).clamp(256, 65534) };
                let columns = (columns & !1).max(2);
                (((pixels / columns).clamp(1, 65535)), columns, 8, 1)
            }
            Image::Ct => (SLICE_SIDE, SLICE_SIDE, 16, 1),
            Image::Multiframe => {
                let frames = (size / SLICE_BYTES).clamp(1, (u32::MAX as usize - 1) / SLICE_BYTES);
                w.text(0x0028_0008, Vr::IS, &frames.to_string())?;
                (SLICE_SIDE, SLICE_SIDE, 16, frames)
            }
        };
        w.u16(0x0028_0010, Vr::US, rows as u16);
        w.u16(0x0028_0011, Vr::US, columns as u16);
        w.u16(0x0028_0100, Vr::US, bits);
        w.u16(0x0028_0101, Vr::US, bits);
        w.u16(0x0028_0102, Vr::US, bits - 1);
        w.u16(0x0028_0103, Vr::US, 0);
        let pixel_len = rows * columns * usize::from(bits / 8) * frames;
        // The pixel data's value is the shared pattern, sent after this header (`segments`).
        w.header(PIXEL_DATA, if bits == 8 { Vr::OB } else { Vr::OW }, pixel_len as u32)?;
        Ok(Template { image, header: w.into_bytes(), pixel_len, sop_at, series_at, study_at, instance_number_at })
    }

    /// Data set length in bytes.
    pub fn dataset_len(&self) -> usize {
        self.header.len() + self.pixel_len
    }

    /// The data set, as segments to send in order: the header, then the shared pattern as
    /// many times as the pixel data needs.
    pub fn segments(&self) -> Vec<&[u8]> {
        let pattern = pattern();
        let mut segments = Vec::with_capacity(2 + self.pixel_len / PATTERN_LEN);
        segments.push(&self.header[..]);
        let mut left = self.pixel_len;
        while left > 0 {
            let n = left.min(PATTERN_LEN);
            segments.push(&pattern[..n]);
            left -= n;
        }
        segments
    }

    fn patch(&mut self, at: usize, digits: &[u8; UID_DIGITS]) {
        self.header[at..at + UID_DIGITS].copy_from_slice(digits);
    }

    pub fn set_study(&mut self, run: u128) {
        self.patch(self.study_at, &uid_digits(run, 1, 0));
    }

    pub fn set_series(&mut self, run: u128, series: u64) {
        self.patch(self.series_at, &uid_digits(run, 2, series));
    }

    /// Sets the SOP Instance UID (from the run and `instance`) and the Instance Number
    /// (`number`, kept to its 12 characters).
    pub fn set_instance(&mut self, run: u128, instance: u64, number: u64) {
        self.patch(self.sop_at, &uid_digits(run, 3, instance));
        let text = format!("{:>width$}", number % 10u64.pow(11), width = INSTANCE_NUMBER_WIDTH);
        self.header[self.instance_number_at..self.instance_number_at + INSTANCE_NUMBER_WIDTH]
            .copy_from_slice(text.as_bytes());
    }

    /// The SOP Instance UID currently in the data set.
    pub fn sop_instance_uid(&self) -> &str {
        // "2.25." plus the digits; always ASCII.
        std::str::from_utf8(&self.header[self.sop_at - 5..self.sop_at + UID_DIGITS]).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(t: &Template) -> Vec<u8> {
        t.segments().concat()
    }

    #[test]
    fn uids_and_instance_numbers_are_patched_in_place() {
        let mut t = Template::new(Image::Sc, 2048, true);
        let len = t.dataset_len();
        assert!((2000..=2048).contains(&len), "{len}");
        t.set_instance(123, 5, 6);
        let first = t.sop_instance_uid().to_owned();
        t.set_instance(123, 6, 7);
        assert_eq!(t.dataset_len(), len);
        assert_eq!(bytes(&t).len(), len);
        assert_ne!(first, t.sop_instance_uid());
        assert!(first.len() <= 64 && first.len().is_multiple_of(2));
        assert_eq!(uid(123, 3, 5), first);
        // Every component after "2.25" starts with a non-zero digit.
        assert!(first.starts_with("2.25.1") && first[5..].bytes().all(|b| b.is_ascii_digit()));
        let number = format!("{:>12}", 7);
        assert!(bytes(&t).windows(12).any(|w| w == number.as_bytes()));
    }

    #[test]
    fn sizes_of_each_image_kind() {
        let big = Template::new(Image::Sc, 1 << 20, false);
        assert!(big.dataset_len() > 1_000_000 && big.dataset_len() <= 1 << 20);
        let ct = Template::new(Image::Ct, 0, true);
        assert_eq!(ct.pixel_len, 512 * 512 * 2);
        let frames = Template::new(Image::Multiframe, 1 << 30, true);
        assert_eq!(frames.pixel_len, 1 << 30);
        assert_eq!(frames.segments().len(), 1 + 1024, "the header, then the shared 1 MiB pattern");
        let one = Template::new(Image::Multiframe, 1, true);
        assert_eq!(one.pixel_len, SLICE_BYTES);
    }
}
