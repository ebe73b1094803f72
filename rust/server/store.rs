//! The C-STORE service provider for one instance (PS3.4 annex B, PS3.7 §9.1.1): stream the
//! data set fragments to a temp file while reading the attributes we need from its leading
//! part, then decide the status and move the file into place before answering.

use std::fs::File;
use std::time::SystemTime;

use bytes::Bytes;

use crate::dicom::attributes::{Attributes, Tag};
use crate::dicom::extract::{ExtractError, Extractor};
use crate::dicom::inflate::InflateLimits;
use crate::dicom::transfer_syntax::TransferSyntax;
use crate::dicom::uid;
use crate::dimse::status::{self, Status};
use crate::storage::file_meta::FileMeta;
use crate::storage::path_template::PathContext;
use crate::storage::writer::{CommitError, Committed, PartialInstance, Storage, TempFile};

/// Who sent the instance: what the file meta and the path template need.
pub struct Sender<'a> {
    pub calling_aet: &'a str,
    pub called_aet: &'a str,
}

/// What a C-STORE-RQ asks to store, and how its data set comes.
pub struct Request {
    pub message_id: u16,
    pub context_id: u8,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub transfer_syntax: &'static TransferSyntax,
}

/// Inflated bytes per hand-off of a deflated data set to the blocking pool: a few ms of CPU.
/// Inflating is the one costly step of a data set's walk (up to ~1000 inflated bytes per byte
/// received): done on the async workers, one peer's deflate bomb would hold a worker, and
/// every association waiting on it, for seconds. In slices on the blocking pool, it holds no
/// worker, and the pool serves the slices of every peer in turn.
const INFLATE_SLICE: usize = 4 << 20;

/// One C-STORE-RQ whose data set is arriving.
pub struct InstanceReception {
    pub request: Request,
    pub received_at: SystemTime,
    partial: Option<PartialInstance>,
    /// Walks the data set; None only while a slice of inflation has it (`walk`), or when
    /// the instance was refused before its data set.
    extractor: Option<Extractor>,
    /// The first failure; once set, later fragments are only counted, never written.
    failure: Option<Status>,
}

/// What became of a completed reception.
pub enum Outcome {
    /// In place; `file` is still open, to be closed once the sender has its answer.
    Stored {
        committed: Committed,
        attributes: Box<Attributes>,
        file: File,
    },
    Failed(Status),
}

impl InstanceReception {
    /// Opens the temp file (with its file meta) for a C-STORE-RQ, in `reserved` when the
    /// association made one ahead. A storage failure is remembered and answered (A700) once
    /// the data set has been received, as is an Affected SOP Instance UID that is not a UID
    /// (0117; an empty one is the handler's to answer). A deflated data set is inflated
    /// within `inflate`.
    pub fn begin(
        storage: &Storage,
        reserved: Option<TempFile>,
        sender: &Sender,
        request: Request,
        inflate: InflateLimits,
    ) -> Self {
        if !request.sop_instance_uid.is_empty() && !uid::is_valid(&request.sop_instance_uid) {
            return Self::refused(request, invalid_sop_instance_uid());
        }
        let meta = FileMeta {
            media_storage_sop_class_uid: &request.sop_class_uid,
            media_storage_sop_instance_uid: &request.sop_instance_uid,
            transfer_syntax_uid: request.transfer_syntax.uid,
            source_ae_title: sender.calling_aet,
        };
        let (partial, failure) = match storage.begin(&meta, reserved) {
            Ok(partial) => (Some(partial), None),
            Err(e) => (None, Some(Status::failure(status::OUT_OF_RESOURCES, format!("cannot create file: {e}")))),
        };
        InstanceReception {
            extractor: Some(Extractor::whole(request.transfer_syntax.encoding, inflate)),
            request,
            received_at: SystemTime::now(),
            partial,
            failure,
        }
    }

    /// A reception refused before its data set: the data set is received and discarded.
    fn refused(request: Request, failure: Status) -> Self {
        InstanceReception {
            extractor: None,
            request,
            received_at: SystemTime::now(),
            partial: None,
            failure: Some(failure),
        }
    }

    /// One data set fragment, in order: walked (see `walk`), then written. Blocking file I/O
    /// for the first part of a data set (see the handler for why); the rest of a large one
    /// waits while its background writer's queue is full.
    pub async fn on_fragment(&mut self, data: Bytes) {
        if self.failure.is_some() {
            return;
        }
        if let Err(e) = self.walk(&data).await {
            self.reject(walk_failure(&e));
            return;
        }
        if let Some(partial) = self.partial.as_mut() {
            if let Err(e) = partial.write(data).await {
                self.reject(Status::failure(status::OUT_OF_RESOURCES, format!("write failed: {e}")));
            }
        }
    }

    /// Walks `data` through the extractor: inline when it is read as it comes (counting
    /// bytes down, cheaper than any hand-off), in slices on the blocking pool when it must be
    /// inflated (see `INFLATE_SLICE`).
    async fn walk(&mut self, data: &Bytes) -> Result<(), ExtractError> {
        let Some(extractor) = self.extractor.as_mut() else {
            return Ok(());
        };
        if !extractor.inflates() {
            return extractor.feed(data).map(drop);
        }
        let mut at = 0;
        while let Some(mut extractor) = self.extractor.take() {
            let rest = data.slice(at..);
            let slice = tokio::task::spawn_blocking(move || {
                let fed = extractor.feed_within(&rest, INFLATE_SLICE);
                (extractor, fed)
            });
            let (extractor, fed) = match slice.await {
                Ok(done) => done,
                Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
                // The runtime is shutting down: the association goes with it.
                Err(_) => return Err(ExtractError::Malformed("receiver stopping".into())),
            };
            self.extractor = Some(extractor);
            let fed = fed?;
            at += fed.consumed;
            if !fed.more {
                break;
            }
        }
        Ok(())
    }

    /// The data set is all in: waits until all of it is written (a failure is A700).
    pub async fn finish_writes(&mut self) {
        if let Some(partial) = self.partial.as_mut() {
            if let Err(e) = partial.finish_writes().await {
                self.reject(Status::failure(status::OUT_OF_RESOURCES, format!("write failed: {e}")));
            }
        }
    }

    /// Refuses the instance: the rest of its data set is still received (the protocol
    /// requires it) but not stored; the temp file goes at once (its Drop removes it).
    pub fn reject(&mut self, failure: Status) {
        self.partial = None;
        self.failure = Some(failure);
    }

    /// The whole data set has arrived: check it and move the file into place, journaled (see
    /// `storage::journal`). Success only when the file is at its final path and its journal
    /// entry written (the caller answers after this returns).
    pub fn complete(self, storage: &Storage, sender: &Sender, required: &[(Tag, &'static str)]) -> Outcome {
        if let Some(failure) = self.failure {
            return Outcome::Failed(failure);
        }
        let Some(extractor) = self.extractor else {
            return Outcome::Failed(Status::failure(status::CANNOT_UNDERSTAND, "data set not walked"));
        };
        let attributes = match extractor.finish() {
            Ok(attributes) => attributes,
            Err(e) => return Outcome::Failed(walk_failure(&e)),
        };
        if let Some(failure) =
            check_attributes(&attributes, &self.request.sop_class_uid, &self.request.sop_instance_uid, required)
        {
            return Outcome::Failed(failure);
        }
        let Some(partial) = self.partial else {
            return Outcome::Failed(Status::failure(status::OUT_OF_RESOURCES, "no file to store"));
        };
        let context =
            PathContext { attributes: &attributes, calling_aet: sender.calling_aet, called_aet: sender.called_aet };
        let relative = storage.template().render(&context);
        match partial.commit(storage, &relative) {
            Ok((committed, file)) => Outcome::Stored { committed, attributes: Box::new(attributes), file },
            Err(CommitError::Duplicate(path)) => Outcome::Failed(Status::failure(
                status::DUPLICATE_SOP_INSTANCE,
                format!("duplicate of {}", path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()),
            )),
            Err(CommitError::Io(e)) => {
                Outcome::Failed(Status::failure(status::OUT_OF_RESOURCES, format!("storing failed: {e}")))
            }
            Err(CommitError::Journal(e)) => {
                Outcome::Failed(Status::failure(status::OUT_OF_RESOURCES, format!("journal write failed: {e}")))
            }
        }
    }
}

/// Why walking a data set failed, as a status: a bound of ours (A701), or a data set that
/// cannot be understood (C000).
fn walk_failure(e: &ExtractError) -> Status {
    match e {
        ExtractError::OverLimit(_) => Status::failure(status::INFLATE_LIMIT, e.to_string()),
        ExtractError::Malformed(_) => Status::failure(status::CANNOT_UNDERSTAND, format!("data set: {e}")),
    }
}

fn invalid_sop_instance_uid() -> Status {
    Status::failure(status::INVALID_SOP_INSTANCE, "SOP Instance UID is not a UID (PS3.5 9.1)")
}

/// The data set must agree with its command (PS3.4 B.2.3: A9xx "data set does not match SOP
/// class"), carry the attributes the configuration requires (Cxxx), and the UIDs that name
/// the instance and its files must be UIDs (PS3.5 §9.1).
fn check_attributes(
    attributes: &Attributes,
    sop_class_uid: &str,
    sop_instance_uid: &str,
    required: &[(Tag, &'static str)],
) -> Option<Status> {
    let missing: Vec<&str> = required.iter().filter(|(_, k)| attributes.get(k).is_none()).map(|(_, k)| *k).collect();
    if !missing.is_empty() {
        return Some(Status::failure(status::MISSING_ATTRIBUTE, format!("missing {}", missing.join(", "))));
    }
    let not_a_uid = |value: &Option<String>| value.as_deref().is_some_and(|value| !uid::is_valid(value));
    if not_a_uid(&attributes.sop_instance_uid) {
        return Some(invalid_sop_instance_uid());
    }
    for (keyword, value) in
        [("StudyInstanceUID", &attributes.study_instance_uid), ("SeriesInstanceUID", &attributes.series_instance_uid)]
    {
        if not_a_uid(value) {
            return Some(Status::failure(status::INVALID_UID, format!("{keyword} is not a UID (PS3.5 9.1)")));
        }
    }
    let differs = |dataset: &Option<String>, command: &str| dataset.as_deref().is_some_and(|d| d != command);
    if differs(&attributes.sop_instance_uid, sop_instance_uid) {
        return Some(Status::failure(status::DATASET_DOES_NOT_MATCH, "SOPInstanceUID differs from the command"));
    }
    if differs(&attributes.sop_class_uid, sop_class_uid) {
        return Some(Status::failure(status::DATASET_DOES_NOT_MATCH, "SOPClassUID differs from the command"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dicom::inflate::InflateError;

    const REQUIRED: &[(Tag, &str)] = &[(0x0020_000D, "StudyInstanceUID"), (0x0010_0020, "PatientID")];

    fn attributes() -> Attributes {
        Attributes {
            sop_class_uid: Some("1.2.840.10008.5.1.4.1.1.2".into()),
            sop_instance_uid: Some("1.2.3".into()),
            study_instance_uid: Some("1.2".into()),
            patient_id: Some("P".into()),
            ..Default::default()
        }
    }

    #[test]
    fn consistent_instance_passes() {
        assert_eq!(check_attributes(&attributes(), "1.2.840.10008.5.1.4.1.1.2", "1.2.3", REQUIRED), None);
    }

    #[test]
    fn missing_required_attributes_are_named() {
        let a = Attributes { patient_id: None, study_instance_uid: None, ..attributes() };
        let st = check_attributes(&a, "1.2.840.10008.5.1.4.1.1.2", "1.2.3", REQUIRED).unwrap();
        assert_eq!(st.code, status::MISSING_ATTRIBUTE);
        assert_eq!(st.comment.as_deref(), Some("missing StudyInstanceUID, PatientID"));
    }

    #[test]
    fn naming_uids_must_be_uids() {
        let sop = Attributes { sop_instance_uid: Some("1.2.3/4".into()), ..attributes() };
        let st = check_attributes(&sop, "1.2.840.10008.5.1.4.1.1.2", "1.2.3", REQUIRED).unwrap();
        assert_eq!(st.code, status::INVALID_SOP_INSTANCE);
        let study = Attributes { study_instance_uid: Some("1.2\\3".into()), ..attributes() };
        let st = check_attributes(&study, "1.2.840.10008.5.1.4.1.1.2", "1.2.3", REQUIRED).unwrap();
        assert_eq!(
            (st.code, st.comment.as_deref()),
            (status::INVALID_UID, Some("StudyInstanceUID is not a UID (PS3.5 9.1)"))
        );
        let series = Attributes { series_instance_uid: Some("1..2".into()), ..attributes() };
        let st = check_attributes(&series, "1.2.840.10008.5.1.4.1.1.2", "1.2.3", REQUIRED).unwrap();
        assert_eq!(st.code, status::INVALID_UID);
        assert!(st.comment.unwrap().starts_with("SeriesInstanceUID"));
        // Absent ones are the required attributes' business, not the UID check's.
        let absent = Attributes { series_instance_uid: None, ..attributes() };
        assert_eq!(check_attributes(&absent, "1.2.840.10008.5.1.4.1.1.2", "1.2.3", REQUIRED), None);
    }

    #[test]
    fn walk_failures_are_c000_or_a701_for_our_bounds() {
        let malformed = walk_failure(&ExtractError::Malformed("dataset ends inside an element value".into()));
        assert_eq!(malformed.code, status::CANNOT_UNDERSTAND);
        assert_eq!(malformed.comment.as_deref(), Some("data set: dataset ends inside an element value"));
        let bound = walk_failure(&ExtractError::OverLimit(InflateError::RatioTooHigh { max_ratio: 200 }));
        assert_eq!(bound.code, status::INFLATE_LIMIT);
        assert_eq!(bound.comment.as_deref(), Some("inflates over 200:1 (OXIDIP_INFLATE_MAX_RATIO)"));
    }

    #[test]
    fn uid_mismatch_is_a900() {
        let st = check_attributes(&attributes(), "1.2.840.10008.5.1.4.1.1.2", "9.9.9", REQUIRED).unwrap();
        assert_eq!(st.code, status::DATASET_DOES_NOT_MATCH);
        let st = check_attributes(&attributes(), "1.2.840.10008.5.1.4.1.1.4", "1.2.3", REQUIRED).unwrap();
        assert_eq!(st.code, status::DATASET_DOES_NOT_MATCH);
    }
}
