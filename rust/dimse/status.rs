//! DIMSE status codes of the services oxidip provides (PS3.7 annex C, PS3.4 §B.2.3), and the
//! ErrorComment that goes with a failure.

/// Success (PS3.7 C.1.1).
pub const SUCCESS: u16 = 0x0000;
/// Duplicate SOP Instance (PS3.7 C.4.x): used under the "reject" duplicates policy.
pub const DUPLICATE_SOP_INSTANCE: u16 = 0x0111;
/// Invalid SOP Instance (PS3.7 §9.1.1.1.9 and annex C): "the SOP Instance UID specified implied a
/// violation of the UID construction rules" (PS3.5 §9.1).
pub const INVALID_SOP_INSTANCE: u16 = 0x0117;
/// Refused: SOP Class not supported (PS3.7 C.5.x).
pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
/// Refused: out of resources (PS3.4 table B.2-1, A7xx): storage failed.
pub const OUT_OF_RESOURCES: u16 = 0xA700;
/// Refused: out of resources (A7xx), a bound of ours rather than the disk: the deflated data set
/// would inflate past `OXIDIP_INFLATE_MAX_MIB` or `OXIDIP_INFLATE_MAX_RATIO`. A distinct code
/// tells it from a storage failure.
pub const INFLATE_LIMIT: u16 = 0xA701;
/// Error: data set does not match SOP Class (PS3.4 table B.2-1, A9xx): here, its SOP Class or
/// Instance UID differs from the command's.
pub const DATASET_DOES_NOT_MATCH: u16 = 0xA900;
/// Error: cannot understand (PS3.4 table B.2-1, Cxxx): the data set cannot be parsed.
pub const CANNOT_UNDERSTAND: u16 = 0xC000;
/// Error: cannot understand, a required attribute is missing or empty. Cxxx codes are the
/// implementation's to assign (PS3.4 B.2.3); a distinct code tells senders which it was.
pub const MISSING_ATTRIBUTE: u16 = 0xC001;
/// Error: cannot understand, the command itself lacks what C-STORE needs.
pub const INVALID_COMMAND: u16 = 0xC002;
/// Error: cannot understand, the data set's Study or Series Instance UID is not a UID (PS3.5
/// §9.1). (The SOP Instance UID's own status is 0117, which PS3.7 defines for it alone.)
pub const INVALID_UID: u16 = 0xC003;

/// ErrorComment (0000,0902) is LO: at most 64 characters (PS3.5 table 6.2-1).
pub const ERROR_COMMENT_MAX_CHARS: usize = 64;

/// A response status with its optional comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub code: u16,
    pub comment: Option<String>,
}

impl Status {
    pub fn success() -> Self {
        Status { code: SUCCESS, comment: None }
    }

    /// A failure whose comment is cut to what ErrorComment can hold.
    pub fn failure(code: u16, comment: impl Into<String>) -> Self {
        let comment: String = comment.into();
        let comment = match comment.char_indices().nth(ERROR_COMMENT_MAX_CHARS) {
            Some((cut, _)) => comment[..cut].to_string(),
            None => comment,
        };
        Status { code, comment: Some(comment) }
    }

    pub fn is_success(&self) -> bool {
        self.code == SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_comment_fits_an_lo_value() {
        let long = "é".repeat(100);
        let status = Status::failure(CANNOT_UNDERSTAND, long);
        assert_eq!(status.comment.unwrap().chars().count(), ERROR_COMMENT_MAX_CHARS);
        assert!(Status::success().is_success());
        assert!(!Status::failure(OUT_OF_RESOURCES, "disk full").is_success());
    }
}
