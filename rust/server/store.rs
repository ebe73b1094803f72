//! The C-STORE service provider for one instance (PS3.4 annex B, PS3.7 §9.1.1): stream the
//! data set fragments to a temp file while reading the attributes we need from its leading
//! part, then decide the status and move the file into place before answering.

use std::fs::File;
use std::time::SystemTime;

use bytes::Bytes;

use crate::dicom::attributes::{Attributes, Tag};
use crate::dicom::extract::Extractor;
use crate::dicom::transfer_syntax::TransferSyntax;
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

/// One C-STORE-RQ whose data set is arriving.
pub struct InstanceReception {
    pub request: Request,
    pub received_at: SystemTime,
    partial: Option<PartialInstance>,
    extractor: Extractor,
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
    /// the data set has been received.
    pub fn begin(storage: &Storage, reserved: Option<TempFile>, sender: &Sender, request: Request) -> Self {
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
            extractor: Extractor::new(request.transfer_syntax.encoding),
            request,
            received_at: SystemTime::now(),
            partial,
            failure,
        }
    }

    /// One data set fragment, in order. Blocking file I/O for the first part of a data set
    /// (see the handler for why); the rest of a large one waits for room in its background
    /// writer's queue.
    pub async fn on_fragment(&mut self, data: Bytes) {
        if self.failure.is_some() {
            return;
        }
        if let Err(e) = self.extractor.feed(&data) {
            self.reject(Status::failure(status::CANNOT_UNDERSTAND, format!("data set: {e}")));
            return;
        }
        if let Some(partial) = self.partial.as_mut() {
            if let Err(e) = partial.write(data).await {
                self.reject(Status::failure(status::OUT_OF_RESOURCES, format!("write failed: {e}")));
            }
        }
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
        let attributes = match self.extractor.finish() {
            Ok(attributes) => attributes,
            Err(e) => return Outcome::Failed(Status::failure(status::CANNOT_UNDERSTAND, format!("data set: {e}"))),
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

/// The data set must agree with its command (PS3.4 B.2.3: A9xx "data set does not match SOP
/// class") and carry the attributes the configuration requires (Cxxx).
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
    fn uid_mismatch_is_a900() {
        let st = check_attributes(&attributes(), "1.2.840.10008.5.1.4.1.1.2", "9.9.9", REQUIRED).unwrap();
        assert_eq!(st.code, status::DATASET_DOES_NOT_MATCH);
        let st = check_attributes(&attributes(), "1.2.840.10008.5.1.4.1.1.4", "1.2.3", REQUIRED).unwrap();
        assert_eq!(st.code, status::DATASET_DOES_NOT_MATCH);
    }
}
