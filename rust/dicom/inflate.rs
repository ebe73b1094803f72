//! Inflating a deflated data set (PS3.5 §A.5: raw deflate, RFC 1951, no zlib header) as it
//! streams in, within bounds, and in slices of bounded work.
//!
//! Deflate reaches about 1000:1 on runs of zeros: a 40 MiB P-DATA-TF can stand for 40 GiB of
//! data set, seconds of CPU. So the inflated size and the inflation ratio are bounded
//! ([`InflateLimits`]), and each call inflates at most a `budget` of output, so that the
//! caller can hand the work out in slices (see `server::store`).

use std::fmt;

use flate2::{Decompress, FlushDecompress, Status};

/// Bytes of inflated output below which the ratio is not checked: small data sets compress
/// far better than large ones (a mostly empty 256 KiB image deflates 60:1 in pydicom's
/// corpus), and a bomb gains at most this much per instance. Past it, the ratio bounds the
/// CPU a peer can make us spend per byte it sends.
const RATIO_GRACE: u64 = 1 << 20;

/// Output buffer: the parser reads each piece of inflated data set from here.
const OUTPUT_SIZE: usize = 16 * 1024;

/// How far a deflated data set may inflate (`OXIDIP_INFLATE_MAX_MIB`,
/// `OXIDIP_INFLATE_MAX_RATIO`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InflateLimits {
    /// Inflated bytes at most.
    pub max_size: u64,
    /// Inflated bytes per deflated byte at most (past `RATIO_GRACE`).
    pub max_ratio: u64,
}

impl InflateLimits {
    /// No bound: for data sets already accepted once (read back from storage).
    pub const NONE: InflateLimits = InflateLimits { max_size: u64::MAX, max_ratio: u64::MAX };
}

/// Why inflating stopped short of the end of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InflateError {
    /// Not a valid deflate stream.
    Corrupt,
    /// The inflated data set would pass `InflateLimits::max_size` (in MiB here).
    TooLarge { max_mib: u64 },
    /// The data set inflates more than `InflateLimits::max_ratio` to 1.
    RatioTooHigh { max_ratio: u64 },
}

impl fmt::Display for InflateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Short enough for an ErrorComment (64 characters), naming the variable to raise.
        match self {
            InflateError::Corrupt => f.write_str("deflated dataset is corrupt"),
            InflateError::TooLarge { max_mib } => write!(f, "inflates past {max_mib} MiB (OXIDIP_INFLATE_MAX_MIB)"),
            InflateError::RatioTooHigh { max_ratio } => {
                write!(f, "inflates over {max_ratio}:1 (OXIDIP_INFLATE_MAX_RATIO)")
            }
        }
    }
}

/// What one call to [`Inflater::inflate`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inflated {
    /// Input bytes used; the caller passes the rest again.
    pub consumed: usize,
    /// The budget ran out with work left: input not used yet, or output the inflater holds
    /// (call again, with the rest of the input, possibly none).
    pub more: bool,
}

pub struct Inflater {
    decompress: Decompress,
    output: Box<[u8]>,
    ended: bool,
    limits: InflateLimits,
}

impl Inflater {
    pub fn new(limits: InflateLimits) -> Self {
        Self {
            decompress: Decompress::new(false),
            output: vec![0; OUTPUT_SIZE].into_boxed_slice(),
            ended: false,
            limits,
        }
    }

    /// The end of the deflate stream has been reached (bytes after it are ignored).
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Inflated bytes so far.
    pub fn total_out(&self) -> u64 {
        self.decompress.total_out()
    }

    /// Inflates `input` into `sink`, until it is used up and nothing is left to output, the
    /// stream ends, about `budget` bytes have been output, or `sink` fails or returns false
    /// (it wants no more).
    pub fn inflate<E: From<InflateError>>(
        &mut self,
        input: &[u8],
        budget: usize,
        mut sink: impl FnMut(&[u8]) -> Result<bool, E>,
    ) -> Result<Inflated, E> {
        let mut consumed = 0;
        let mut produced_here = 0;
        while !self.ended {
            let (in_before, out_before) = (self.decompress.total_in(), self.decompress.total_out());
            let status = self
                .decompress
                .decompress(&input[consumed..], &mut self.output, FlushDecompress::None)
                .map_err(|_| InflateError::Corrupt)?;
            let used = (self.decompress.total_in() - in_before) as usize;
            let produced = (self.decompress.total_out() - out_before) as usize;
            consumed += used;
            produced_here += produced;
            self.ended = status == Status::StreamEnd;
            self.check_limits()?;
            if !sink(&self.output[..produced])? {
                return Ok(Inflated { consumed, more: false });
            }
            // A full output buffer may hide more output: go on until the input is used up
            // and the buffer is not filled.
            let drained = consumed == input.len() && produced < self.output.len();
            if drained || (used == 0 && produced == 0) {
                break;
            }
            if produced_here >= budget {
                return Ok(Inflated { consumed, more: !self.ended });
            }
        }
        Ok(Inflated { consumed, more: false })
    }

    fn check_limits(&self) -> Result<(), InflateError> {
        let (inflated, deflated) = (self.decompress.total_out(), self.decompress.total_in());
        if inflated > self.limits.max_size {
            return Err(InflateError::TooLarge { max_mib: self.limits.max_size >> 20 });
        }
        if inflated > RATIO_GRACE && inflated / deflated.max(1) > self.limits.max_ratio {
            return Err(InflateError::RatioTooHigh { max_ratio: self.limits.max_ratio });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn deflate(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    /// Inflates `input` whole, budget after budget; the output, or the first error.
    fn inflate_all(limits: InflateLimits, input: &[u8], budget: usize) -> Result<Vec<u8>, InflateError> {
        let mut inflater = Inflater::new(limits);
        let mut out = Vec::new();
        let (mut at, mut calls) = (0, 0);
        loop {
            calls += 1;
            assert!(calls < 100_000, "no progress");
            let step = inflater.inflate(&input[at..], budget, |piece| {
                out.extend_from_slice(piece);
                Ok::<bool, InflateError>(true)
            })?;
            at += step.consumed;
            if !step.more {
                break;
            }
        }
        assert!(inflater.ended());
        Ok(out)
    }

    fn noise(len: usize) -> Vec<u8> {
        let mut x = 0x9E37_79B9_u32;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    #[test]
    fn budgets_slice_the_work_and_lose_nothing() {
        let data: Vec<u8> = noise(300_000).into_iter().chain(std::iter::repeat_n(0, 5_000_000)).collect();
        let deflated = deflate(&data);
        for budget in [1, 4096, 100_000, usize::MAX] {
            assert!(inflate_all(InflateLimits::NONE, &deflated, budget).unwrap() == data, "budget {budget}");
        }
    }

    #[test]
    fn a_budget_stops_a_call_early() {
        let deflated = deflate(&vec![0; 10 << 20]);
        let mut inflater = Inflater::new(InflateLimits::NONE);
        let step = inflater.inflate(&deflated, 1 << 20, |_| Ok::<bool, InflateError>(true)).unwrap();
        assert!(step.more);
        let out = inflater.total_out();
        assert!(((1 << 20)..(1 << 20) + 2 * OUTPUT_SIZE as u64).contains(&out), "{out}");
    }

    #[test]
    fn the_size_bound_stops_inflation() {
        let deflated = deflate(&noise(3 << 20));
        let limits = InflateLimits { max_size: 2 << 20, max_ratio: u64::MAX };
        assert_eq!(inflate_all(limits, &deflated, usize::MAX), Err(InflateError::TooLarge { max_mib: 2 }));
        assert!(inflate_all(InflateLimits { max_size: 3 << 20, ..limits }, &deflated, usize::MAX).is_ok());
    }

    #[test]
    fn the_ratio_bound_applies_past_the_grace() {
        let limits = InflateLimits { max_size: u64::MAX, max_ratio: 100 };
        // About 1000:1, but under RATIO_GRACE: fine.
        assert!(inflate_all(limits, &deflate(&vec![0; RATIO_GRACE as usize]), usize::MAX).is_ok());
        let bomb = deflate(&vec![0; 64 << 20]);
        assert_eq!(inflate_all(limits, &bomb, usize::MAX), Err(InflateError::RatioTooHigh { max_ratio: 100 }));
        // Stopped soon after the grace, not at the end of the bomb.
        let mut inflater = Inflater::new(limits);
        let _ = inflater.inflate(&bomb, usize::MAX, |_| Ok::<bool, InflateError>(true));
        assert!(inflater.total_out() < 2 * RATIO_GRACE);
    }

    #[test]
    fn messages_fit_an_error_comment() {
        let limits = [
            InflateError::Corrupt,
            InflateError::TooLarge { max_mib: 1_048_576 },
            InflateError::RatioTooHigh { max_ratio: 1_000_000 },
        ];
        for error in limits {
            assert!(error.to_string().len() <= crate::dimse::status::ERROR_COMMENT_MAX_CHARS, "{error}");
        }
    }

    #[test]
    fn corrupt_input_is_an_error() {
        // Block type 3 is reserved (RFC 1951 §3.2.3).
        assert_eq!(inflate_all(InflateLimits::NONE, &[0xFF; 16], usize::MAX), Err(InflateError::Corrupt));
    }
}
