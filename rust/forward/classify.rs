//! What an answer means for an item or a job (PS3.4 C.4.2.1.5 and annex B.2.3 statuses,
//! PS3.8 A-ASSOCIATE-RJ and A-ABORT), and how to say it in words. The split follows what the
//! routers that do this job converge on (`shared/routing-notes.md`): a refusal of one
//! instance fails that instance and the job goes on; what says the destination cannot take
//! anything now (out of resources, gone, busy) ends the job, to be retried later.

use std::io;
use std::time::Duration;

use super::outcome::{DeliveryResult, JobEndKind};
use crate::client::ClientError;
use crate::dicom::{sop_class, transfer_syntax};
use crate::dimse::status::Status;
use crate::ul::pdu::reject::{
    REJECTED_PERMANENT, SOURCE_SERVICE_PROVIDER_ACSE, SOURCE_SERVICE_PROVIDER_PRESENTATION, SOURCE_SERVICE_USER,
};
use crate::ul::pdu::AssociateRj;

/// What a C-STORE response means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreVerdict {
    Item(DeliveryResult),
    /// Refused: out of resources (A7xx): the destination takes nothing more now; the job
    /// stops there, the item unreported, to be sent again on a retry.
    StopJob,
}

/// 0000 delivered; 0001 and Bxxx warnings (stored, coerced or with elements discarded):
/// delivered; A7xx stops the job; every other status (0122, 0124, A9xx, Cxxx, 01xx, 02xx,
/// and a pending or cancel status, which a C-STORE never ends with) fails the item.
pub fn store_status(code: u16) -> StoreVerdict {
    match code {
        0x0000 => StoreVerdict::Item(DeliveryResult::Delivered),
        0x0001 | 0xB000..=0xBFFF => StoreVerdict::Item(DeliveryResult::Warning),
        0xA700..=0xA7FF => StoreVerdict::StopJob,
        _ => StoreVerdict::Item(DeliveryResult::Failed),
    }
}

/// What a C-STORE status means (PS3.4 table B.2-1, PS3.7 annex C), in the standard's words.
pub fn status_meaning(code: u16) -> &'static str {
    match code {
        0x0000 => "Success",
        0x0001 => "Warning: Requested optional Attributes are not supported",
        0xB000..=0xBFFF => match code {
            0xB000 => "Warning: Coercion of Data Elements",
            0xB006 => "Warning: Elements Discarded",
            0xB007 => "Warning: Data Set does not match SOP Class",
            _ => "Warning",
        },
        0x0111 => "Failure: Duplicate SOP Instance",
        0x0117 => "Failure: Invalid SOP Instance",
        0x0122 => "Refused: SOP Class not supported",
        0x0124 => "Refused: Not Authorized",
        0x0210 => "Failure: Duplicate invocation",
        0x0211 => "Failure: Unrecognized operation",
        0x0212 => "Failure: Mistyped argument",
        0x0213 => "Failure: Resource limitation",
        0xA700..=0xA7FF => "Refused: Out of Resources",
        0xA900..=0xA9FF => "Error: Data Set does not match SOP Class",
        0xC000..=0xCFFF => "Error: Cannot understand",
        0xFE00 => "Cancel",
        0xFF00 | 0xFF01 => "Pending",
        _ => "Failure",
    }
}

/// An item's comment: the destination's ErrorComment, or, without one, what a status other
/// than success means.
pub fn item_comment(status: &Status) -> String {
    match &status.comment {
        Some(comment) if !comment.trim().is_empty() => comment.trim().to_string(),
        _ if status.code == 0 => String::new(),
        _ => status_meaning(status.code).to_string(),
    }
}

/// Why a job stopped on an A7xx answer.
pub fn out_of_resources(status: &Status) -> String {
    let mut words = format!("C-STORE answered {:04X} ({})", status.code, status_meaning(status.code));
    if let Some(comment) = status.comment.as_deref().map(str::trim).filter(|c| !c.is_empty()) {
        words.push_str(": ");
        words.push_str(comment);
    }
    words
}

/// Why an item was not sent: the destination accepted no context for its SOP class in its
/// stored transfer syntax (and we never re-encode).
pub fn no_context(sop_class_uid: &str, transfer_syntax_uid: &str) -> String {
    let class = sop_class::name(sop_class_uid).unwrap_or(sop_class_uid);
    let syntax = transfer_syntax::lookup(transfer_syntax_uid).map_or(transfer_syntax_uid, |ts| ts.name);
    format!("destination accepted no presentation context for {class} in {syntax}")
}

/// Why the file of an item could not be sent.
pub fn unreadable(path: &str, error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::NotFound => format!("file missing: {path}"),
        _ => format!("file unreadable: {path}: {error}"),
    }
}

/// The reason of an A-ASSOCIATE-RJ (PS3.8 table 9-21) in words.
pub fn rejection_reason(rj: &AssociateRj) -> &'static str {
    match (rj.source, rj.reason) {
        (SOURCE_SERVICE_USER, 2) => "application context name not supported",
        (SOURCE_SERVICE_USER, 3) => "calling AE title not recognized",
        (SOURCE_SERVICE_USER, 7) => "called AE title not recognized",
        (SOURCE_SERVICE_USER, _) => "no reason given",
        (SOURCE_SERVICE_PROVIDER_ACSE, 2) => "protocol version not supported",
        (SOURCE_SERVICE_PROVIDER_ACSE, _) => "no reason given (ACSE)",
        (SOURCE_SERVICE_PROVIDER_PRESENTATION, 1) => "temporary congestion",
        (SOURCE_SERVICE_PROVIDER_PRESENTATION, 2) => "local limit exceeded",
        _ => "no reason given",
    }
}

/// Where the job was when the association failed: before it was established, or after so
/// many of its items.
#[derive(Debug, Clone, Copy)]
pub enum Stage {
    Connecting,
    Sending { done: usize, total: usize },
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stage::Connecting => Ok(()),
            Stage::Sending { done, total } => write!(f, " after {done} of {total} instances"),
        }
    }
}

/// How a job ends on a failure of its association with `address`, and why in words:
/// A-ASSOCIATE-RJ permanent is permanent, everything else (refused, lost, timed out,
/// aborted, rejected-transient, the peer's protocol error) transient.
pub fn association_failure(
    error: &ClientError,
    address: &str,
    timeout: Duration,
    stage: Stage,
) -> (JobEndKind, String) {
    use JobEndKind::{Permanent, Transient};
    match error {
        ClientError::Rejected(rj) if rj.result == REJECTED_PERMANENT => {
            (Permanent, format!("association rejected (permanent): {}", rejection_reason(rj)))
        }
        ClientError::Rejected(rj) => (Transient, format!("association rejected (transient): {}", rejection_reason(rj))),
        ClientError::Aborted(abort) => (
            Transient,
            format!(
                "association aborted by the peer{stage} (A-ABORT source {}, reason {})",
                abort.source, abort.reason
            ),
        ),
        ClientError::Io(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            (Transient, format!("connection refused by {address}"))
        }
        ClientError::Io(e) if matches!(stage, Stage::Connecting) => {
            (Transient, format!("cannot connect to {address}: {e}"))
        }
        ClientError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            (Transient, format!("connection closed by {address}{stage}"))
        }
        ClientError::Io(e) => (Transient, format!("connection to {address} lost{stage}: {e}")),
        ClientError::Timeout => (
            Transient,
            format!("no answer from {address} within {} s{stage} (association aborted)", timeout.as_secs_f64()),
        ),
        ClientError::Protocol(detail) => {
            (Transient, format!("protocol error of {address}{stage}: {detail} (association aborted)"))
        }
        // A job of more pairs than an association can carry, or a UID we cannot encode.
        ClientError::Proposal(e) => (Permanent, format!("cannot propose the job's presentation contexts: {e}")),
        ClientError::NoContext(what) => (Permanent, format!("no accepted presentation context for {what}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ul::pdu::Abort;

    #[test]
    fn statuses_are_classified_as_ps3_4_says() {
        use DeliveryResult::*;
        let cases = [
            (0x0000, StoreVerdict::Item(Delivered)),
            (0x0001, StoreVerdict::Item(Warning)),
            (0xB000, StoreVerdict::Item(Warning)),
            (0xB007, StoreVerdict::Item(Warning)),
            (0x0122, StoreVerdict::Item(Failed)),
            (0x0124, StoreVerdict::Item(Failed)),
            (0xA900, StoreVerdict::Item(Failed)),
            (0xC000, StoreVerdict::Item(Failed)),
            (0xC123, StoreVerdict::Item(Failed)),
            (0x0111, StoreVerdict::Item(Failed)),
            (0xFF00, StoreVerdict::Item(Failed)),
            (0xA700, StoreVerdict::StopJob),
            (0xA7FF, StoreVerdict::StopJob),
        ];
        for (code, verdict) in cases {
            assert_eq!(store_status(code), verdict, "{code:04X}");
        }
    }

    #[test]
    fn comments_are_the_peers_or_the_meaning_of_the_status() {
        assert_eq!(item_comment(&Status { code: 0, comment: None }), "");
        assert_eq!(item_comment(&Status { code: 0x0122, comment: None }), "Refused: SOP Class not supported");
        assert_eq!(item_comment(&Status { code: 0xC000, comment: Some("bad pixel data ".into()) }), "bad pixel data");
        let full = Status { code: 0xA700, comment: Some("disk full".into()) };
        assert_eq!(out_of_resources(&full), "C-STORE answered A700 (Refused: Out of Resources): disk full");
        assert_eq!(
            out_of_resources(&Status { code: 0xA701, comment: None }),
            "C-STORE answered A701 (Refused: Out of Resources)"
        );
        assert_eq!(
            no_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.4.50"),
            "destination accepted no presentation context for CT Image Storage in JPEG Baseline (Process 1)"
        );
        let missing = io::Error::from(io::ErrorKind::NotFound);
        assert_eq!(unreadable("/x.dcm", &missing), "file missing: /x.dcm");
    }

    #[test]
    fn association_failures_say_what_and_whether_to_retry() {
        let t = Duration::from_secs(30);
        let sending = Stage::Sending { done: 12, total: 40 };
        let rj = |result, source, reason| ClientError::Rejected(AssociateRj { result, source, reason });
        let cases = [
            (
                rj(1, 1, 7),
                Stage::Connecting,
                JobEndKind::Permanent,
                "association rejected (permanent): called AE title not recognized",
            ),
            (
                rj(2, 3, 1),
                Stage::Connecting,
                JobEndKind::Transient,
                "association rejected (transient): temporary congestion",
            ),
            (
                ClientError::Io(io::ErrorKind::ConnectionRefused.into()),
                Stage::Connecting,
                JobEndKind::Transient,
                "connection refused by 127.0.0.1:11112",
            ),
            (
                ClientError::Aborted(Abort { source: 0, reason: 0 }),
                sending,
                JobEndKind::Transient,
                "association aborted by the peer after 12 of 40 instances (A-ABORT source 0, reason 0)",
            ),
            (
                ClientError::Timeout,
                sending,
                JobEndKind::Transient,
                "no answer from 127.0.0.1:11112 within 30 s after 12 of 40 instances (association aborted)",
            ),
            (
                ClientError::Io(io::ErrorKind::UnexpectedEof.into()),
                sending,
                JobEndKind::Transient,
                "connection closed by 127.0.0.1:11112 after 12 of 40 instances",
            ),
        ];
        for (error, stage, kind, words) in cases {
            assert_eq!(association_failure(&error, "127.0.0.1:11112", t, stage), (kind, words.to_string()));
        }
    }
}
