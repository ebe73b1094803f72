//! DIMSE status codes (PS3.7 annex C, PS3.4 §B.2.3, §C.4), their classes, and the
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
/// Unrecognized operation (PS3.7 C.4.2): a request we do not perform.
pub const UNRECOGNIZED_OPERATION: u16 = 0x0211;
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

/// Pending: matches or sub-operations are continuing (PS3.4 C.4.1.1.4, C.4.2.1.5).
pub const PENDING: u16 = 0xFF00;
/// Pending, with optional keys the SCP did not support (PS3.4 table C.4-1).
pub const PENDING_WARNING: u16 = 0xFF01;
/// Cancel: ended by a C-CANCEL (PS3.7 C.3).
pub const CANCEL: u16 = 0xFE00;
/// Warning: sub-operations complete, one or more failed or warned (PS3.4 tables C.4-2, C.4-3).
pub const SUB_OPERATIONS_WITH_FAILURES: u16 = 0xB000;
/// Refused: out of resources, unable to perform sub-operations (PS3.4 tables C.4-2, C.4-3).
pub const SUB_OPERATIONS_OUT_OF_RESOURCES: u16 = 0xA702;
/// Error: identifier does not match SOP class (PS3.4 tables C.4-1 to C.4-3).
pub const IDENTIFIER_DOES_NOT_MATCH: u16 = 0xA900;

/// What a status says, whatever the service (PS3.7 annex C): its class decides what follows
/// (more responses while pending, none after the others).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    Success,
    Warning,
    Failure,
    Cancel,
    Pending,
}

impl StatusClass {
    /// The class of a status code (PS3.7 C.1 to C.5): 0000 success; 0001, Bxxx, 0107 and 0116
    /// warnings; FE00 cancel; FF00 and FF01 pending; everything else (Axxx, Cxxx, the other
    /// 01xx and 02xx) failure.
    pub fn of(code: u16) -> StatusClass {
        match code {
            SUCCESS => StatusClass::Success,
            0x0001 | 0x0107 | 0x0116 | 0xB000..=0xBFFF => StatusClass::Warning,
            CANCEL => StatusClass::Cancel,
            PENDING | PENDING_WARNING => StatusClass::Pending,
            _ => StatusClass::Failure,
        }
    }

    /// Success or warning: the operation was performed.
    pub fn performed(self) -> bool {
        matches!(self, StatusClass::Success | StatusClass::Warning)
    }
}

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

    pub fn class(&self) -> StatusClass {
        StatusClass::of(self.code)
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

    #[test]
    fn classes_follow_ps3_7_annex_c() {
        use StatusClass::*;
        let classes: Vec<StatusClass> = [
            0x0000, 0x0001, 0x0107, 0x0116, 0xB000, 0xB007, 0xFE00, 0xFF00, 0xFF01, 0xA700, 0xA900, 0xC000, 0x0122,
            0x0211, 0x0117,
        ]
        .into_iter()
        .map(StatusClass::of)
        .collect();
        assert_eq!(
            classes,
            [
                Success, Warning, Warning, Warning, Warning, Warning, Cancel, Pending, Pending, Failure, Failure,
                Failure, Failure, Failure, Failure
            ]
        );
        assert!(Warning.performed() && Success.performed());
        assert!(!Pending.performed() && !Cancel.performed() && !Failure.performed());
    }
}
